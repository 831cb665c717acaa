"""Devices without a clock, devices whose clock is off, and device information read again when it
is stale: through the reconcile pass, the plan, the status, the registry services and the CLI.

A clockless device (it reports 1970 + uptime, or no Current Time at all) cannot judge a
manifest's expiry: it is dispatched under the server's use-before check and its rollout says so.
A device whose clock is off (Wakaama's +43 years) is held with ``clock_skew`` until its clock is
good or an operator accepts it. A vendor or class created after a device registered maps it at
once, and a device held for its clock is asked to read its information again periodically.
"""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import clock, device_services, engine, planning, selectors
from campaigns.models import Device, DeviceCommand, Rollout, RolloutState
from campaigns.spec import parse_spec
from manifests import services as release_services
from manifests.errors import ManifestError
from tests.campaigns.support import (
    Catalog,
    apply,
    build_catalog,
    make_devices,
    make_release,
    spec_text,
)
from tests.helpers.deployment import DEVICE_REPORT_KEY_PEM

pytestmark = pytest.mark.django_db

AHEAD_43_YEARS = 43 * 365 * 86400.0


def _clock(now: dt.datetime, kind: str) -> dict[str, Any]:
    """Registry fields of a device whose /3/0/13 read at ``now`` gave this kind of clock."""
    server = now.timestamp()
    reported = {
        "zero": 0.0,
        "uptime": 2 * 86400.0 + 41.0,  # a device counting from 1970 since it booted
        "wakaama": server + AHEAD_43_YEARS,
        "good": server + 1.0,
    }.get(kind)
    if reported is None:  # no Current Time was ever read
        return {"device_time": None, "clock_offset_seconds": None}
    return {"device_time": reported, "clock_offset_seconds": reported - server}


@pytest.mark.parametrize("kind", ["zero", "uptime", "none"])
def test_a_clockless_device_is_dispatched_and_its_rollout_records_it(
    catalog: Catalog, kind: str
) -> None:
    now = timezone.now()
    make_devices(catalog, 2, prefix="good", **_clock(now, "good"))
    make_devices(catalog, 1, prefix="clockless", **_clock(now, kind))
    text = spec_text(f"clockless-{kind}")
    plan = planning.campaign_plan(spec=parse_spec(text), now=now)
    state = clock.UNKNOWN if kind == "none" else clock.CLOCKLESS
    assert plan.as_dict()["server_time_only"] == {state: 1}
    assert plan.cohort == 3
    campaign = apply(catalog, text, now=now)
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 3 and report.skipped == {}
    records = dict(
        Rollout.objects.filter(campaign=campaign).values_list("device__endpoint", "device_clock")
    )
    assert records == {"good-00000": "ok", "good-00001": "ok", "clockless-00000": state}
    assert selectors.campaign_status(campaign)["server_time_only"] == {state: 1}
    out = StringIO()
    call_command("campaign", "status", campaign.name, stdout=out)
    assert f"without a device clock: {state} 1" in out.getvalue()


def test_an_expired_release_is_still_refused_for_a_clockless_device(catalog: Catalog) -> None:
    now = timezone.now()
    make_release(
        catalog,
        name="thermo-1.2.0",
        version="1.2.0",
        sequence=6,
        counter=2,
        use_before=now + dt.timedelta(hours=1),
    )
    make_devices(catalog, 1, prefix="clockless", **_clock(now, "zero"))
    campaign = apply(catalog, spec_text("expiring", release="thermo-1.2.0"), now=now)
    later = now + dt.timedelta(hours=2)
    report = engine.campaign_reconcile(campaign.pk, now=later)
    assert report is not None and report.dispatched == 0
    rollout = Rollout.objects.get(campaign=campaign)
    assert (rollout.state, rollout.reason) == (RolloutState.SKIPPED, "expired_release")
    assert not DeviceCommand.objects.filter(operation="fw_update").exists()


