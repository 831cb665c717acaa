"""A failed command reaches its rollout as data: the reason comes from the device's Update Result
or the gateway's error code (never from words in the message), and the gateway's permanent /
transient verdict decides whether the campaign's retry policy may try the device again."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from campaigns import engine, rollouts, services
from campaigns.events import CommandResult
from campaigns.models import Campaign, CommandStatus, DeviceCommand, Rollout, RolloutState
from campaigns.spec import parse_spec
from tests.campaigns.support import Catalog, make_devices, spec_text

pytestmark = pytest.mark.django_db

RETRY_ALL = (
    "retries:\n  max: 3\n  backoff: 1m\n"
    "  on: [dispatch_failed, timed_out, connection_lost, device_busy]\n"
)


def _dispatched(catalog: Catalog, name: str, *, extra: str = RETRY_ALL) -> tuple[Campaign, Rollout]:
    now = timezone.now()
    make_devices(catalog, 1)
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text(name, extra=extra)), actor=catalog.ops, now=now
    )
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 1
    return campaign, Rollout.objects.get(campaign=campaign)


def _fail(rollout: Rollout, **fields: Any) -> Rollout:
    rollouts.rollouts_apply_event(
        event=CommandResult(command_id=str(rollout.command_id), ok=False, **fields)
    )
    rollout.refresh_from_db()
    return rollout


def test_an_update_that_ran_out_of_time_is_timed_out_by_its_error_code(catalog: Catalog) -> None:
    _, rollout = _dispatched(catalog, "slow", extra="")
    rollout = _fail(
        rollout,
        error_code="lwm2m.fw_update_timed_out",
        error="dev-0: no end in DOWNLOADING",  # the words say nothing of a timeout
    )
    assert (rollout.state, rollout.reason) == (RolloutState.TIMED_OUT, "timed_out")


def test_a_message_that_mentions_a_timeout_does_not_make_one(catalog: Catalog) -> None:
    _, rollout = _dispatched(catalog, "words", extra="")
    rollout = _fail(
        rollout, error_code="lwm2m.device_operation", error="read /5/0/3: timed out", permanent=True
    )
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "dispatch_failed")


def test_a_permanent_gateway_failure_is_not_retried_even_when_the_policy_covers_it(
    catalog: Catalog,
) -> None:
    _, rollout = _dispatched(catalog, "permanent")
    rollout = _fail(
        rollout,
        error_code="lwm2m.device_operation",
        error="no DTLS listener for a coaps Package URI",
        permanent=True,
    )
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "dispatch_failed")


def test_a_transient_gateway_failure_is_retried_by_the_policy(catalog: Catalog) -> None:
    _, rollout = _dispatched(catalog, "transient")
    rollout = _fail(
        rollout, error_code="lwm2m.device_timeout", error="dev-0 did not answer", permanent=False
    )
    assert (rollout.state, rollout.reason) == (RolloutState.PENDING, "dispatch_failed")
    assert rollout.next_attempt_at is not None


def test_a_busy_device_is_device_busy_and_retried_by_default(catalog: Catalog) -> None:
    _, rollout = _dispatched(catalog, "busy", extra="retries:\n  max: 2\n")
    rollout = _fail(
        rollout, error_code="lwm2m.device_busy", error="dev-0 is busy (state 1)", permanent=False
    )
    assert (rollout.state, rollout.reason) == (RolloutState.PENDING, "device_busy")


def test_the_devices_own_update_result_is_judged_by_the_policy_not_the_verdict(
    catalog: Catalog,
) -> None:
    _, rollout = _dispatched(catalog, "lost")
    # The gateway's attempt ended for good (permanent), but the device said "connection lost"
    # (Update Result 4): a new attempt may well succeed, and the policy covers it.
    rollout = _fail(
        rollout,
        error_code="lwm2m.fw_update_failed",
        result={"phase": "failed", "result": 4},
        permanent=True,
    )
    assert (rollout.state, rollout.reason, rollout.fw_result) == (
        RolloutState.PENDING,
        "connection_lost",
        4,
    )
    assert rollout.next_attempt_at is not None and rollout.next_attempt_at > timezone.now() - (
        dt.timedelta(seconds=1)
    )


def test_every_state_change_stamps_the_rollouts_updated_at(catalog: Catalog) -> None:
    """Queryset updates skip ``auto_now``: each state change sets ``updated_at`` itself, or the
    console's "updated" column shows the time the row was created."""
    start = timezone.now() + dt.timedelta(hours=1)
    make_devices(catalog, 1)
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("stamps", extra="")), actor=catalog.ops, now=start
    )

    def stamp() -> dt.datetime:
        return Rollout.objects.get(campaign=campaign).updated_at

    engine.campaign_reconcile(campaign.pk, now=start)  # claimed and dispatched
    assert stamp() == start
    rollout = Rollout.objects.get(campaign=campaign)
    failed_at = start + dt.timedelta(minutes=5)
    rollouts.rollouts_apply_event(
        event=CommandResult(command_id=str(rollout.command_id), ok=False, permanent=True),
        now=failed_at,
    )
    assert Rollout.objects.get(campaign=campaign).state == RolloutState.FAILED
    assert stamp() == failed_at
    services.campaign_pause(campaign=campaign, actor=catalog.ops, now=failed_at)
    resumed_at = start + dt.timedelta(minutes=10)
    services.campaign_resume(campaign=campaign, actor=catalog.ops, now=resumed_at)
    assert Rollout.objects.get(campaign=campaign).state == RolloutState.PENDING
    assert stamp() == resumed_at
    aborted_at = start + dt.timedelta(minutes=15)
    services.campaign_abort(campaign=campaign, actor=catalog.ops, reason="x", now=aborted_at)
    assert Rollout.objects.get(campaign=campaign).state == RolloutState.CANCELLED
    assert stamp() == aborted_at


