"""The reconcile engine on its own: registry rows with no gateway behind them, device reports fed
through the engine's event intake, and time passed as ``now=``.

Covers exclusions with reasons, idempotent reconcile and apply (through the ``campaign``
command), constant SQL per dispatched device, late joiners, gates, device timeouts and
unreachable devices.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import engine, planning, rollouts, selectors, services
from campaigns.errors import CampaignStateError, GateError
from campaigns.models import (
    Campaign,
    CampaignRevision,
    CampaignStage,
    CampaignStatus,
    Device,
    DeviceCommand,
    Rollout,
    RolloutState,
    StageStatus,
)
from campaigns.selectors import campaign_status
from campaigns.spec import parse_spec
from tests.campaigns.support import Catalog, make_devices, make_release, spec_text

pytestmark = pytest.mark.django_db


def apply(catalog: Catalog, text: str, *, now: dt.datetime | None = None) -> Campaign:
    campaign, outcome = services.campaign_apply(
        spec=parse_spec(text, source="spec.yaml"), actor=catalog.ops, now=now
    )
    assert outcome == "created"
    return campaign


def confirm(rollout: Rollout, *, now: dt.datetime | None = None) -> None:
    """The device rebooted into the manifest's version and the gateway reported success."""
    rollout.refresh_from_db()
    Device.objects.filter(pk=rollout.device_id).update(firmware_version=rollout.manifest.version)
    rollouts.rollouts_apply_event(
        event={"type": "command_result", "command_id": str(rollout.command_id), "ok": True},
        now=now,
    )


def states(campaign: Campaign) -> dict[str, str]:
    return dict(Rollout.objects.filter(campaign=campaign).values_list("device__endpoint", "state"))


def row_counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (
            Campaign,
            CampaignRevision,
            CampaignStage,
            Rollout,
            DeviceCommand,
            AuditEvent,
        )
    }


# --- 4. exclusions ------------------------------------------------------------------------------
def test_plan_excludes_devices_with_their_reasons(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 5, prefix="ok")
    make_devices(catalog, 2, prefix="v1", device_class=catalog.thermo_v1)
    make_devices(catalog, 1, prefix="newer-counter", security_counter=9)
    make_devices(catalog, 1, prefix="current", firmware_version="1.1.0", sequence_number=5)
    make_devices(catalog, 1, prefix="skewed", clock_offset_seconds=3600.0)
    make_devices(catalog, 1, prefix="gone", online=False, last_seen=now - dt.timedelta(days=3))
    text = spec_text("excl", target_extra="  offline_max: 1d\n")
    plan = planning.campaign_plan(spec=parse_spec(text), now=now)
    assert plan.release_refusal is None
    assert plan.cohort == 5
    assert dict(plan.excluded) == {
        "class_mismatch": 2,
        "rollback_refused_counter": 1,
        "already_current": 1,
        "clock_skew": 1,
        "offline_too_long": 1,
    }
    campaign = apply(catalog, text, now=now)
    skipped = dict(
        Rollout.objects.filter(campaign=campaign, state=RolloutState.SKIPPED).values_list(
            "device__endpoint", "reason"
        )
    )
    assert skipped == {
        "v1-00000": "class_mismatch",
        "v1-00001": "class_mismatch",
        "newer-counter-00000": "rollback_refused_counter",
        "current-00000": "already_current",
        "gone-00000": "offline_too_long",
    }
    assert all(Rollout.objects.get(campaign=campaign, device__endpoint=e).detail for e in skipped)
    # A clock that is off may be fixed: counted as excluded by the plan, the rollout is kept
    # pending with its reason, as the dispatcher does, and goes once the clock is right.
    skewed = Rollout.objects.get(campaign=campaign, device__endpoint="skewed-00000")
    assert (skewed.state, skewed.reason) == (RolloutState.PENDING, "clock_skew")
    assert "clock" in skewed.detail


