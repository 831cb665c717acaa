"""The reconcile pass on its own (``campaigns.engine``): registry rows with no gateway behind them,
device reports fed through the rollouts' event intake, and time passed as ``now=``.

Covers dispatch refusals that pass (clock skew) and never starve the devices behind them,
idempotent reconcile, constant SQL per pass, late joiners, gates, device timeouts and unreachable
devices. The pass that loses a lock conflict is in ``test_reconcile_conflicts.py``.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns import engine, selectors, services
from campaigns.errors import GateError
from campaigns.models import (
    Campaign,
    CampaignStage,
    CampaignStatus,
    Device,
    DeviceCommand,
    Rollout,
    RolloutState,
    StageStatus,
)
from campaigns.selectors import campaign_status
from tests.campaigns.support import (
    Catalog,
    apply,
    confirm,
    make_devices,
    spec_text,
    states,
)

pytestmark = pytest.mark.django_db


def test_clock_skew_at_dispatch_keeps_the_device_pending_with_its_reason(
    catalog: Catalog,
) -> None:
    now = timezone.now()
    make_devices(catalog, 4)
    campaign = apply(catalog, spec_text("skew"), now=now)
    Device.objects.filter(endpoint="dev-00002").update(clock_offset_seconds=-7200.0)
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 3
    assert report.skipped == {"clock_skew": 1}
    skewed = Rollout.objects.get(campaign=campaign, device__endpoint="dev-00002")
    assert (skewed.state, skewed.reason) == (RolloutState.PENDING, "clock_skew")
    assert "clock" in skewed.detail
    assert not DeviceCommand.objects.filter(device=skewed.device).exists()
    Device.objects.filter(endpoint="dev-00002").update(clock_offset_seconds=1.0)
    # Looked at again once the recheck delay has passed (not on every pass).
    report = engine.campaign_reconcile(campaign.pk, now=now + dt.timedelta(seconds=5))
    assert report is not None and report.dispatched == 0
    report = engine.campaign_reconcile(campaign.pk, now=now + engine.DEFER_RECHECK)
    assert report is not None and report.dispatched == 1
    skewed.refresh_from_db()
    assert (skewed.state, skewed.reason) == (RolloutState.QUEUED, "")


def test_devices_held_back_do_not_starve_the_devices_behind_them(catalog: Catalog) -> None:
    """More skewed devices at the front of the order than the candidate window holds: each
    pass still reaches the devices behind them, and the skewed ones are looked at again
    only after the recheck delay."""
    now = timezone.now()
    make_devices(catalog, 12)
    text = spec_text("starve", stages="  - name: all\n    size: 100%\n    max_in_flight: 2\n")
    campaign = apply(catalog, text, now=now)
    order = list(
        Rollout.objects.filter(campaign=campaign)
        .order_by("stage", "bucket")
        .values_list("device__endpoint", flat=True)
    )
    front = order[:6]  # three times the window of a pass with room for 2 (room * 2 = 4)
    Device.objects.filter(endpoint__in=front).update(clock_offset_seconds=7200.0)
    dispatched = 0
    for second in range(0, 6):
        report = engine.campaign_reconcile(campaign.pk, now=now + dt.timedelta(seconds=second))
        assert report is not None
        dispatched += report.dispatched
    assert dispatched == 2  # the room: devices behind the skewed ones went
    queued = set(
        Rollout.objects.filter(campaign=campaign, state=RolloutState.QUEUED).values_list(
            "device__endpoint", flat=True
        )
    )
    assert queued and not queued & set(front)


def test_a_clock_that_stays_off_cannot_stall_the_stage(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 3)
    Device.objects.filter(endpoint="dev-00001").update(clock_offset_seconds=7200.0)
    text = spec_text("stall", extra="timeouts:\n  unreachable_after: 1h\n")
    campaign = apply(catalog, text, now=now)
    engine.campaign_reconcile(campaign.pk, now=now)
    skewed = Rollout.objects.get(campaign=campaign, device__endpoint="dev-00001")
    assert skewed.state == RolloutState.PENDING
    engine.campaign_reconcile(campaign.pk, now=now + dt.timedelta(hours=1))
    skewed.refresh_from_db()
    assert (skewed.state, skewed.reason) == (RolloutState.SKIPPED, "clock_skew")


def test_reconcile_twice_dispatches_nothing_twice(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 12)
    campaign = apply(catalog, spec_text("twice"), now=now)
    first = engine.campaign_reconcile(campaign.pk, now=now)
    assert first is not None and first.dispatched == 12
    commands = DeviceCommand.objects.filter(operation="fw_update")
    assert commands.count() == 12
    snapshot = states(campaign)
    for i in range(2):
        again = engine.campaign_reconcile(campaign.pk, now=now + dt.timedelta(seconds=1 + i))
        assert again is not None and again.dispatched == 0
    assert commands.count() == 12
    assert states(campaign) == snapshot
    assert sorted(commands.values_list("device__endpoint", flat=True)) == sorted(snapshot)


def _queries_for_first_pass(catalog: Catalog, name: str, endpoints: list[str]) -> int:
    include = "".join(f"    - {e}\n" for e in endpoints)
    campaign = apply(catalog, spec_text(name, target_extra=f"  include:\n{include}"))
    with CaptureQueriesContext(connection) as queries:
        report = engine.campaign_reconcile(campaign.pk)
    assert report is not None and report.dispatched == len(endpoints)
    assert Rollout.objects.filter(campaign=campaign, state=RolloutState.QUEUED).exclude(
        command_id=None
    ).count() == len(endpoints)
    return len(queries)


def test_sql_queries_per_reconcile_pass_do_not_grow_with_devices_dispatched(
    catalog: Catalog,
) -> None:
    warm = [d.endpoint for d in make_devices(catalog, 3, prefix="warm")]
    small = [d.endpoint for d in make_devices(catalog, 10, prefix="small")]
    large = [d.endpoint for d in make_devices(catalog, 100, prefix="large")]
    _queries_for_first_pass(catalog, "warm-up", warm)
    ten = _queries_for_first_pass(catalog, "ten", small)
    hundred = _queries_for_first_pass(catalog, "hundred", large)
    # Batched statements may split (SQLite's bound-parameter limit), never one per device.
    assert abs(hundred - ten) <= 4, (ten, hundred)


def test_device_registering_after_start_joins_the_current_stage_never_a_finished_one(
    catalog: Catalog,
) -> None:
    now = timezone.now()
    make_devices(catalog, 10)
    stages = "  - name: canary\n    size: 50%\n  - name: rest\n    size: rest\n"
    campaign = apply(catalog, spec_text("late", stages=stages), now=now)
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 5
    for rollout in Rollout.objects.filter(campaign=campaign, state=RolloutState.QUEUED):
        confirm(rollout, now=now)
    report = engine.campaign_reconcile(campaign.pk, now=now + dt.timedelta(seconds=10))
    assert report is not None and report.stage == 1
    canary = CampaignStage.objects.get(campaign=campaign, index=0)
    assert canary.status == StageStatus.COMPLETED
    canary_rows = set(Rollout.objects.filter(campaign=campaign, stage=0).values_list("pk", "state"))

    late = make_devices(catalog, 24, prefix="late")
    make_devices(catalog, 2, prefix="late-v1", device_class=catalog.thermo_v1)
    report = engine.campaign_reconcile(campaign.pk, now=now + dt.timedelta(seconds=20))
    assert report is not None
    joined = Rollout.objects.filter(campaign=campaign, device__endpoint__startswith="late-0")
    assert joined.count() == len(late)
    assert set(joined.values_list("stage", flat=True)) == {1}
    assert set(joined.values_list("state", flat=True)) == {RolloutState.QUEUED}
    # Their buckets would have put some in the (finished) canary: they went to the current one.
    assert joined.filter(bucket__lt=canary.bucket_upper).exists()
    assert set(Rollout.objects.filter(campaign=campaign, stage=0).values_list("pk", "state")) == (
        canary_rows
    )
    # A late device of another class does not match the selector: never dispatched.
    assert (
        not Rollout.objects.filter(campaign=campaign, device__endpoint__startswith="late-v1")
        .exclude(state=RolloutState.SKIPPED)
        .exists()
    )


GATED = """\
  - name: canary
    size: 100%
    gate: security
    success_threshold: 60%
