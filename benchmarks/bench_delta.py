"""Delta updates against full images (delta issue): bytes on the wire and end-to-end time for a
fleet of N simulated devices updated through the gateway, with the full image and then with a
detools delta, in the same run, for each delivery profile: ``image`` (MCUboot devices) and
``suit`` (SUIT devices: the signed envelope names the precursor, the delta comes beside it).

Plain script: ``python benchmarks/bench_delta.py [--devices N] [--functions F] [--compression
heatshrink|lzma] [--profiles image,suit]``. Images are realistic, not random: two gcc builds of
the same program (``_firmware_builds.py``: F functions, release 2 changes a constant and adds
one statement), each signed into an MCUboot image by upstream imgtool. One process: an
in-process gateway (``workers.lwm2m.gateway``, no database: firmware from memory, events to a
list) and N simulated devices (``workers.lwm2m.simulator``), each running release 1.

Each side updates the whole fleet at once (one ``fw_update`` per device, pulled): "full" sends
the release-2 image, "delta" the delta from release 1's image (computed once for the pair,
timed separately). End to end is from the first command to the last device having booted
release 2 (download, the check of the result: MCUboot's hash and signature for ``image``, the
signed digest for ``suit``; reboot, registration).
Bytes on the wire are the Block2 payload bytes the devices received (CoAP headers excluded).
The full image is the reference; the figures are side by side.

Goals, per profile: delta bytes on the wire <= 0.25x of full; delta end-to-end time <= 1.0x of
full. A device that did not boot release 2 is an ERROR (exit status 2); a MISS fails only with
BENCH_STRICT=1. (A SUIT device's bytes include its envelope, the same on both sides.)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from _firmware_builds import FUNCTIONS, build_program  # noqa: E402
from _report import Report, ratio_line  # noqa: E402

from manifests import suit  # noqa: E402
from manifests.images import delta as deltas  # noqa: E402
from manifests.images import imgtool  # noqa: E402
from workers.lwm2m.bus import InMemoryCommandBus  # noqa: E402
from workers.lwm2m.gateway import Gateway, GatewayConfig  # noqa: E402
from workers.lwm2m.simulator import Fleet, FleetSpec  # noqa: E402

WIRE_RATIO_MAX = 0.25
TIME_RATIO_MAX = 1.0
VENDOR_ID = suit.vendor_id("acme.example")
CLASS_ID = suit.class_id(VENDOR_ID, "thermo-v2")


class _Files:
    """The gateway's firmware source: files by SHA-256, from memory."""

    def __init__(self, files: list[bytes]) -> None:
        self.files = {hashlib.sha256(f).hexdigest(): f for f in files}

        self.envelopes: dict[str, bytes] = {}

    def envelope(self, manifest_digest: str) -> bytes | None:
        return self.envelopes.get(manifest_digest)

    def image(self, sha256: str) -> bytes | None:
        return self.files.get(sha256)


class _Sink:
    def emit(self, event: dict[str, Any]) -> None:
        pass