def test_an_off_clock_stays_pending_and_is_dispatched_after_the_operators_override(
    catalog: Catalog,
) -> None:
    now = timezone.now()
    make_devices(catalog, 1, prefix="wakaama", **_clock(now, "wakaama"))
    campaign = apply(catalog, spec_text("off-clock"), now=now)
    assert campaign.stages.get().planned_devices == 0  # held, counted among the exclusions
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.skipped == {"clock_skew": 1}
    rollout = Rollout.objects.get(campaign=campaign)
    assert (rollout.state, rollout.reason) == (RolloutState.PENDING, "clock_skew")
    assert "43 years" in rollout.detail and "clock-trust" in rollout.detail

    # Only an operator may accept it; the author may not.
    with pytest.raises(CommandError):
        call_command("device", "clock-trust", "wakaama-00000", "--user", "author")
    out = StringIO()
    call_command("device", "clock-trust", "wakaama-00000", "--user", "ops", stdout=out)
    assert "43 years" in out.getvalue() and "accepted" in out.getvalue()
    event = AuditEvent.objects.get(action="device.clock_trust")
    assert (event.actor, event.object_id) == ("ops", "wakaama-00000")
    assert event.details["clock_offset_seconds"] == pytest.approx(AHEAD_43_YEARS)

    report = engine.campaign_reconcile(campaign.pk, now=now + engine.DEFER_RECHECK)
    assert report is not None and report.dispatched == 1
    rollout.refresh_from_db()
    assert (rollout.state, rollout.reason, rollout.device_clock) == (
        RolloutState.QUEUED,
        "",
        clock.OFF,
    )
    assert selectors.campaign_status(campaign)["server_time_only"] == {clock.OFF: 1}


def test_withdrawing_the_override_holds_an_off_clock_again(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 1, prefix="wakaama", **_clock(now, "wakaama"))
    device_services.device_clock_trust(endpoint="wakaama-00000", actor=catalog.ops, now=now)
    device_services.device_clock_trust(
        endpoint="wakaama-00000", actor=catalog.ops, trusted=False, now=now
    )
    campaign = apply(catalog, spec_text("withdrawn"), now=now)
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.skipped == {"clock_skew": 1}
    assert AuditEvent.objects.filter(action="device.clock_untrust").count() == 1


def test_the_override_needs_a_known_device_and_an_operator(catalog: Catalog) -> None:
    with pytest.raises(device_services.UnknownDeviceError):
        device_services.device_clock_trust(endpoint="nobody", actor=catalog.ops)
    make_devices(catalog, 1)
    with pytest.raises(ManifestError):
        device_services.device_clock_trust(endpoint="dev-00000", actor=catalog.users["author"])
    assert Device.objects.get(endpoint="dev-00000").clock_trusted_at is None


def test_a_class_created_after_a_device_registered_maps_it_at_once_and_a_campaign_enrols_it(
    db: None, django_user_model: Any
) -> None:
    """Wakaama's case: the device registers (and reports its manufacturer and model) before
    anyone created its vendor and class; it registers only once."""
    now = timezone.now()
    device_services.device_register(
        endpoint="early-1", gateway_id="gw-1", registration_id="r1", lifetime=300, at=now
    )
    device_services.device_info_record(
        endpoint="early-1",
        manufacturer="Acme Sensors",
        model="thermo-v2",
        firmware_version="1.0.0",
        device_time=now.timestamp(),
        at=now,
    )
    assert Device.objects.get(endpoint="early-1").device_class is None
    # Provisioned like every SUIT device: the key it signs its update reports with.
    Device.objects.filter(endpoint="early-1").update(report_key=DEVICE_REPORT_KEY_PEM)
    catalog = build_catalog(django_user_model)  # creates the vendor and its classes
    device = Device.objects.select_related("vendor", "device_class").get(endpoint="early-1")
    assert (device.vendor, device.device_class) == (catalog.vendor, catalog.thermo)
    # Provisioned with its SUIT report key, as a device of a SUIT class must be.
    device_services.device_report_key_set(
        endpoint="early-1", key_pem=DEVICE_REPORT_KEY_PEM, actor="factory"
    )
    campaign = apply(catalog, spec_text("early"))
    report = engine.campaign_reconcile(campaign.pk)
    assert report is not None and report.dispatched == 1