"""


def test_gate_waits_for_security_and_timeouts_and_unreachable_do_not_stall(
    catalog: Catalog,
) -> None:
    t0 = timezone.now()
    make_devices(catalog, 8)
    make_devices(catalog, 2, prefix="asleep", online=False, last_seen=t0 - dt.timedelta(hours=2))
    text = spec_text(
        "gated",
        stages=GATED,
        extra="timeouts:\n  device: 5m\n  unreachable_after: 1h\nretries:\n  max: 0\n",
    )
    campaign = apply(catalog, text, now=t0)
    report = engine.campaign_reconcile(campaign.pk, now=t0)
    assert report is not None and report.dispatched == 8
    silent = Rollout.objects.get(campaign=campaign, device__endpoint="dev-00007")
    for rollout in Rollout.objects.filter(campaign=campaign, state=RolloutState.QUEUED).exclude(
        pk=silent.pk
    ):
        confirm(rollout, now=t0 + dt.timedelta(minutes=1))

    # Before the deadline the silent device is still in flight; the stage waits.
    engine.campaign_reconcile(campaign.pk, now=t0 + dt.timedelta(minutes=4))
    silent.refresh_from_db()
    assert silent.state == RolloutState.QUEUED
    # Past timeouts.device (+ the gateway margin): timed out, counted as a failure, cancelled.
    engine.campaign_reconcile(campaign.pk, now=t0 + dt.timedelta(minutes=6))
    silent.refresh_from_db()
    assert (silent.state, silent.reason) == (RolloutState.TIMED_OUT, "timed_out")
    assert DeviceCommand.objects.filter(device=silent.device, operation="fw_cancel").count() == 1
    assert selectors.stage_tally(campaign, 0).failures == 1
    stage = CampaignStage.objects.get(campaign=campaign, index=0)
    assert stage.status == StageStatus.RUNNING  # the offline pair still pending

    # Offline past unreachable_after: reported apart, and the stage no longer waits for them.
    engine.campaign_reconcile(campaign.pk, now=t0 + dt.timedelta(minutes=61))
    tally = campaign_status(Campaign.objects.get(pk=campaign.pk))["stages"][0]["tally"]
    assert (tally["succeeded"], tally["timed_out"], tally["unreachable"], tally["failed"]) == (
        7,
        1,
        2,
        0,
    )
    assert tally["pending"] == 0 and tally["in_flight"] == 0
    stage.refresh_from_db()
    assert stage.status == StageStatus.WAITING_GATE
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.RUNNING

    with pytest.raises(GateError, match="security"):
        services.campaign_promote(campaign=campaign, actor=catalog.ops)
    stage.refresh_from_db()
    assert stage.gate_approved_at is None
    engine.campaign_reconcile(campaign.pk, now=t0 + dt.timedelta(minutes=62))
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.RUNNING

    services.campaign_promote(campaign=campaign, actor=catalog.users["sec"])
    stage.refresh_from_db()
    assert stage.gate_approved_by == catalog.users["sec"]
    engine.campaign_reconcile(campaign.pk, now=t0 + dt.timedelta(minutes=63))
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.COMPLETED
    # Each device got one update command, the silent one also its cancel.
    assert DeviceCommand.objects.filter(operation="fw_update").count() == 8