async def _update_fleet(
    *,
    devices: int,
    files: _Files,
    old: bytes,
    new: bytes,
    delta: bytes | None,
    profile: str,
    key_pem: str,
    anchors: list[Any],
    manifest_digest: str,
) -> dict[str, Any]:
    """One side: a fresh gateway and fleet on release 1, every device updated at once."""
    gateway = Gateway(
        GatewayConfig(
            gateway_id=f"bench-{uuid.uuid4().hex[:6]}",
            port=0,
            fw_poll_seconds=0.3,
            request_timeout=30,
            fw_update_timeout=600,
            admission="open",
        ),
        bus=InMemoryCommandBus(),
        sink=_Sink(),
        firmware=files,
    )
    await gateway.start()
    fleet = Fleet(server_uri=gateway.config.base_uri, trust_anchors=anchors)
    fleet.load_or_create(
        FleetSpec(
            count=devices,
            manufacturer="Acme Sensors",
            model="thermo-v2",
            vendor_id=str(VENDOR_ID),
            class_id=str(CLASS_ID),
            sequence_number=1,
            security_counter=1,
            lifetime=3600,
            delivery=profile,
            bootloader_key=key_pem if profile == "image" else "",
        )
    )
    for device in fleet.devices.values():
        device.installed_image = old
    new_sha = hashlib.sha256(new).hexdigest()
    args: dict[str, Any] = {
        "manifest_digest": manifest_digest,
        "delivery": profile,
        "image_sha256": new_sha,
    }
    if delta is not None:
        args["delta_sha256"] = hashlib.sha256(delta).hexdigest()
    failed = 0
    try:
        await fleet.start(concurrency=devices)
        await fleet.wait_registered(timeout=600)

        async def one(endpoint: str) -> None:
            nonlocal failed
            try:
                await gateway.run_operation(endpoint, "fw_update", dict(args))
            except Exception as exc:
                failed += 1
                print(f"  {endpoint}: {type(exc).__name__}: {exc}", flush=True)

        began = time.perf_counter()
        await asyncio.gather(*(one(ep) for ep in fleet.devices))
        seconds = time.perf_counter() - began
        booted = sum(d.installed_image == new for d in fleet.devices.values())
        wire = sum(d.bytes_fetched for d in fleet.devices.values())
    finally:
        await fleet.stop(deregister=False)
        await gateway.stop()
    return {"seconds": seconds, "wire": wire, "failed": failed, "booted": booted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--functions", type=int, default=FUNCTIONS * 2)
    parser.add_argument("--compression", choices=deltas.COMPRESSIONS, default="heatshrink")
    parser.add_argument("--profiles", default="image,suit", help="comma-separated: image, suit")
    args = parser.parse_args()
    profiles = [p for p in args.profiles.split(",") if p]
    if not profiles or any(p not in ("image", "suit") for p in profiles):
        parser.error("--profiles takes image and/or suit")
    # The in-process gateway's NoSec warning is about production admission, not this run.
    logging.getLogger("workers.lwm2m").setLevel(logging.ERROR)
    # aiocoap's message manager can fire a retransmission callback on a client context already
    # shut down between sides and logs it through asyncio: noise of the simulator's teardown,
    # not a measurement error (the devices' outcomes are counted and checked).
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    report = Report()
    report.machine()
    with tempfile.TemporaryDirectory(prefix="bench-delta-") as tmp:
        work = Path(tmp)
        programs = [build_program(work, release=r, functions=args.functions) for r in (1, 2)]
        key = imgtool.keygen(work / "boot.pem")
        key_pem = imgtool.public_key_pem(key).decode()
        ids = {"vendor_id": str(VENDOR_ID), "class_id": str(CLASS_ID)}
        old, new = (
            imgtool.build_image(p, version=v, security_counter=2, key_path=key, **ids)
            for p, v in zip(programs, ("1.0.0", "1.1.0"), strict=True)
        )
    began = time.perf_counter()
    delta = deltas.create_delta(old, new, compression=args.compression)
    compute_s = time.perf_counter() - began
    changed = sum(a != b for a, b in zip(old, new, strict=False)) + abs(len(old) - len(new))
    print(
        f"images: two gcc builds of one program ({args.functions} functions) as MCUboot images: "
        f"{len(old):,} and {len(new):,} bytes, {changed:,} bytes differ in place",
        flush=True,
    )
    print(
        f"delta ({args.compression}, sequential): {len(delta):,} bytes "
        f"({len(delta) / len(new):.3f}x of the image), computed once in {compute_s * 1000:.1f} ms",
        flush=True,
    )
    files = _Files([new, delta])
    author = suit.generate_private_key("ES256")
    envelope = suit.create_envelope(
        suit.ManifestParams(
            vendor_id=VENDOR_ID,
            class_id=CLASS_ID,
            sequence_number=2,
            version="1.1.0",
            security_counter=2,
            image_digest=hashlib.sha256(new).digest(),
            image_size=len(new),
            uri=None,
            component_id=(b"\x00",),  # the simulated devices' component ["00"]
            payload_format="mcuboot",
            precursor_digests=(hashlib.sha256(old).digest(),),
        ),
        keys=[author],
    )
    suit_digest = suit.decode_envelope(envelope).manifest_digest.hex()
    files.envelopes[suit_digest] = envelope
    for profile in profiles:
        sides: dict[str, dict[str, Any]] = {}
        for name, payload in (("full", None), ("delta", delta)):
            sides[name] = result = asyncio.run(
                _update_fleet(
                    devices=args.devices,
                    files=files,
                    old=old,
                    new=new,
                    delta=payload,
                    profile=profile,
                    key_pem=key_pem,
                    anchors=[author.public_key()] if profile == "suit" else [],
                    manifest_digest=(
                        suit_digest if profile == "suit" else hashlib.sha256(new).hexdigest()
                    ),
                )
            )
            print(
                f"  {profile:5} {name:5} {args.devices} devices: {result['seconds']:.2f} s end "
                f"to end, {result['wire']:,} payload bytes received, {result['booted']} booted "
                f"1.1.0, {result['failed']} failed",
                flush=True,
            )
            if result["failed"] or result["booted"] != args.devices:
                report.error(
                    f"{profile} {name}: {args.devices - result['booted']} device(s) not on 1.1.0"
                )
        full, dlt = sides["full"], sides["delta"]
        print(
            ratio_line(
                f"{profile} bytes on the wire",
                [("full", float(full["wire"])), ("delta", float(dlt["wire"]))],
                "B",
                reference="full",
            ),
            flush=True,
        )
        print(
            ratio_line(
                f"{profile} end-to-end time",
                [("full", full["seconds"]), ("delta", dlt["seconds"])],
                "s",
                reference="full",
            ),
            flush=True,
        )
        report.goal(
            f"{profile}: delta / full bytes on the wire",
            dlt["wire"] / full["wire"] if full["wire"] else float("inf"),
            at_most=WIRE_RATIO_MAX,
            detail=f"{args.devices} devices",
        )
        report.goal(
            f"{profile}: delta / full end-to-end time",
            dlt["seconds"] / full["seconds"] if full["seconds"] else float("inf"),
            at_most=TIME_RATIO_MAX,
            detail=f"{args.devices} devices",
        )
    return report.exit_status()


if __name__ == "__main__":
    sys.exit(main())