def test_a_device_read_late_leaves_its_class_mismatch_and_joins_the_campaign(
    catalog: Catalog,
) -> None:
    """Its first information read failed (no model), so the campaign skipped it as another
    class; the read it was asked for maps it, and the campaign takes it in."""
    now = timezone.now()
    make_devices(catalog, 1, prefix="known")
    make_devices(catalog, 1, prefix="late", device_class=None, vendor=None, model="")
    Device.objects.filter(endpoint="late-00000").update(device_class=None)
    campaign = apply(catalog, spec_text("late-read"), now=now)
    late = Rollout.objects.get(campaign=campaign, device__endpoint="late-00000")
    assert (late.state, late.reason) == (RolloutState.SKIPPED, "class_mismatch")
    device_services.device_info_record(
        endpoint="late-00000", manufacturer="Acme Sensors", model="thermo-v2", at=now
    )
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 2
    late = Rollout.objects.get(campaign=campaign, device__endpoint="late-00000")
    assert late.state == RolloutState.QUEUED


def test_creating_a_class_asks_unmapped_devices_without_information_to_read_it_again(
    catalog: Catalog,
) -> None:
    make_devices(catalog, 2, prefix="blank", device_class=None, vendor=None, model="")
    make_devices(catalog, 1, prefix="offline", device_class=None, model="", online=False)
    make_devices(catalog, 1, prefix="mapped", model="thermo-v2")
    Device.objects.filter(model="").update(device_class=None)
    release_services.device_class_create(
        vendor=catalog.vendor, name="thermo-v3", actor=catalog.admin
    )
    asked = DeviceCommand.objects.filter(operation=device_services.READ_INFO)
    assert sorted(asked.values_list("device__endpoint", flat=True)) == [
        "blank-00000",
        "blank-00001",
    ]
    assert all(command.args == {} for command in asked)


def test_the_periodic_reread_asks_only_devices_held_for_their_clock_in_constant_queries(
    catalog: Catalog, django_assert_max_num_queries: Any
) -> None:
    now = timezone.now()
    make_devices(catalog, 3, prefix="off", info_read_at=now, **_clock(now, "wakaama"))
    make_devices(catalog, 2, prefix="good", info_read_at=now, **_clock(now, "good"))
    make_devices(catalog, 1, prefix="off-offline", online=False, **_clock(now, "wakaama"))
    campaign = apply(catalog, spec_text("reread"), now=now)
    Device.objects.filter(endpoint="off-offline-00000").update(online=True)
    engine.campaign_reconcile(campaign.pk, now=now)  # the offline one is held too, then leaves
    Device.objects.filter(endpoint="off-offline-00000").update(online=False)
    older = dt.timedelta(minutes=15)
    # Read just now: nothing is due yet.
    assert device_services.devices_clock_reread(now=now, older_than=older) == 0
    later = now + older + dt.timedelta(seconds=1)
    # One read, one insert (and the savepoint around them).
    with time_machine.travel(later, tick=False), django_assert_max_num_queries(4):
        asked = device_services.devices_clock_reread(older_than=older)
    assert asked == 3
    commands = DeviceCommand.objects.filter(operation=device_services.READ_INFO)
    assert sorted(commands.values_list("device__endpoint", flat=True)) == [
        "off-00000",
        "off-00001",
        "off-00002",
    ]
    # Asked once per period, not at every beat.
    with time_machine.travel(later + dt.timedelta(minutes=1), tick=False):
        assert device_services.devices_clock_reread(older_than=older) == 0
    # Twice the devices, the same number of queries.
    make_devices(catalog, 3, prefix="more-off", info_read_at=now, **_clock(now, "wakaama"))
    engine.campaign_reconcile(campaign.pk, now=now + engine.DEFER_RECHECK)
    with time_machine.travel(later + 2 * older, tick=False), django_assert_max_num_queries(4):
        asked = device_services.devices_clock_reread(older_than=older)
    assert asked == 6


def test_a_reread_that_finds_the_clock_fixed_lets_the_device_go(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 1, prefix="wakaama", model="thermo-v2", **_clock(now, "wakaama"))
    campaign = apply(catalog, spec_text("fixed"), now=now)
    engine.campaign_reconcile(campaign.pk, now=now)
    later = now + engine.DEFER_RECHECK
    device_services.device_info_record(
        endpoint="wakaama-00000", device_time=later.timestamp() + 2.0, at=later
    )
    device = Device.objects.get(endpoint="wakaama-00000")
    assert device.info_read_at == later and device.clock_offset_seconds == pytest.approx(2.0)
    report = engine.campaign_reconcile(campaign.pk, now=later)
    assert report is not None and report.dispatched == 1
    assert Rollout.objects.get(campaign=campaign).device_clock == clock.OK
