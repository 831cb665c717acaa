"""Eligibility (``campaigns.eligibility``): the dispatch checker answers, for every device, exactly
what ``checks.check_dispatch`` answers for that device alone, although it computes one answer per
group of devices that agree on what the checks read (a wrong group key would let one device's
answer stand for another's)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from campaigns import checks, services
from campaigns.eligibility import (
    DispatchChecker,
    PlanDevice,
    active_stops,
    device_facts,
    manifest_facts,
)
from campaigns.models import Device
from campaigns.spec import parse_spec
from manifests.services import release_dispatch_state
from tests.campaigns.support import Catalog, make_devices, spec_text

pytestmark = pytest.mark.django_db

SKEW = dt.timedelta(hours=1)


def _plan_device(device: Device) -> PlanDevice:
    return PlanDevice(
        device.pk, device.endpoint, device.device_class_id, None, device.firmware_version,
        device.sequence_number, device.security_counter, device.clock_offset_seconds, True,
        None, None, device.device_time, device.clock_trusted_at,
    )  # fmt: skip


def test_the_dispatch_checker_agrees_with_the_check_of_each_device_alone(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 3, prefix="fresh")
    make_devices(catalog, 2, prefix="current", firmware_version="1.1.0", sequence_number=5)
    make_devices(catalog, 2, prefix="newer-seq", sequence_number=9)
    make_devices(catalog, 2, prefix="counter", security_counter=7)
    make_devices(catalog, 2, prefix="downgrade", firmware_version="2.0.0", sequence_number=2)
    make_devices(catalog, 2, prefix="skewed", clock_offset_seconds=2 * SKEW.total_seconds())
    make_devices(catalog, 1, prefix="skew-edge", clock_offset_seconds=-SKEW.total_seconds())
    make_devices(catalog, 2, prefix="other-class", device_class=catalog.thermo_v1)
    make_devices(catalog, 2, prefix="unmapped", device_class=None)
    Device.objects.filter(endpoint__startswith="unmapped").update(device_class=None)
    # Clocks: none (counting from 1970), never read, 43 years ahead, accepted although off.
    server = now.timestamp()
    make_devices(catalog, 1, prefix="clockless-zero", device_time=0.0, clock_offset_seconds=-server)
    uptime = 3 * 86400.0
    make_devices(
        catalog,
        1,
        prefix="clockless-uptime",
        device_time=uptime,
        clock_offset_seconds=uptime - server,
    )
    make_devices(catalog, 1, prefix="unread", device_time=None, clock_offset_seconds=None)
    ahead = 43 * 365 * 86400.0
    make_devices(
        catalog, 2, prefix="wakaama", device_time=server + ahead, clock_offset_seconds=ahead
    )
    make_devices(
        catalog,
        1,
        prefix="trusted",
        device_time=server + ahead,
        clock_offset_seconds=ahead,
        clock_trusted_at=now,
    )
    release = catalog.release
    state = release_dispatch_state(release, now=now)
    manifest, version = manifest_facts(release)
    checker = DispatchChecker(
        manifest,
        version,
        device_class=catalog.thermo,
        release=state,
        now=now,
        max_clock_skew=SKEW,
    )
    answers: dict[str, str] = {}
    for device in Device.objects.select_related("device_class__vendor").order_by("endpoint"):
        alone = checks.check_dispatch(
            manifest,
            version,
            device=device_facts(device, catalog.thermo),
            release=state,
            now=now,
            max_clock_skew=SKEW,
        )
        grouped = checker.check(_plan_device(device))
        assert grouped == alone, device.endpoint
        answers[device.endpoint] = alone.reason if alone else "eligible"
    # The fleet above covers every branch the groups must keep apart.
    assert set(answers.values()) == {
        "eligible",
        checks.ALREADY_CURRENT,
        checks.ROLLBACK_SEQUENCE,
        checks.ROLLBACK_COUNTER,
        checks.VERSION_DOWNGRADE,
        checks.CLOCK_SKEW,
        checks.CLASS_MISMATCH,
        checks.UNMAPPED_DEVICE,
    }
    # A refusal that names the device names the right one, not its group's first member.
    skewed = [e for e, r in answers.items() if r == checks.CLOCK_SKEW]
    assert skewed == ["skewed-00000", "skewed-00001", "wakaama-00000", "wakaama-00001"]
    # No clock is no reason to hold a device back; an accepted wrong clock neither.
    for endpoint in ("clockless-zero-00000", "clockless-uptime-00000", "unread-00000"):
        assert answers[endpoint] == "eligible", endpoint
    assert answers["trusted-00000"] == "eligible"


def test_a_stop_of_another_class_does_not_block_this_campaign(catalog: Catalog) -> None:
    make_devices(catalog, 1)
    campaign, _ = services.campaign_apply(spec=parse_spec(spec_text("stops")), actor=catalog.ops)
    services.emergency_stop(actor=catalog.ops, reason="bad batch", device_class=catalog.thermo_v1)
    assert active_stops(campaign) == []
    stop = services.emergency_stop(actor=catalog.ops, reason="halt", device_class=catalog.thermo)
    assert active_stops(campaign) == [stop]