def test_expired_manifest_blocks_the_plan_and_apply_refuses(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 3)
    make_release(
        catalog,
        name="thermo-1.2.0",
        version="1.2.0",
        sequence=6,
        counter=2,
        payload=b"\x43" * 4096,
        use_before=now + dt.timedelta(hours=1),
    )
    text = spec_text("expired", release="thermo-1.2.0")
    later = now + dt.timedelta(hours=2)
    plan = planning.campaign_plan(spec=parse_spec(text), now=later)
    blocked = plan.as_dict()["release_blocked"]
    assert blocked is not None and blocked["reason"] == "expired_release"
    assert plan.cohort == 0 and plan.excluded == {"expired_release": 3}
    before = row_counts()
    with pytest.raises(CampaignStateError, match="expired_release"):
        services.campaign_apply(spec=parse_spec(text), actor=catalog.ops, now=later)
    assert row_counts() == before
    # Applied while fresh, the manifest expires before dispatch: nothing is sent.
    campaign = apply(catalog, text, now=now)
    report = engine.campaign_reconcile(campaign.pk, now=later)
    assert report is not None and report.dispatched == 0
    assert set(states(campaign).values()) == {RolloutState.SKIPPED}
    assert set(Rollout.objects.filter(campaign=campaign).values_list("reason", flat=True)) == {
        "expired_release"
    }
    assert not DeviceCommand.objects.exists()


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


# --- 5. idempotency -----------------------------------------------------------------------------
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


def _apply_cli(path: Path, user: str = "ops") -> str:
    out = io.StringIO()
    call_command("campaign", "apply", str(path), "--user", user, stdout=out)
    return out.getvalue()


def test_apply_is_idempotent_and_a_change_is_a_revision_with_its_diff(
    catalog: Catalog, tmp_path: Path
) -> None:
    make_devices(catalog, 8)
    path = tmp_path / "rollout.yaml"
    path.write_text(spec_text("cli-rollout"))
    assert "created (revision 1)" in _apply_cli(path)
    before = row_counts()
    # The same spec, formatted differently, is the same spec.
    path.write_text(spec_text("cli-rollout").replace("size: 100%", "size: '100%'") + "\n\n")
    assert "unchanged (revision 1)" in _apply_cli(path)
    assert row_counts() == before

    path.write_text(spec_text("cli-rollout", extra="timeouts:\n  device: 7m\n"))
    assert "revised (revision 2)" in _apply_cli(path)
    campaign = Campaign.objects.get(name="cli-rollout")
    assert campaign.revision == 2
    assert Rollout.objects.filter(campaign=campaign).count() == 8  # no new rows
    revise = AuditEvent.objects.get(action="campaign.revise", object_id="cli-rollout")
    assert revise.details["revision"] == 2
    changed = {(d.get("path"), str(d.get("new", d.get("after")))) for d in revise.details["diff"]}
    assert any(p == "timeouts.device" and "7m" in new for p, new in changed), revise.details
    assert (
        CampaignRevision.objects.get(campaign=campaign, revision=2).diff == revise.details["diff"]
    )


BAD_SPECS = [
    pytest.param(
        lambda: spec_text("bad", extra="colour: blue\n"),
        ["colour"],
        id="unknown-key",
    ),
    pytest.param(
        lambda: spec_text("bad", stages="  - name: all\n    size: 150%\n"),
        ["stages[0].size"],
        id="percent-over-100",
    ),
    pytest.param(
        lambda: spec_text("bad", release="thermo-9.9.9"),
        ["release", "thermo-9.9.9"],
        id="unknown-release",
    ),
    pytest.param(
        lambda: spec_text("bad", device_class="acme.example/toaster"),
        ["target.device_class", "toaster"],
        id="unknown-class",
    ),
]


@pytest.mark.parametrize(("document", "mentions"), BAD_SPECS)
def test_bad_spec_is_refused_with_file_path_and_reason_and_writes_nothing(
    catalog: Catalog, tmp_path: Path, document: Any, mentions: list[str]
) -> None:
    make_devices(catalog, 3)
    path = tmp_path / "bad-spec.yaml"
    path.write_text(document())
    before = row_counts()
    for action in ("plan", "apply"):
        args = ["campaign", action, str(path)] + (["--user", "ops"] if action == "apply" else [])
        with pytest.raises(CommandError) as caught:
            call_command(*args, stdout=io.StringIO())
        message = str(caught.value)
        assert str(path) in message, message
        for mention in mentions:
            assert mention in message, message
        assert caught.value.returncode == 1
    assert row_counts() == before


# --- 6. constant SQL per dispatched device --------------------------------------------------------
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


# --- 7. late joiners ----------------------------------------------------------------------------
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


# --- 8. gates, timeouts, unreachable ------------------------------------------------------------
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