def test_a_device_not_reached_waits_and_is_dispatched_again_without_a_failure(
    catalog: Catalog,
) -> None:
    """No retry policy at all: a device that did not answer before the update began (a loaded
    gateway, a gateway restarted before the device's next Update) is not a failure; its rollout
    goes back to pending with the reason, and a later pass dispatches it again."""
    campaign, rollout = _dispatched(catalog, "unreached", extra="")
    first_command = rollout.command_id
    rollout = _fail(
        rollout, error_code="lwm2m.device_unreachable", error="dev-0: no answer", permanent=False
    )
    assert (rollout.state, rollout.reason) == (RolloutState.PENDING, "device_unreachable")
    assert rollout.command_id is None and rollout.next_attempt_at is not None
    assert not Rollout.objects.filter(campaign=campaign, state=RolloutState.FAILED).exists()
    later = rollout.next_attempt_at + dt.timedelta(seconds=1)
    report = engine.campaign_reconcile(campaign.pk, now=later)
    assert report is not None and report.dispatched == 1
    rollout.refresh_from_db()
    # The wait made no attempt: the one dispatch that may reach the device is the first.
    assert (rollout.attempts, rollout.waits) == (1, 1)
    assert rollout.command_id not in (None, first_command)


def test_waiting_for_an_unreachable_device_does_not_use_up_its_retries(catalog: Catalog) -> None:
    """One retry allowed: a device waited for twice (a loaded gateway's reads timing out) and
    then failing its real attempt still gets the retry it is owed (docs/architecture.md: the
    wait is outside the retry policy)."""
    one_retry = "retries:\n  max: 1\n  backoff: 1m\n  on: [dispatch_failed]\n"
    campaign, rollout = _dispatched(catalog, "waited-then-failed", extra=one_retry)
    for _ in range(2):
        rollout = _fail(rollout, error_code="lwm2m.device_unreachable", permanent=False)
        later = rollout.next_attempt_at + dt.timedelta(seconds=1)
        report = engine.campaign_reconcile(campaign.pk, now=later)
        assert report is not None and report.dispatched == 1
        rollout.refresh_from_db()
    assert (rollout.attempts, rollout.waits) == (1, 2)
    rollout = _fail(rollout, error_code="lwm2m.device_operation", permanent=False)
    assert (rollout.state, rollout.reason) == (RolloutState.PENDING, "dispatch_failed")
    rollout = _fail_next(campaign, rollout)
    assert (rollout.state, rollout.attempts) == (RolloutState.FAILED, 2)


def _fail_next(campaign: Campaign, rollout: Rollout) -> Rollout:
    """Dispatch the rollout again after its backoff and fail that attempt too."""
    report = engine.campaign_reconcile(campaign.pk, now=rollout.next_attempt_at)
    assert report is not None and report.dispatched == 1
    rollout.refresh_from_db()
    return _fail(rollout, error_code="lwm2m.device_operation", permanent=False)


def test_a_wait_reported_twice_changes_nothing_the_second_time(catalog: Catalog) -> None:
    """The gateway's result can arrive twice (its event batch retried): the second one neither
    gives back a second attempt nor lengthens the pause."""
    _, rollout = _dispatched(catalog, "waited-twice", extra="")
    command = str(rollout.command_id)
    for _ in range(2):
        rollouts.rollouts_apply_event(
            event=CommandResult(command_id=command, ok=False, error_code="lwm2m.device_unreachable")
        )
    rollout.refresh_from_db()
    assert (rollout.state, rollout.attempts, rollout.waits) == (RolloutState.PENDING, 0, 1)


def test_a_device_not_reached_waits_longer_each_time(catalog: Catalog) -> None:
    campaign, rollout = _dispatched(catalog, "unreached-again", extra="")
    now = timezone.now()
    pauses = []
    for _ in range(3):
        rollout = _fail(rollout, error_code="lwm2m.device_unreachable", permanent=False)
        pauses.append(rollout.next_attempt_at - rollout.updated_at)
        now = rollout.next_attempt_at + dt.timedelta(seconds=1)
        engine.campaign_reconcile(campaign.pk, now=now)
        rollout.refresh_from_db()
        assert rollout.state != RolloutState.PENDING
    assert pauses[0] < pauses[1] < pauses[2] <= rollouts.WAIT_MAX


def test_a_command_not_sent_because_the_device_seemed_offline_waits(catalog: Catalog) -> None:
    """The registry saw the device offline (its registration lapsed: Updates late on a loaded
    machine, or its gateway died) when the command was to be sent: the rollout waits and is
    dispatched again, it does not fail as dispatch_failed."""
    campaign, rollout = _dispatched(catalog, "seemed-offline", extra="")
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.QUEUED)
    DeviceCommand.objects.filter(pk=rollout.command_id).update(
        status=CommandStatus.FAILED, error_code="device.offline", error="dev-0 is offline"
    )
    report = engine.campaign_reconcile(campaign.pk, now=timezone.now())
    assert report is not None and report.dispatch_failed == 0
    rollout.refresh_from_db()
    assert (rollout.state, rollout.reason) == (RolloutState.PENDING, "device_unreachable")
    assert not Rollout.objects.filter(campaign=campaign, state=RolloutState.FAILED).exists()
