"""The load simulator (workers.lwm2m.loadsim) against the real gateway: devices on loopback
addresses of their own register, answer the device-information reads, and go through a
3-stage campaign (SUIT envelope and payload by Block2, digest checked, reboot, new version)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from campaigns import services
from campaigns.device_services import device_report_keys_register
from campaigns.models import Campaign, CampaignStatus, Device, Rollout, RolloutState
from campaigns.spec import parse_spec
from manifests.suit import keys
from tests.campaigns.support import Catalog, build_catalog, spec_text, wait_for
from workers.lwm2m import loadsim
from workers.lwm2m.bus import bus_for_url
from workers.lwm2m.gateway import (
    CeleryEventSink,
    DjangoFirmwareSource,
    Gateway,
    GatewayConfig,
    GatewayThread,
)
from workers.tasks import campaign_reconcile_task

DEVICES = 12


class LoopThread:
    """An asyncio loop of its own in a daemon thread (the load fleet's, as in its process)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def catalog(db: None, django_user_model: Any) -> Catalog:
    return build_catalog(django_user_model)


@pytest.fixture
def gateway(transactional_db: None, eager_celery: None) -> Iterator[Gateway]:
    gw = Gateway(
        GatewayConfig(
            gateway_id="gw-loadsim",
            port=0,
            fw_poll_seconds=0.3,
            request_timeout=5,
            admission="open",
        ),
        bus=bus_for_url("memory://"),
        sink=CeleryEventSink(),
        firmware=DjangoFirmwareSource(),
    )
    thread = GatewayThread(gw).start()
    yield gw
    thread.stop()


# Each load device's report key derives from this (loadsim.report_key); provisioning registers
# the public keys, so the campaign's successes come with verified SUIT reports.
REPORT_SEED = "5eed" * 16


def _spec(catalog: Catalog, server: str, count: int, **kwargs: Any) -> loadsim.LoadFleetSpec:
    return loadsim.LoadFleetSpec(
        server=server,
        count=count,
        vendor_id=str(catalog.vendor.uuid),
        class_id=str(catalog.thermo.uuid),
        trust_anchors_pem=[keys.public_key_pem(catalog.author_public_key).decode()],
        report_seed=REPORT_SEED,
        **kwargs,
    )


def test_device_addresses_are_distinct_loopback_addresses_outside_127_0() -> None:
    addresses = {loadsim.device_address(i) for i in range(0, 200_000, 97)}
    assert len(addresses) == len(range(0, 200_000, 97))
    assert all(a.startswith("127.") and not a.startswith("127.0.") for a in addresses)
    with pytest.raises(ValueError, match="outside the loopback plan"):
        loadsim.device_address(239 * 65536)


def test_spec_with_another_scheme_or_a_bad_class_is_refused() -> None:
    common: dict[str, Any] = {"count": 1, "vendor_id": str(loadsim.uuid.uuid4())}
    with pytest.raises(ValueError, match="coap://"):
        loadsim.LoadFleetSpec(
            server="coaps://127.0.0.1:5684", class_id=common["vendor_id"], trust_anchors_pem=[],
            **common,
        )  # fmt: skip
    with pytest.raises(ValueError):
        loadsim.LoadFleetSpec(
            server="coap://127.0.0.1:5683", class_id="not-a-uuid", trust_anchors_pem=[], **common
        )


def test_load_fleet_completes_a_three_stage_campaign_against_the_real_gateway(
    catalog: Catalog, gateway: Gateway
) -> None:
    spec = _spec(catalog, gateway.config.base_uri, DEVICES, lifetime=60)
    device_report_keys_register(keys=loadsim.report_public_keys(spec), actor="provisioning")
    fleet = loadsim.LoadFleet(spec)
    runner = LoopThread()
    try:
        runner.call(fleet.start())
        runner.call(fleet.wait_registered(30), timeout=40)
        wait_for(
            lambda: Device.objects.filter(online=True, firmware_version="1.0.0").count() == DEVICES,
            what="registry shows the load fleet with its version",
        )
        # Distinct peers: every device is known to the gateway by its own address.
        hosts = {reg.remote.hostinfo.rsplit(":", 1)[0] for reg in gateway.by_id.values()}
        assert len(hosts) == DEVICES
        stages = (
            "  - name: canary\n    size: 25%\n"
            "  - name: wave\n    size: 50%\n"
            "  - name: all\n    size: rest\n"
        )
        text = spec_text("loadsim", stages=stages, extra="timeouts:\n  device: 2m\n")
        campaign, _ = services.campaign_apply(spec=parse_spec(text), actor=catalog.ops)

        def completed() -> bool:
            return Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.COMPLETED

        wait_for(
            completed,
            timeout=120,
            tick=lambda: campaign_reconcile_task.delay(campaign.pk),
            interval=0.3,
            what="campaign completed",
        )
        rollouts = Rollout.objects.filter(campaign=campaign)
        assert rollouts.filter(state=RolloutState.SUCCEEDED).count() == DEVICES
        # Each success stands on the device's signed SUIT report, verified by the server.
        assert set(rollouts.values_list("report_verdict", flat=True)) == {"verified"}
        assert all(r.attempts == 1 for r in rollouts)
        assert Device.objects.filter(firmware_version="1.1.0").count() == DEVICES
        assert all(d.version == "1.1.0" and d.boots == 1 for d in fleet.devices)
        assert fleet.stats.downloads_done == DEVICES
        assert fleet.stats.downloads_failed == 0
    finally:
        runner.call(fleet.stop())
        runner.stop()


def test_update_is_confirmed_at_the_reboot_registration_not_at_the_next_poll(
    signing_key: Any,
) -> None:
    """A device forgets its observations when it reboots (the load simulator's do): with
    polling slower than the whole update, notifications carry it to Execute and the device's new
    registration wakes the driver, so no poll interval is waited out."""
    import hashlib
    import time

    from tests.workers.lwm2m.conftest import (
        CLASS_ID,
        VENDOR_ID,
        DictFirmware,
        ListSink,
        make_release,
    )
    from workers.lwm2m.bus import InMemoryCommandBus

    release = make_release(signing_key)
    firmware = DictFirmware(
        envelopes={release.digest: release.envelope},
        images={hashlib.sha256(release.payload).hexdigest(): release.payload},
    )

    async def main() -> None:
        gateway = Gateway(
            GatewayConfig(
                gateway_id="gw-reboot", port=0, fw_poll_seconds=60, request_timeout=5,
                admission="open",
            ),
            bus=InMemoryCommandBus(), sink=ListSink(), firmware=firmware,
        )  # fmt: skip
        await gateway.start()
        fleet = loadsim.LoadFleet(
            loadsim.LoadFleetSpec(
                server=gateway.config.base_uri,
                count=1,
                vendor_id=str(VENDOR_ID),
                class_id=str(CLASS_ID),
                trust_anchors_pem=[keys.public_key_pem(signing_key.public_key()).decode()],
            )
        )
        try:
            await fleet.start()
            await fleet.wait_registered(10)
            device = fleet.devices[0]
            started = time.monotonic()
            result = await gateway.run_operation(
                device.endpoint, "fw_update", {"manifest_digest": release.digest}
            )
            assert result["phase"] == "succeeded"
            assert time.monotonic() - started < 20
            assert (device.version, device.boots) == ("1.1.0", 1)
        finally:
            await fleet.stop()
            await gateway.stop()

    asyncio.run(asyncio.wait_for(main(), 50))
