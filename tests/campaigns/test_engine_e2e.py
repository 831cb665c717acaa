"""A staged rollout end to end: real gateway on loopback, simulated devices that download,
verify, install and reboot, Celery tasks applying their events, the engine reconciling.

The canary's faulty devices trip its failure threshold and pause the campaign; the fault is
cleared, the campaign resumed, and it completes. Devices of another class and devices already on
a newer counter are excluded with their reasons.
"""

from __future__ import annotations

from campaigns import engine, planning, services
from campaigns.models import Campaign, CampaignStatus, Device, Rollout, RolloutState
from campaigns.spec import parse_spec
from tests.campaigns.conftest import DEVICES
from tests.campaigns.support import few_hundred_scenario, wait_for
from workers.lwm2m.simulator import Faults

SPEC = """
apiVersion: fwupd/v1
kind: Campaign
name: thermo-rollout
release: thermo-1.1.0
target:
  device_class: acme.example/thermo-v2
stages:
  - name: canary
    size: 25%
    failure_threshold: 30%
    min_finished: 2
  - name: wave
    size: 50%
  - name: all
    size: rest
timeouts:
  device: 2m
"""


def test_staged_rollout_pauses_on_canary_failures_and_completes_after_resume(world):
    embedded, ops = world["embedded"], world["ops"]
    # One device already carries a newer security counter: rollback refused, excluded.
    Device.objects.filter(endpoint="sim-00023").update(security_counter=9)
    spec = parse_spec(SPEC, source="spec.yaml")
    plan = planning.campaign_plan(spec=spec)
    assert plan.cohort == DEVICES - 1
    assert plan.excluded == {"rollback_refused_counter": 1, "class_mismatch": 2}
    campaign, outcome = services.campaign_apply(spec=spec, actor=ops, source="spec.yaml")
    assert outcome == "created"
    assert services.campaign_apply(spec=spec, actor=ops)[1] == "unchanged"
    canary = list(
        Rollout.objects.filter(campaign=campaign, stage=0, state=RolloutState.PENDING).values_list(
            "device__endpoint", flat=True
        )
    )
    assert len(canary) == 6
    embedded.set_faults(canary[:2], Faults(boot_fail=True))

    def reconcile() -> None:
        engine.campaign_reconcile(campaign.pk)

    def status() -> str:
        return Campaign.objects.get(pk=campaign.pk).status

    wait_for(lambda: status() == CampaignStatus.PAUSED, timeout=90, tick=reconcile)
    paused = Campaign.objects.get(pk=campaign.pk)
    assert paused.current_stage == 0 and "canary" in paused.pause_reason
    failed = Rollout.objects.filter(campaign=campaign, state=RolloutState.FAILED)
    assert set(failed.values_list("reason", flat=True)) == {"update_failed"}
    assert set(failed.values_list("fw_result", flat=True)) == {8}
    # Nothing beyond the canary was dispatched while it was failing.
    assert (
        not Rollout.objects.filter(campaign=campaign, stage__gt=0)
        .exclude(state__in=[RolloutState.PENDING, RolloutState.SKIPPED])
        .exists()
    )

    embedded.set_faults(canary[:2], Faults())
    services.campaign_resume(campaign=paused, actor=ops)
    wait_for(lambda: status() == CampaignStatus.COMPLETED, timeout=180, tick=reconcile)

    rollouts = Rollout.objects.filter(campaign=campaign)
    assert rollouts.filter(state=RolloutState.SUCCEEDED).count() == DEVICES - 1
    skipped = sorted(rollouts.filter(state=RolloutState.SKIPPED).values_list("reason", flat=True))
    assert skipped == ["class_mismatch", "class_mismatch", "rollback_refused_counter"]
    assert (
        Device.objects.filter(device_class=world["thermo"], firmware_version="1.1.0").count()
        == DEVICES - 1
    )
    assert Device.objects.filter(endpoint__startswith="old", firmware_version="1.0.0").count() == 2
    # Each device got exactly one command per attempt: never dispatched twice concurrently.
    for rollout in rollouts.filter(state=RolloutState.SUCCEEDED):
        assert rollout.device.commands.filter(operation="fw_update").count() == rollout.attempts


def test_a_few_hundred_devices_through_three_stages(fleet_factory, catalog):
    """The issue's scale in one process (eager Celery): a few hundred devices, faulty canary
    devices pause the campaign, and after the fault clears and the operator resumes, every
    device is updated exactly once. The same scenario through a worker process and Redis is in
    test_worker_killed_e2e."""
    embedded = fleet_factory(catalog, count=240, wrong_class=4)
    few_hundred_scenario(embedded, catalog, fleet_size=240, reconcile=engine.campaign_reconcile)
