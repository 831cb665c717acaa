"""Fixtures for the LwM2M tests: a signing key, signed envelopes, an in-memory firmware source,
and a helper that runs a gateway plus a simulated fleet on loopback in one event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from manifests import suit
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.gateway import Gateway, GatewayConfig
from workers.lwm2m.simulator import Faults, Fleet, FleetSpec

VENDOR_DOMAIN = "acme.example"
CLASS_NAME = "thermo-v2"
VENDOR_ID = suit.vendor_id(VENDOR_DOMAIN)
CLASS_ID = suit.class_id(VENDOR_ID, CLASS_NAME)


class ListSink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


@dataclass
class DictFirmware:
    envelopes: dict[str, bytes] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    policies: dict[str, bytes] = field(default_factory=dict)

    def envelope(self, manifest_digest: str) -> bytes | None:
        return self.envelopes.get(manifest_digest)

    def trust_policy(self, sha256: str) -> bytes | None:
        return self.policies.get(sha256)

    def image(self, sha256: str) -> bytes | None:
        return self.images.get(sha256)


@dataclass
class Release:
    envelope: bytes
    digest: str
    payload: bytes


def make_release(
    key: Any,
    *,
    payload: bytes = b"\x7fELF-firmware" * 300,
    sequence_number: int = 2,
    security_counter: int = 2,
    version: str = "1.1.0",
    class_id: uuid.UUID = CLASS_ID,
    use_before: dt.datetime | None = None,
    profile: str = "extended",
) -> Release:
    params = suit.ManifestParams(
        vendor_id=VENDOR_ID,
        class_id=class_id,
        sequence_number=sequence_number,
        version=version,
        security_counter=security_counter,
        image_digest=hashlib.sha256(payload).digest(),
        image_size=len(payload),
        uri=None,
        use_before=use_before,
        component_id=(b"\x00",),
        payload_format="mcuboot",
        profile=profile,
    )
    envelope = suit.create_envelope(params, keys=[key])
    decoded = suit.decode_envelope(envelope)
    return Release(envelope=envelope, digest=decoded.manifest_digest.hex(), payload=payload)


@pytest.fixture(scope="session")
def signing_key() -> Any:
    return suit.generate_private_key("ES256")


def fleet_spec(count: int, **kwargs: Any) -> FleetSpec:
    return FleetSpec(
        count=count,
        manufacturer="Acme Sensors",
        model=CLASS_NAME,
        vendor_id=str(VENDOR_ID),
        class_id=str(CLASS_ID),
        sequence_number=1,
        security_counter=1,
        component_id=["00"],
        **kwargs,
    )


@dataclass
class Harness:
    gateway: Gateway
    fleet: Fleet
    sink: ListSink
    firmware: DictFirmware


def run_with_fleet(
    scenario: Callable[[Harness], Awaitable[None]],
    *,
    count: int = 2,
    anchors: list[Any],
    firmware: DictFirmware | None = None,
    faults: dict[str, Faults] | None = None,
    timeout: float = 30,
    spec_kwargs: dict[str, Any] | None = None,
) -> None:
    """Gateway + fleet on loopback, the scenario, then a clean shutdown (all in one loop)."""

    async def main() -> None:
        sink = ListSink()
        fw = firmware or DictFirmware()
        gateway = Gateway(
            GatewayConfig(
                gateway_id=f"gw-{uuid.uuid4().hex[:6]}",
                port=0,
                fw_poll_seconds=0.3,
                request_timeout=5,
                fw_update_timeout=20,
                admission="open",  # simulated devices the registry does not know
            ),
            bus=InMemoryCommandBus(),
            sink=sink,
            firmware=fw,
        )
        await gateway.start()
        fleet = Fleet(server_uri=gateway.config.base_uri, trust_anchors=anchors)
        fleet.load_or_create(fleet_spec(count, **(spec_kwargs or {})))
        for endpoint, device_faults in (faults or {}).items():
            fleet.devices[endpoint].state.faults = device_faults
        try:
            await fleet.start()
            await fleet.wait_registered(10)
            await asyncio.wait_for(scenario(Harness(gateway, fleet, sink, fw)), timeout)
        finally:
            await fleet.stop(deregister=False)
            await gateway.stop()

    asyncio.run(main())


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Poll a (database) condition from outside the gateway's loop."""
    from django.db import OperationalError

    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OperationalError:
            pass  # SQLite's shared in-memory test database locks whole tables briefly
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)
