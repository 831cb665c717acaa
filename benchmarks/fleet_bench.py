"""The fleet section of ``bench_campaigns.py``: N simulated devices through a 3-stage campaign
with a 64 KiB image (embedded gateway + fleet in this process, eager Celery, the reconcile
called in a loop as beat would), then the same devices downloading the same envelope and image
from the same gateway with no campaign at all.

The campaign keeps at most 500 devices in flight (``max_in_flight`` of every stage: one loop
serves the gateway and all the devices, and thousands of downloads at once only time out), and
the plain download runs at most DISPATCH_BATCH (500) devices at once: the same concurrency.
It fetches only (no signature check, no install, no reboot): the ratio therefore prices the
whole campaign path - commands, Object 5 writes and observations, device checks, reboots,
event intake, reconcile - against moving the bytes.

The fleet is mixed: next to the N SUIT devices of thermo-v2, one in IMAGE_SHARE devices of the
image-profile class (``_campaign_world.IMAGE_CLASS``, raw MCUboot images checked with a bootloader
key) registers on the same gateway. The campaign engine delivers SUIT envelopes only, so they are
skipped by the campaign (another class) and left out of the plain download; they cost
registrations and keep-alive traffic, as they would in a real mixed fleet.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

REGISTER_WAVE = 20
IMAGE_SHARE = 10  # one image-profile device per ten SUIT devices

SPEC = """
apiVersion: fwupd/v1
kind: Campaign
name: bench-fleet
release: thermo-1.1.0
target:
  device_class: acme.example/thermo-v2
stages:
  - name: canary
    size: 10%
    max_in_flight: 500
  - name: wave
    size: 40%
    max_in_flight: 500
  - name: all
    size: rest
    max_in_flight: 500
timeouts:
  device: 10m
retries:
  max: 2
  backoff: 5s
  on: [connection_lost, dispatch_failed, timed_out]
"""


def run(args: Any, cw: Any, log: Any) -> dict[str, Any]:
    from campaigns import engine, services
    from campaigns.models import Campaign, CampaignStatus, Device, Rollout, RolloutState
    from campaigns.spec import parse_spec
    from workers.embedded import EmbeddedFleet
    from workers.lwm2m.object5 import DeliveryMethod
    from workers.lwm2m.simulator import FleetSpec

    n = args.fleet
    n_image = max(1, n // IMAGE_SHARE)
    world = cw.make_world(image_payload=args.image_kib * 1024)
    embedded = EmbeddedFleet(trust_anchors=[world.author_key.public_key()], fw_poll_seconds=5.0)
    embedded.add(
        FleetSpec(
            count=n,
            manufacturer="Acme Sensors",
            model="thermo-v2",
            vendor_id=str(world.vendor.uuid),
            class_id=str(world.thermo.uuid),
            sequence_number=1,
            security_counter=1,
            lifetime=3600,
        )
    )
    embedded.add(
        FleetSpec(
            count=n_image,
            manufacturer="Acme Sensors",
            model=cw.IMAGE_CLASS,
            prefix="zephyr",
            vendor_id=str(world.vendor.uuid),
            class_id=str(world.thermo_v3.uuid),
            security_counter=1,
            lifetime=3600,
            delivery="image",
            bootloader_key=_bootloader_key(),
            delivery_method=DeliveryMethod.BOTH,
        )
    )
    start = time.perf_counter()
    _start(embedded, timeout=max(120, (n + n_image) / 5))
    deadline = time.monotonic() + max(120, (n + n_image) / 5)
    while Device.objects.filter(online=True, firmware_version="1.0.0").count() < n + n_image:
        if time.monotonic() > deadline:
            raise SystemExit("the fleet did not register in time")
        time.sleep(0.5)
    log(
        f"{n} SUIT + {n_image} image-profile devices registered in "
        f"{time.perf_counter() - start:.1f}s"
    )
    notes = []
    try:
        spec = parse_spec(SPEC, source="bench-fleet.yaml")
        start = time.perf_counter()
        campaign, _ = services.campaign_apply(spec=spec, actor=world.ops, source="bench")
        limit = time.monotonic() + args.fleet_timeout
        status = campaign.status
        while status == CampaignStatus.RUNNING and time.monotonic() < limit:
            report = engine.campaign_reconcile(campaign.pk)
            if report is None or not report.dispatched:
                time.sleep(0.2)
            status = Campaign.objects.get(pk=campaign.pk).status
        campaign_s = time.perf_counter() - start
        succeeded = Rollout.objects.filter(campaign=campaign, state=RolloutState.SUCCEEDED).count()
        if status != CampaignStatus.COMPLETED:
            notes.append(f"campaign {status} after {campaign_s:.0f}s (not completed)")
        log(f"campaign {status} in {campaign_s:.1f}s, {succeeded} succeeded")

        gateway = embedded.thread.gateway if embedded.thread else None
        assert gateway is not None and embedded.fleet is not None
        manifest = world.release.manifest
        uris = [
            gateway.package_uri(manifest.manifest_digest),
            f"{gateway.config.base_uri}/fw/i/{manifest.image.sha256}",
        ]
        envelope_bytes = len(bytes(manifest.envelope))

        async def plain() -> int:
            semaphore = asyncio.Semaphore(engine.DISPATCH_BATCH)

            async def one(device: Any) -> int:
                async with semaphore:
                    return sum([len(await device.fetch(uri)) for uri in uris])

            suit_devices = [
                d for d in embedded.fleet.devices.values() if d.state.delivery == "suit"
            ]
            sizes = await asyncio.gather(*(one(d) for d in suit_devices))
            return sum(sizes)

        start = time.perf_counter()
        moved = embedded.thread.call(plain(), timeout=args.fleet_timeout)
        download_s = time.perf_counter() - start
        log(f"plain download of {moved:,} B in {download_s:.1f}s")
    finally:
        embedded.stop()
    return {
        "devices": n,
        "image_devices": n_image,
        "image_bytes": world.image_size,
        "envelope_bytes": envelope_bytes,
        "campaign_s": campaign_s,
        "download_s": download_s,
        "succeeded": succeeded,
        "notes": notes,
    }


def _bootloader_key() -> str:
    """Public PEM of a throwaway imgtool key: the image-profile devices' bootloader key."""
    import tempfile
    from pathlib import Path

    from manifests.images import imgtool

    with tempfile.TemporaryDirectory(prefix="bench-mcuboot-") as tmp:
        return imgtool.public_key_pem(imgtool.keygen(Path(tmp) / "boot.pem")).decode()


def _start(embedded: Any, *, timeout: float) -> None:
    """``EmbeddedFleet.start`` with timeouts that scale with the fleet (its defaults are sized
    for the demo's hundred devices), then the collector tuned for a large, long-lived heap."""
    # Registrations in waves: each one costs the gateway seven reads and two events.
    embedded.start(register_timeout=timeout, register_concurrency=REGISTER_WAVE, request_timeout=30)
    # Thousands of long-lived device objects make every full collection walk them all: move
    # what exists now out of the collector's sight and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
