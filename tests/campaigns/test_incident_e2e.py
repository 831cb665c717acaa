"""Incident response end to end against the embedded gateway and a simulated fleet: emergency
stop mid-stage and lift; revocation of a bad release and the roll-forward rollback campaign."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError
from django.utils import timezone

from campaigns import engine, rollback, services
from campaigns.errors import CampaignStateError
from campaigns.models import (
    IN_FLIGHT_STATES,
    Campaign,
    CampaignStatus,
    Device,
    DeviceCommand,
    EmergencyStop,
    Rollout,
    RolloutState,
)
from campaigns.spec import parse_spec
from manifests import services as release_services
from manifests import suit
from manifests.errors import PermissionDeniedError
from manifests.images import imgtool
from manifests.models import Release, ReleaseStatus
from tests.campaigns.conftest import DEVICES
from tests.campaigns.support import (
    GOOD_PAYLOAD,
    Catalog,
    approve,
    committed,
    deliver_pending_commands,
    make_release,
    release_from_envelope,
    spec_text,
    wait_for,
)
from workers.embedded import EmbeddedFleet
from workers.lwm2m.object5 import FwState
from workers.lwm2m.simulator import Faults


def status_of(campaign: Campaign) -> str:
    return Campaign.objects.get(pk=campaign.pk).status


def sim(embedded: EmbeddedFleet, endpoint: str) -> Any:
    assert embedded.fleet is not None
    return embedded.fleet.devices[endpoint]


# --- 2. emergency stop --------------------------------------------------------------------------
def tick(campaign: Campaign) -> None:
    """One beat: reconcile, then send what an eager follow-up left pending (SQLite locks)."""
    with contextlib.suppress(OperationalError):
        engine.campaign_reconcile(campaign.pk)
    deliver_pending_commands()


def _stop_mid_stage(world: dict[str, Any], *, device_timeout: str) -> dict[str, Any]:
    embedded, catalog = world["embedded"], world["catalog"]
    thermo = [f"sim-{i:05d}" for i in range(DEVICES)]
    embedded.set_faults(thermo, Faults(slow_link_seconds=1.0))  # downloads take ~10 s
    text = spec_text(
        "stop-me",
        stages="  - name: all\n    size: 100%\n    max_in_flight: 8\n",
        extra=f"timeouts:\n  device: {device_timeout}\n",
    )
    campaign, _ = services.campaign_apply(spec=parse_spec(text), actor=catalog.ops)
    tick(campaign)
    rollouts = Rollout.objects.filter(campaign=campaign)
    first_wave = sorted(
        rollouts.filter(state__in=IN_FLIGHT_STATES).values_list("device__endpoint", flat=True)
    )
    assert len(first_wave) == 8
    wait_for(
        lambda: all(sim(embedded, e).fw.state is FwState.DOWNLOADING for e in first_wave),
        what="first wave downloading",
    )
    tick(campaign)  # queued -> dispatched

    with pytest.raises(PermissionDeniedError):
        services.emergency_stop(actor=catalog.users["author"], reason="not theirs to stop")
    committed(
        lambda: services.emergency_stop(actor=catalog.ops, reason="canary bricking devices"),
        done=EmergencyStop.objects.exists,
    )
    stop = EmergencyStop.objects.get()

    stopped = rollouts.filter(device__endpoint__in=first_wave)
    assert set(stopped.values_list("state", "reason")) == {(RolloutState.PENDING, "emergency_stop")}
    assert not stopped.exclude(command_id=None).exists()
    cancels = DeviceCommand.objects.filter(operation="fw_cancel")
    assert sorted(cancels.values_list("device__endpoint", flat=True)) == first_wave
    # The devices got an empty Package URI: back to Idle, nothing staged.
    wait_for(
        lambda: all(
            sim(embedded, e).fw.state is FwState.IDLE and sim(embedded, e).fw.package_uri == ""
            for e in first_wave
        ),
        what="downloads cancelled on the devices",
    )
    assert all("write_uri ''" in sim(embedded, e).events for e in first_wave)

    # Within one pass, and in every pass while the stop holds, nothing more is dispatched.
    updates = DeviceCommand.objects.filter(operation="fw_update")
    assert updates.count() == 8
    for _ in range(3):
        tick(campaign)
    assert updates.count() == 8
    assert not rollouts.filter(state__in=IN_FLIGHT_STATES).exists()

    with pytest.raises(PermissionDeniedError):
        services.emergency_lift(stop=stop, actor=catalog.ops)
    assert EmergencyStop.objects.get(pk=stop.pk).lifted_at is None
    tick(campaign)
    assert updates.count() == 8
    return {"campaign": campaign, "first_wave": first_wave, "stop": stop, "thermo": thermo}


def _lift_and_complete(world: dict[str, Any], ctx: dict[str, Any], timeout: float) -> None:
    embedded, catalog, campaign = world["embedded"], world["catalog"], ctx["campaign"]
    services.emergency_lift(stop=ctx["stop"], actor=catalog.users["sec"])
    embedded.set_faults(ctx["thermo"], Faults())

    def completed() -> bool:
        status = status_of(campaign)
        assert status in (CampaignStatus.RUNNING, CampaignStatus.COMPLETED), status
        return status == CampaignStatus.COMPLETED

    wait_for(
        completed,
        timeout=timeout,
        tick=lambda: tick(campaign),
        what="campaign completed",
    )
    rollouts = Rollout.objects.filter(campaign=campaign)
    assert rollouts.filter(state=RolloutState.SUCCEEDED).count() == DEVICES
    assert (
        Device.objects.filter(endpoint__in=ctx["thermo"], firmware_version="1.1.0").count()
        == DEVICES
    )
    for rollout in rollouts.exclude(state=RolloutState.SKIPPED).select_related("device"):
        expected = 2 if rollout.device.endpoint in ctx["first_wave"] else 1
        assert rollout.attempts == expected, rollout.device.endpoint
        assert rollout.device.commands.filter(operation="fw_update").count() == expected
        assert sim(embedded, rollout.device.endpoint).state.version == "1.1.0"


def test_emergency_stop_mid_stage_halts_dispatch_cancels_in_flight_and_lift_needs_a_role(
    world: dict[str, Any],
) -> None:
    ctx = _stop_mid_stage(world, device_timeout="2m")
    services.emergency_lift(stop=ctx["stop"], actor=world["catalog"].users["sec"])
    world["embedded"].set_faults(ctx["thermo"], Faults())
    tick(ctx["campaign"])
    # Dispatching resumes at once, for the cancelled devices too (attempt 2).
    updates = DeviceCommand.objects.filter(operation="fw_update")
    assert updates.count() == 16
    resumed = Rollout.objects.filter(campaign=ctx["campaign"], attempts=2)
    assert sorted(resumed.values_list("device__endpoint", flat=True)) == ctx["first_wave"]


def test_emergency_stop_mid_stage_then_lift_completes_the_campaign(world: dict[str, Any]) -> None:
    ctx = _stop_mid_stage(world, device_timeout="2m")
    _lift_and_complete(world, ctx, timeout=45)


# --- 3. rollback campaign -----------------------------------------------------------------------
ROLLBACK_FLEET = 12


def test_revoked_bad_release_is_rolled_forward_to_the_good_image_on_affected_devices_only(
    catalog: Catalog, fleet_factory: Callable[..., EmbeddedFleet]
) -> None:
    embedded = fleet_factory(
        catalog,
        count=ROLLBACK_FLEET,
        wrong_class=0,
        version="1.1.0",
        sequence_number=5,
        security_counter=2,
    )
    endpoints = [f"sim-{i:05d}" for i in range(ROLLBACK_FLEET)]
    assert set(
        Device.objects.filter(endpoint__in=endpoints).values_list(
            "sequence_number", "security_counter"
        )
    ) == {(5, 2)}
    bad = make_release(
        catalog,
        name="thermo-1.2.0",
        version="1.2.0",
        sequence=6,
        counter=3,
        payload=b"\x66" * 8192,
    )
    reached, slow, untouched = endpoints[:4], endpoints[4:6], endpoints[6:]
    embedded.set_faults(slow, Faults(slow_link_seconds=2.0))
    include = "".join(f"    - {e}\n" for e in reached + slow)
    text = spec_text("bad-rollout", release=bad.name, target_extra=f"  include:\n{include}")
    bad_campaign, _ = services.campaign_apply(spec=parse_spec(text), actor=catalog.ops)

    def reached_all() -> bool:
        states = dict(
            Rollout.objects.filter(campaign=bad_campaign).values_list("device__endpoint", "state")
        )
        return all(states[e] == RolloutState.SUCCEEDED for e in reached) and all(
            sim(embedded, e).fw.state is FwState.DOWNLOADING for e in slow
        )

    wait_for(reached_all, timeout=60, tick=lambda: tick(bad_campaign))

    # Revocation aborts its campaign and cancels the downloads still in flight.
    committed(
        lambda: release_services.release_revoke(
            release=bad, reason="bricks sensors", actor=catalog.users["sec"]
        ),
        done=lambda: Release.objects.get(pk=bad.pk).status == ReleaseStatus.REVOKED,
    )
    bad_campaign.refresh_from_db()
    assert bad_campaign.status == CampaignStatus.ABORTED
    cancelled = Rollout.objects.filter(campaign=bad_campaign, device__endpoint__in=slow)
    assert set(cancelled.values_list("state", "reason")) == {
        (RolloutState.CANCELLED, "campaign_aborted")
    }
    wait_for(
        lambda: all(sim(embedded, e).fw.package_uri == "" for e in slow),
        what="slow downloads cancelled",
    )
    assert all(sim(embedded, e).state.version == "1.1.0" for e in slow)
    assert set(
        Device.objects.filter(endpoint__in=reached).values_list(
            "firmware_version", "sequence_number", "security_counter"
        )
    ) == {("1.2.0", 6, 3)}

    # The good image as first signed carries MCUboot counter 2: devices now at 3 would refuse it.
    with pytest.raises(CampaignStateError) as refused:
        rollback.rollback_prepare(bad_release=bad)
    message = str(refused.value)
    assert "security counter 2, below the fleet's 3" in message
    assert "--security-counter 3" in message
    resigned = release_services.image_upload(
        data=imgtool.build_image(GOOD_PAYLOAD, version="1.1.0", security_counter=3),
        actor=catalog.users["author"],
    )
    plan = rollback.rollback_prepare(bad_release=bad, image=resigned)
    assert (plan.version, plan.sequence_number, plan.security_counter) == ("1.1.0", 7, 3)
    assert sorted(plan.affected_endpoints) == reached

    envelope = suit.create_envelope(
        plan.params(use_before=timezone.now() + dt.timedelta(days=7)),
        keys=[catalog.keys["author"]],
    )
    rb = release_from_envelope(catalog, envelope, name="rollback-thermo-1.2.0", kind="rollback")
    # The incident policy: two security people. One is not enough, and QA does not count.
    assert not approve(catalog, rb, "sec", "security").approved
    assert not approve(catalog, rb, "qa", "qa").approved
    assert rb.status != ReleaseStatus.APPROVED
    with pytest.raises(CampaignStateError):
        services.campaign_apply(
            spec=parse_spec(
                rollback.rollback_spec(plan=plan, rollback_release=rb, name="too-early")
            ),
            actor=catalog.ops,
        )
    assert approve(catalog, rb, "sec2", "security").approved
    assert rb.status == ReleaseStatus.APPROVED

    document = rollback.rollback_spec(plan=plan, rollback_release=rb, name="rollback-campaign")
    campaign, _ = services.campaign_apply(spec=parse_spec(document), actor=catalog.ops)
    rollouts = Rollout.objects.filter(campaign=campaign)
    assert sorted(rollouts.values_list("device__endpoint", flat=True)) == reached
    wait_for(
        lambda: status_of(campaign) == CampaignStatus.COMPLETED,
        timeout=90,
        tick=lambda: tick(campaign),
        what="rollback campaign completed",
    )
    assert rollouts.filter(state=RolloutState.SUCCEEDED).count() == len(reached)
    assert set(
        Device.objects.filter(endpoint__in=reached).values_list(
            "firmware_version", "sequence_number", "security_counter"
        )
    ) == {("1.1.0", 7, 3)}
    for endpoint in reached:
        state = sim(embedded, endpoint).state
        assert (state.version, state.sequence_number, state.security_counter) == ("1.1.0", 7, 3)
    # Devices the bad release never reached were not touched by either campaign.
    for endpoint in slow + untouched:
        device = sim(embedded, endpoint)
        assert (device.state.version, device.state.sequence_number) == ("1.1.0", 5)
        assert device.boots == 0
    assert not DeviceCommand.objects.filter(
        device__endpoint__in=untouched, operation__in=["fw_update", "fw_cancel"]
    ).exists()
