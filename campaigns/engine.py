"""The reconcile loop.

``campaign_reconcile`` moves one running campaign forward: it re-checks the release, enrols late
joiners, applies timeouts and retries, confirms successes, evaluates the current stage's
thresholds (pausing, aborting or advancing), then dispatches the next batch. It holds the
campaign row lock for the whole pass (``skip_locked``: a second worker skips the campaign instead
of waiting), and every rollout change is a conditional update on the state it expects, so a pass
that runs twice, or a worker killed half-way (the transaction rolls back), never dispatches a
device twice. What happens to one device between passes (events, failures, cancels) is
``campaigns.rollouts``.

Rollout states: pending → queued (claimed, command written) → dispatched (command sent to the
gateway) → downloading → downloaded → updating → succeeded; failed(reason, result),
timed_out, unreachable, skipped(reason), cancelled(reason).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import (
    Case,
    CharField,
    Count,
    F,
    Q,
    TextField,
    UUIDField,
    Value,
    When,
)
from django.utils import timezone

from audit.services import audit_record
from campaigns import checks, clock, delivery, ramp, stages, windows
from campaigns.device_services import (
    DeviceOfflineError,
    command_queue,
    commands_queue,
    device_command_create,
)
from campaigns.eligibility import (
    DispatchChecker,
    EncryptionGate,
    PlanDevice,
    active_stops,
    classify_device,
    in_flight_elsewhere,
    manifest_facts,
    policy_dispatch_state,
    policy_facts,
    resolve,
)
from campaigns.errors import transient_conflict
from campaigns.models import (
    IN_FLIGHT_STATES,
    ROLLOUT_PAYLOAD_DELTA,
    ROLLOUT_PAYLOAD_FALLBACK,
    Campaign,
    CampaignStage,
    CampaignStatus,
    CommandStatus,
    Device,
    DeviceCommand,
    Rollout,
    RolloutState,
    StageStatus,
)
from campaigns.planning import PlanRow, write_rows
from campaigns.rollouts import (
    campaign_nudge,
    confirm_successes,
    fail_rollout,
    nudge_flag,
    wait_rollout,
)
from campaigns.selectors import describe_start, spec_of, stage_tally
from campaigns.services import abort_campaign
from manifests import device_rules as dc
from manifests.delivery import REPORTING_PROFILES
from manifests.services import DeltaOffer, delta_offer, release_dispatch_state
from manifests.suit.report import MIN_NONCE_BYTES as REPORT_NONCE_BYTES
from ops import tallies

log = logging.getLogger(__name__)

ENGINE = "engine"
# Rollouts claimed per dispatch round: bounds the transaction (and the row locks it holds) while
# keeping per-device query cost amortised over the batch.
DISPATCH_BATCH = 500
# The same on PostgreSQL, where a pass is decided and written set-based (``_dispatch_set``): the
# cost per rollout is PostgreSQL's own, so a pass takes many more while its locks stay short.
SET_DISPATCH_BATCH = 25_000
# A nudged pass that found its campaign held by another pass asks again after this long (short:
# the other pass is one transaction; not zero: it would spin while that pass runs).
NUDGE_AGAIN_SECONDS = 0.5
# Newly registered devices examined per reconcile pass (the rest join on the next passes).
ENROLL_BATCH = 1000
# A command still unsent after this long (its task was lost with a worker) is sent again.
COMMAND_RESEND_AFTER = dt.timedelta(seconds=60)
# Margin the gateway gets beyond the device timeout before the engine gives up on a command.
GATEWAY_TIMEOUT_MARGIN = dt.timedelta(seconds=30)
# A pending device that cannot go now for a passing reason (clock skew, busy in another
# campaign, its group's window closed) is looked at again after this, so that such devices
# never fill the candidate window and starve the devices behind them.
DEFER_RECHECK = dt.timedelta(seconds=30)
# Runs of a reconcile pass that lost a deadlock or serialization conflict.
RECONCILE_ATTEMPTS = 3


# The ``fw_update`` delivery of a trust-policy campaign's commands (``campaigns.trust_delivery``):
# the gateway serves the policy document at /fw/t/<sha256>.
TRUST_POLICY_DELIVERY = "trust-policy"


@dataclass(frozen=True)
class Target:
    """What a campaign rolls out, as its checks and commands read it: a release's manifest
    (facts, version and row), or a trust-policy campaign's policy (no manifest; the policy's
    facts and its document's SHA-256, which the commands carry as their digest)."""

    manifest: dc.ManifestFacts | None
    manifest_version: tuple[int, int, int, int] | None
    manifest_row: Any
    policy: checks.PolicyFacts | None
    policy_sha256: str = ""

    @property
    def manifest_id(self) -> int | None:
        return self.manifest_row.pk if self.manifest_row is not None else None


def campaign_target(campaign: Campaign) -> Target:
    if campaign.trust_policy is not None:
        return Target(
            None,
            None,
            None,
            policy_facts(campaign.trust_policy),
            policy_sha256=campaign.trust_policy.sha256,
        )
    assert campaign.release is not None  # noqa: S101 - the campaign_one_target constraint
    manifest, version = manifest_facts(campaign.release)
    return Target(manifest, version, campaign.release.manifest, None)


def target_state(campaign: Campaign, *, now: dt.datetime) -> checks.ReleaseState:
    """The campaign's release as dispatch sees it now, or its trust policy's state."""
    if campaign.trust_policy is not None:
        return policy_dispatch_state(campaign.trust_policy, now=now)
    return release_dispatch_state(campaign.release, now=now)


def command_args(
    campaign: Campaign,
    target: Target,
    *,
    method: str,
    timeout: dt.timedelta | None,
    delta: DeltaOffer | None = None,
) -> dict[str, Any]:
    """A dispatch's ``fw_update`` arguments: the release's (``fw_update_args``) or a
    trust-policy package's (the arguments ``trust_policy_deliver`` sends, pulled or pushed)."""
    profile = campaign.device_class.delivery
    if target.policy is None:
        return fw_update_args(
            target.manifest_row, profile=profile, method=method, timeout=timeout, delta=delta
        )
    args: dict[str, Any] = {
        "manifest_digest": target.policy_sha256,
        "delivery": TRUST_POLICY_DELIVERY,
        "method": method,
    }
    if profile in REPORTING_PROFILES:
        args["report_nonce"] = secrets.token_hex(REPORT_NONCE_BYTES)
    if timeout:
        args["timeout"] = timeout.total_seconds()
    return args


@dataclass
class ReconcileReport:
    """What one pass did, counted as it happened (``campaign reconcile`` prints it)."""

    campaign: str
    status: str
    stage: int
    dispatched: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    decision: str = ""
    enrolled: int = 0  # late joiners examined and written as rollouts
    sent: int = 0  # queued rollouts whose command reached the gateway: now dispatched
    resent: int = 0  # commands lost with a worker, queued again
    dispatch_failed: int = 0  # commands that failed before reaching a gateway
    timed_out: int = 0  # in flight past the deadline, final
    retrying: int = 0  # failed or timed out and back to pending for a retry
    returned: int = 0  # unreachable devices back online, pending again
    succeeded: int = 0  # successes confirmed by the device's reported version
    unreachable: int = 0  # pending devices not seen for unreachable_after
    held_skipped: int = 0  # still held for a passing reason after unreachable_after: skipped
    stages_completed: list[str] = field(default_factory=list)

    @property
    def requeued(self) -> int:
        """Rollouts put back to pending by this pass (retries, devices back online)."""
        return self.retrying + self.returned

    def changes(self) -> list[str]:
        """What changed, in words, for people; empty when the pass changed nothing."""
        words = []
        for count, text in (
            (self.enrolled, "enrolled"),
            (self.dispatched, "dispatched"),
            (self.sent, "sent to the gateway"),
            (self.resent, "commands re-sent"),
            (self.requeued, "re-queued"),
            (self.timed_out, "timed out"),
            (self.dispatch_failed, "dispatch failed"),
            (self.succeeded, "succeeded"),
            (self.unreachable, "unreachable"),
            (self.held_skipped, "skipped (still held)"),
        ):
            if count:
                words.append(f"{text} {count}")
        if self.skipped:
            words.append(
                "refused at dispatch "
                + ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
            )
        words.extend(f"stage {name} completed" for name in self.stages_completed)
        return words

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "status": self.status,
            "stage": self.stage,
            "decision": self.decision,
            "enrolled": self.enrolled,
            "dispatched": self.dispatched,
            "sent": self.sent,
            "resent": self.resent,
            "requeued": self.requeued,
            "retrying": self.retrying,
            "returned": self.returned,
            "timed_out": self.timed_out,
            "dispatch_failed": self.dispatch_failed,
            "succeeded": self.succeeded,
            "unreachable": self.unreachable,
            "held_skipped": self.held_skipped,
            "skipped": dict(sorted(self.skipped.items())),
            "stages_completed": list(self.stages_completed),
        }


def campaign_reconcile(
    campaign_id: int, *, now: dt.datetime | None = None
) -> ReconcileReport | None:
    """One reconcile pass of a campaign, in one transaction. The pass is idempotent, so when
    the database picks it as the victim of a deadlock or a serialization conflict (event
    intake locks the same rollouts in another order) it is run again, a few times."""
    for attempt in range(RECONCILE_ATTEMPTS):
        try:
            report = _reconcile_once(campaign_id, now=now or timezone.now())
        except OperationalError as exc:
            if not transient_conflict(exc) or attempt == RECONCILE_ATTEMPTS - 1:
                raise
            log.warning(
                "reconcile of campaign %s lost a lock conflict, again: %s", campaign_id, exc
            )
            time.sleep(0.05 * 2**attempt)
            continue
        if report is not None and report.dispatched:
            # Committed: counted for /metrics (fwupd_dispatches_total, ops.tallies).
            tallies.dispatches_add(campaign=report.campaign, count=report.dispatched)
        return report
    return None  # not reached: the last attempt returns or raises


def campaign_reconcile_nudged(campaign_id: int) -> ReconcileReport | None:
    """A pass asked for by a rollout's end (``rollouts.campaign_nudge``). The nudge's flag is
    lowered before the pass reads anything, so a rollout that ends after this point nudges
    again. A pass skipped because another worker holds the campaign is asked for again
    shortly: that pass may have read the rollouts before the change that nudged."""
    tallies.flag_lower(nudge_flag(campaign_id))
    report = campaign_reconcile(campaign_id)
    if (
        report is None
        and Campaign.objects.filter(pk=campaign_id, status=CampaignStatus.RUNNING).exists()
    ):
        campaign_nudge(campaign_id, countdown=NUDGE_AGAIN_SECONDS)
    return report


def _reconcile_once(campaign_id: int, *, now: dt.datetime) -> ReconcileReport | None:

    with transaction.atomic():
        campaign = (
            # The campaign row alone: its target (release or trust policy) is a nullable join,
            # which PostgreSQL cannot lock, and the class is shared with other campaigns.
            Campaign.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related(
                "release__manifest", "device_class__vendor", "trust_policy__device_class"
            )
            .filter(pk=campaign_id)
            .first()
        )
        if campaign is None or campaign.status != CampaignStatus.RUNNING:
            return None
        spec = spec_of(campaign)
        report = ReconcileReport(campaign.name, campaign.status, campaign.current_stage)
        release = target_state(campaign, now=now)
        if release.revoked:
            abort_campaign(campaign, actor=ENGINE, reason="release revoked", now=now)
            report.status, report.decision = CampaignStatus.ABORTED, "release revoked"
            return report
        if not release.approved:
            if campaign.trust_policy is not None:
                # A later policy of the class was released (this one would be a rollback), or
                # this one expired: devices would refuse it either way.
                why = (
                    "trust policy expired"
                    if getattr(release, "expired", False)
                    else "trust policy superseded"
                )
                engine_pause(campaign, f"{why}: {release.summary}", now)
                report.status, report.decision = CampaignStatus.PAUSED, why
                return report
            engine_pause(campaign, f"release no longer approved: {release.summary}", now)
            report.status, report.decision = CampaignStatus.PAUSED, "approval lost"
            return report
        if spec.start_at is not None and now < spec.start_at:
            # The schedule gate: before its start a campaign enrols, times out and dispatches
            # nothing (whoever calls the engine: beat, CLI, console or API).
            report.decision = describe_start(spec.start_at)
            return report

        rollouts = Rollout.objects.filter(campaign=campaign)
        report.enrolled = enroll_new_devices(campaign, spec, now=now)
        _progress_commands(rollouts, spec, report, now=now)
        _apply_timeouts(campaign, spec, report, now=now)
        report.succeeded = confirm_successes(rollouts, now=now)
        _mark_unreachable(campaign, spec, report, now=now)

        stage = campaign.stages.select_for_update().get(index=campaign.current_stage)
        decision = _evaluate(campaign, spec, stage, now=now)
        report.decision = decision.reason
        if decision.action == "fail":
            action = spec.stages[stage.index].failure_action
            if action == "abort":
                abort_campaign(
                    campaign, actor=ENGINE, reason=f"stage {stage.name}: {decision.reason}", now=now
                )
                report.status = CampaignStatus.ABORTED
            else:
                engine_pause(campaign, f"stage {stage.name}: {decision.reason}", now)
                report.status = CampaignStatus.PAUSED
            return report
        if decision.action == "advance":
            report.stages_completed.append(stage.name)
            if not _advance(campaign, stage, now=now):
                report.status = CampaignStatus.COMPLETED
                return report
            report.stage = campaign.current_stage
        if not active_stops(campaign):
            report.dispatched, report.skipped = _dispatch(campaign, spec, release, now=now)
        return report


def enroll_new_devices(campaign: Campaign, spec: Any, *, now: dt.datetime) -> int:
    """Devices that registered (or were mapped to the class) after the campaign started and
    match its selector join it: in the stage their bucket falls in, but never one already
    finished (``max(assigned, current)``); excluded ones are recorded as skipped with reasons."""

    newcomers = (
        Device.objects.filter(device_class=campaign.device_class)
        .exclude(rollouts__campaign=campaign)
        .select_related("device_class__vendor")
        .order_by("pk")[:ENROLL_BATCH]
    )
    newcomers = [
        d
        for d in newcomers
        if spec.target.tags_match(frozenset(d.tags or []))
        and spec.target.endpoint_match(d.endpoint)
    ]
    if not newcomers:
        return 0

    resolved = resolve(spec)
    release = target_state(campaign, now=now)
    target = campaign_target(campaign)
    bounds = [
        int(b) for b in campaign.stages.order_by("index").values_list("bucket_upper", flat=True)
    ]
    rows = []
    for device in newcomers:
        refusal = classify_device(
            device,
            resolved=resolved,
            manifest=target.manifest,
            manifest_version=target.manifest_version,
            release=release,
            now=now,
            policy=target.policy,
        )
        value = stages.bucket(campaign.salt, device.endpoint)
        index = stages.stage_for(value, bounds, current=campaign.current_stage)
        row = PlanRow(
            device_id=device.pk,
            bucket=value,
            stage=campaign.current_stage if index is None else index,
        )
        if refusal is not None:
            row.reason, row.detail = refusal.reason, refusal.message
        elif index is None:
            row.reason, row.detail = "not_in_any_stage", "beyond the last stage's share"
        rows.append(row)
    write_rows(campaign, rows)
    return len(rows)


def engine_pause(campaign: Campaign, reason: str, now: dt.datetime) -> None:
    Campaign.objects.filter(pk=campaign.pk, status=CampaignStatus.RUNNING).update(
        status=CampaignStatus.PAUSED, pause_reason=reason, paused_by_engine=True
    )
    campaign.status = CampaignStatus.PAUSED
    audit_record(
        actor=ENGINE,
        action="campaign.pause",
        object_type="campaign",
        object_id=campaign.name,
        details={"reason": reason, "by": "engine"},
        now=now,
    )


def stage_rules(stage: Any) -> stages.StageRules:
    return stages.StageRules(
        success_threshold=stage.success_threshold,
        failure_threshold=stage.failure_threshold,
        min_finished=stage.min_finished,
        soak=stage.soak,
        failure_action=stage.failure_action,
        gate=stage.gate,
    )


def _evaluate(
    campaign: Campaign, spec: Any, stage: CampaignStage, *, now: dt.datetime
) -> stages.StageDecision:

    rules = stage_rules(spec.stages[stage.index])
    tally = stage_tally(campaign, stage.index)
    decision = stages.evaluate_stage(
        rules,
        tally,
        now=now,
        success_since=stage.success_since,
        gate_approved=stage.gate_approved_at is not None,
    )
    if decision.success_reached and stage.success_since is None:
        stage.success_since = now
        stage.save(update_fields=["success_since"])
    status = {"soak": StageStatus.SOAKING, "gate": StageStatus.WAITING_GATE}.get(
        decision.action, StageStatus.RUNNING
    )
    if stage.status != status and decision.action != "advance":
        stage.status = status
        stage.save(update_fields=["status"])
    return decision


def _advance(campaign: Campaign, stage: CampaignStage, *, now: dt.datetime) -> bool:
    """Complete the stage; start the next one. False when the campaign is complete."""
    stage.status, stage.completed_at = StageStatus.COMPLETED, now
    stage.save(update_fields=["status", "completed_at"])
    audit_record(
        actor=ENGINE,
        action="campaign.stage_completed",
        object_type="campaign",
        object_id=campaign.name,
        details={"stage": stage.name, "tally": stage_tally(campaign, stage.index).__dict__},
        now=now,
    )
    following = campaign.stages.filter(index=stage.index + 1).first()
    if following is None:
        Campaign.objects.filter(pk=campaign.pk).update(
            status=CampaignStatus.COMPLETED, finished_at=now
        )
        campaign.status = CampaignStatus.COMPLETED
        audit_record(
            actor=ENGINE,
            action="campaign.complete",
            object_type="campaign",
            object_id=campaign.name,
            now=now,
        )
        return False
    following.status, following.started_at = StageStatus.RUNNING, now
    following.save(update_fields=["status", "started_at"])
    campaign.current_stage = following.index
    campaign.ramp_started_at = now
    campaign.save(update_fields=["current_stage", "ramp_started_at"])
    return True


# Error codes of a command the fleet side did not send because the device was offline then:
# its rollout waits and is dispatched again later.
SEND_WAIT_CODES = frozenset({DeviceOfflineError.code})


def _progress_commands(
    rollouts: Any, spec: Any, report: ReconcileReport, *, now: dt.datetime
) -> None:
    """Queued rollouts whose command was sent become dispatched; a command that failed before
    reaching a gateway fails the rollout; a command lost with a worker is sent again."""

    queued = {
        r.command_id: r
        for r in rollouts.filter(state=RolloutState.QUEUED).select_related("campaign")
        if r.command_id
    }
    if not queued:
        return
    sent: list[int] = []
    for command in DeviceCommand.objects.filter(pk__in=list(queued)):
        rollout = queued[command.pk]
        if command.status == CommandStatus.SENT:
            sent.append(rollout.pk)
        elif command.status == CommandStatus.FAILED and command.error_code in SEND_WAIT_CODES:
            # Not sent: the registry saw the device offline or its registration lapsed (its
            # Updates late under load, or its gateway died). It waits, as a device not reached
            # does, instead of failing (docs/lwm2m.md, "Device information under load").
            if wait_rollout(rollout, detail=command.error[:500], now=now):
                report.retrying += 1
        elif command.status == CommandStatus.FAILED:
            retry = spec.retries.retryable("dispatch_failed", attempt=rollout.attempts)
            if fail_rollout(
                rollout,
                reason="dispatch_failed",
                detail=command.error[:500],
                now=now,
                expected=(RolloutState.QUEUED,),
                spec=spec,
            ):
                if retry:
                    report.retrying += 1
                else:
                    report.dispatch_failed += 1
        elif (
            command.status == CommandStatus.PENDING
            and now - command.created_at > COMMAND_RESEND_AFTER
        ):
            command_id = str(command.pk)
            command_queue(command_id)
            report.resent += 1
    if sent:
        # One statement for the batch (not one per rollout: fewer, shorter lock waits).
        report.sent = Rollout.objects.filter(pk__in=sent, state=RolloutState.QUEUED).update(
            state=RolloutState.DISPATCHED, updated_at=now
        )


def _apply_timeouts(
    campaign: Campaign, spec: Any, report: ReconcileReport, *, now: dt.datetime
) -> None:
    """In-flight rollouts past their deadline count as timed out (or retry), and the device is
    told to drop the download (empty Package URI)."""

    overdue = Rollout.objects.filter(
        campaign=campaign, state__in=IN_FLIGHT_STATES, deadline_at__lt=now
    ).select_related("campaign", "device")
    for rollout in overdue:
        retry = spec.retries.retryable("timed_out", attempt=rollout.attempts)
        timed_out = fail_rollout(
            rollout,
            reason="timed_out",
            detail="no confirmed success before the device timeout",
            now=now,
            spec=spec,
        )
        if timed_out:
            if retry:
                report.retrying += 1
            else:
                report.timed_out += 1
        if timed_out and rollout.device.online:
            device_command_create(endpoint=rollout.device.endpoint, operation="fw_cancel")


def _mark_unreachable(
    campaign: Campaign, spec: Any, report: ReconcileReport, *, now: dt.datetime
) -> None:
    """Offline devices cannot stall a stage: once the stage has run ``unreachable_after`` and a
    pending device has not been seen for that long, it counts as unreachable (reported apart);
    a device still refused for a transient reason (clock skew) by then is skipped.
    A device that comes back online while the campaign runs is pending again, in the stage
    running now."""
    after = spec.timeouts.unreachable_after
    stage = campaign.stages.get(index=campaign.current_stage)
    if after is not None and stage.started_at is not None and now - stage.started_at >= after:
        report.unreachable = (
            Rollout.objects.filter(
                campaign=campaign,
                stage__lte=campaign.current_stage,
                state=RolloutState.PENDING,
                device__online=False,
            )
            .filter(Q(device__last_seen__lt=now - after) | Q(device__last_seen__isnull=True))
            .update(
                state=RolloutState.UNREACHABLE,
                reason="unreachable",
                finished_at=now,
                updated_at=now,
            )
        )
        # Nor can an online device held back by a passing refusal (its clock still off after
        # the same time): it is skipped with that reason, and its stage can finish.
        report.held_skipped = Rollout.objects.filter(
            campaign=campaign,
            stage__lte=campaign.current_stage,
            state=RolloutState.PENDING,
            reason__in=checks.TRANSIENT_REASONS,
        ).update(state=RolloutState.SKIPPED, finished_at=now, updated_at=now)
    report.returned = Rollout.objects.filter(
        campaign=campaign, state=RolloutState.UNREACHABLE, device__online=True
    ).update(
        state=RolloutState.PENDING,
        stage=campaign.current_stage,
        reason="",
        finished_at=None,
        updated_at=now,
    )


def _dispatch(
    campaign: Campaign, spec: Any, release: checks.ReleaseState, *, now: dt.datetime
) -> tuple[int, dict[str, int]]:
    """Dispatch the next batch: a constant number of queries per pass whatever its size. The
    room (in-flight cap, rate limit and ramp, batch size) comes from one aggregate; on
    PostgreSQL the batch is then decided and written set-based (``_dispatch_set``), elsewhere
    row by row (``_dispatch_rows``, the portable path SQLite takes). Both run the same checks,
    once per group of devices that agree on what the checks read (``DispatchChecker``)."""
    on_postgresql = connection.vendor == "postgresql"
    room = _room(campaign, spec, now=now, batch=SET_DISPATCH_BATCH if on_postgresql else None)
    if room <= 0:
        return 0, {}
    if on_postgresql:
        return _dispatch_set(campaign, spec, release, room=room, now=now)
    return _dispatch_rows(campaign, spec, release, room=room, now=now)


def _room(campaign: Campaign, spec: Any, *, now: dt.datetime, batch: int | None) -> int:
    """How many rollouts this pass may dispatch: the batch size (``DISPATCH_BATCH`` unless
    given), less what the stage's in-flight cap and the campaign's rate and ramp leave."""
    stage_spec = spec.stages[campaign.current_stage]
    failed = [RolloutState.FAILED, RolloutState.TIMED_OUT]
    recent = Q(finished_at__gte=now - dt.timedelta(minutes=10))
    counters = Rollout.objects.filter(campaign=campaign).aggregate(
        in_flight=Count("pk", filter=Q(state__in=IN_FLIGHT_STATES)),
        last_minute=Count("pk", filter=Q(dispatched_at__gte=now - dt.timedelta(minutes=1))),
        recent_total=Count("pk", filter=recent & Q(state__in=[RolloutState.SUCCEEDED, *failed])),
        recent_failed=Count("pk", filter=recent & Q(state__in=failed)),
    )
    in_flight, last_minute = counters["in_flight"], counters["last_minute"]
    recent_total, recent_failed = counters["recent_total"], counters["recent_failed"]
    room = DISPATCH_BATCH if batch is None else batch
    if stage_spec.max_in_flight:
        room = min(room, stage_spec.max_in_flight - in_flight)
    share = Fraction(recent_failed, recent_total) if recent_total else Fraction(0)
    if spec.rate is not None:
        exponent = ramp.ramp_exponent(
            spec.rate,
            started_at=campaign.ramp_started_at or now,
            now=now,
            recent_failure_share=share,
            last_exponent=campaign.ramp_exponent,
        )
        if exponent != campaign.ramp_exponent:
            campaign.ramp_exponent = exponent
            campaign.save(update_fields=["ramp_exponent"])
    room = min(
        room,
        ramp.allowed_now(
            spec.rate,
            started_at=campaign.ramp_started_at or now,
            now=now,
            dispatched_last_minute=last_minute,
            recent_failure_share=share,
            last_exponent=campaign.ramp_exponent,
        ),
    )
    return room


def _dispatch_rows(
    campaign: Campaign,
    spec: Any,
    release: checks.ReleaseState,
    *,
    room: int,
    now: dt.datetime,
) -> tuple[int, dict[str, int]]:
    """The portable dispatch (SQLite): one candidate read, one conflict check, at most two
    updates for refusals and one for deferrals, one command insert, one claim."""
    # Narrow rows, not Rollout/Device/DeviceClass/Vendor instances: what the checks read.
    candidates = list(
        Rollout.objects.filter(
            campaign=campaign,
            state=RolloutState.PENDING,
            stage__lte=campaign.current_stage,
            device__online=True,
        )
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .order_by("stage", "bucket")
        .values_list(
            "pk",
            "device_id",
            "device__endpoint",
            "device__device_class_id",
            "device__firmware_version",
            "device__sequence_number",
            "device__security_counter",
            "device__clock_offset_seconds",
            "device__device_time",
            "device__clock_trusted_at",
            "device__tags",
            "device__fw_protocols",
            "device__fw_delivery_method",
            "device__psk",
            "device__report_key",
            "device__installed_image_digest",
            "payload",
            "device__trust_policy_version",
        )[: room * 2]
    )

    busy = in_flight_elsewhere([c[1] for c in candidates], campaign)
    target = campaign_target(campaign)
    manifest = target.manifest
    checker = DispatchChecker(
        manifest,
        target.manifest_version,
        device_class=campaign.device_class,
        release=release,
        now=now,
        max_clock_skew=spec.freshness.max_clock_skew,
        policy=target.policy,
    )
    window_by_tags: dict[tuple[str, ...], bool] = {}
    method_of = delivery.methods_for(campaign.device_class.delivery_method)
    gate = EncryptionGate(manifest, campaign.device_class)
    timeout = spec.timeouts.device
    skipped: dict[str, int] = {}
    refused: list[tuple[int, checks.Refusal]] = []
    deferred: list[int] = []  # rollout ids: busy elsewhere or outside their group's window
    chosen: list[tuple[int, int, str]] = []  # (rollout id, device id, delivery method)
    # Deltas offered (rollout id -> offer), decided once per installed image in a pass; a
    # rollout whose delta failed ("fallback") gets the full image.
    deltas_of: dict[int, DeltaOffer] = {}
    was_delta: list[int] = []  # rollouts whose last dispatch was a delta, chosen again
    offers: dict[str, DeltaOffer] = {}
    device_class = campaign.device_class
    device_clocks: dict[int, str] = {}  # rollout id -> the device's clock state (recorded)
    max_skew = spec.freshness.max_clock_skew
    needs_report = campaign.device_class.delivery in REPORTING_PROFILES
    for (
        pk, device_id, endpoint, class_id, version, sequence, counter, offset, device_time,
        trusted_at, tags, protocols, fw_method, psk, report_key, installed_digest, payload,
        held_policy,
    ) in candidates:  # fmt: skip
        if len(chosen) >= room:
            break
        if device_id in busy:
            deferred.append(pk)
            continue
        if spec.windows:
            tag_key = tuple(tags or ())
            is_open = window_by_tags.get(tag_key)
            if is_open is None:
                is_open = window_by_tags[tag_key] = windows.window_open(
                    spec.windows, now=now, tags=frozenset(tag_key)
                )
            if not is_open:
                deferred.append(pk)
                continue
        refusal = checker.check(
            PlanDevice(
                device_id, endpoint, class_id, None, version, sequence, counter, offset,
                True, None, None, device_time, trusted_at, held_policy,
            )
        )  # fmt: skip
        if refusal is None and needs_report and not report_key:
            refusal = checks.Refusal(
                checks.NO_REPORT_KEY,
                f"{endpoint}: no report key registered (its success is unverifiable)",
            )
        if refusal is None:
            refusal = gate.refusal(device_id, endpoint)
        if refusal is None:
            decision = method_of(protocols, fw_method, psk is not None)
            if decision.method is not None:
                chosen.append((pk, device_id, decision.method))
                if payload == ROLLOUT_PAYLOAD_DELTA:
                    was_delta.append(pk)
                if (
                    manifest is not None
                    and device_class.delta_updates
                    and installed_digest
                    and payload != ROLLOUT_PAYLOAD_FALLBACK
                    and delivery.delta_deliverable(device_class.delivery, decision.method)
                ):
                    offer = offers.get(installed_digest)
                    if offer is None:
                        offer = offers[installed_digest] = delta_offer(
                            device_class=device_class,
                            manifest=target.manifest_row,
                            installed_image_digest=installed_digest,
                            signed_precursors=manifest.precursor_digests,
                        )
                    if offer.delta is not None:
                        deltas_of[pk] = offer
                device_clocks[pk] = clock.clock_state(
                    device_time=device_time, offset_seconds=offset, max_skew=max_skew
                )
                continue
            refusal = checks.Refusal(
                delivery.NO_SUPPORTED_DELIVERY, f"{endpoint}: {decision.reason}"
            )
        refused.append((pk, refusal))
        skipped[refusal.reason] = skipped.get(refusal.reason, 0) + 1
    # Refusals: clock skew is transient (the device may fix its clock), so those stay pending
    # with the reason and are looked at again later; every other refusal skips the rollout.
    # One update each.
    for transient, rows in itertools.groupby(
        sorted(refused, key=lambda r: r[1].reason in checks.TRANSIENT_REASONS),
        key=lambda r: r[1].reason in checks.TRANSIENT_REASONS,
    ):
        batch = list(rows)
        fields: dict[str, Any] = {
            "reason": _per_row(batch, lambda r: r.reason, CharField()),
            "detail": _per_row(batch, lambda r: r.message[:500], TextField()),
            "updated_at": now,
        }
        if transient:
            fields.update(next_attempt_at=now + DEFER_RECHECK)
        else:
            fields.update(state=RolloutState.SKIPPED, finished_at=now)
        Rollout.objects.filter(pk__in=[pk for pk, _ in batch], state=RolloutState.PENDING).update(
            **fields
        )
    if deferred:
        Rollout.objects.filter(pk__in=deferred, state=RolloutState.PENDING).update(
            next_attempt_at=now + DEFER_RECHECK
        )
    if not chosen:
        return 0, skipped
    commands = [
        DeviceCommand(
            device_id=device_id,
            operation="fw_update",
            args=command_args(
                campaign, target, method=method, timeout=timeout, delta=deltas_of.get(pk)
            ),
        )
        for pk, device_id, method in chosen
    ]
    deadline = now + timeout + GATEWAY_TIMEOUT_MARGIN if timeout else None
    try:
        with transaction.atomic():
            _insert_commands(commands)
            # Claim the whole batch with one conditional update (a constant number of queries
            # per batch, not one per device); any row that left PENDING meanwhile voids it.
            claimed = _claim(
                target,
                [
                    (pk, command.pk, device_clocks[pk])
                    for (pk, _, _), command in zip(chosen, commands, strict=True)
                ],
                now=now,
                deadline=deadline,
            )
            if claimed != len(chosen):
                raise IntegrityError("rollouts changed under the dispatcher")
            if deltas_of:
                Rollout.objects.filter(pk__in=list(deltas_of)).update(payload=ROLLOUT_PAYLOAD_DELTA)
            if full_again := [pk for pk in was_delta if pk not in deltas_of]:
                Rollout.objects.filter(pk__in=full_again).update(payload="")
    except IntegrityError:
        # A device became busy in another campaign at the same moment: leave the batch pending
        # and let the next pass retry with fresh data.
        return 0, skipped
    for command in commands:
        command_id = str(command.pk)
        command_queue(command_id)
    return len(chosen), skipped


# Stands for the device's endpoint in a refusal decided once for a group of devices; PostgreSQL
# puts each device's own endpoint in its place when it writes the rollout (no real message holds
# this control character).
_ENDPOINT_MARK = "\x1fendpoint\x1f"

# The candidates of a set-based pass: pending rollouts of online devices in the stages open so
# far, due now, as narrow rows: the rollout, its device, the device's endpoint and clock state
# (``clock.clock_state``), and ``gkey``, the group whose answer it takes (what the checks,
# windows, delivery method, report key, decryption key and delta offer read of its device and
# rollout; ``{extra}`` adds only the fields this pass reads), or the rollout alone when its
# device's clock is off and no operator accepted it (that refusal names its own offset). The
# window is the first ``room * 2`` of them in (stage, bucket) order, numbered, their devices
# share-locked before any rollout is: the lock order of event intake (device, then its
# rollouts), which the commands' foreign key would otherwise reverse (it locks the devices at
# the statement's end).
_CANDIDATES_SQL = """
SELECT r.id, r.device_id, r.stage, r.bucket, d.endpoint, s.clock,
       CASE WHEN s.clock = %(off)s AND d.clock_trusted_at IS NULL THEN 'device ' || r.id::text
            ELSE ROW(d.device_class_id, d.firmware_version, d.sequence_number,
                     d.security_counter, d.fw_protocols, d.fw_delivery_method,
                     p.id IS NOT NULL{extra})::text END AS gkey
FROM campaigns_rollout r
JOIN campaigns_device d ON d.id = r.device_id
LEFT JOIN campaigns_devicepsk p ON p.device_id = d.id
CROSS JOIN LATERAL (
    SELECT CASE WHEN d.device_time IS NOT NULL AND d.device_time < %(clockless_before)s
                    THEN %(clockless)s
                WHEN d.clock_offset_seconds IS NULL THEN %(unknown)s
                WHEN abs(d.clock_offset_seconds) <= %(max_skew)s THEN %(ok)s
                ELSE %(off)s END AS clock
) s
WHERE r.campaign_id = %(campaign)s AND r.state = %(pending)s AND r.stage <= %(stage)s
  AND d.online AND (r.next_attempt_at IS NULL OR r.next_attempt_at <= %(now)s)
"""
_WINDOW_SQL = """
SELECT c.*, row_number() OVER (ORDER BY c.stage, c.bucket, c.id) AS pos
FROM ({candidates} ORDER BY r.stage, r.bucket, r.id LIMIT %(window)s FOR KEY SHARE OF d) c
"""

# One row per group of the window (the same first ``room * 2`` candidates, unlocked, not
# numbered): its key and the fields of one of its devices (for a device checked alone, that
# device's own). Bounded by the window, so a pass over a campaign of a million pending rollouts
# reads what the index gives in order, not every candidate.
_GROUPS_SQL = """
WITH c AS ({candidates} ORDER BY r.stage, r.bucket, r.id LIMIT %(window)s),
reps AS (SELECT gkey, min(id) AS id FROM c GROUP BY gkey)
SELECT reps.gkey, d.endpoint, d.device_class_id, d.firmware_version, d.sequence_number,
       d.security_counter, d.clock_offset_seconds, d.device_time, d.clock_trusted_at, d.tags,
       d.fw_protocols, d.fw_delivery_method, (p.id IS NOT NULL), d.id, d.report_key <> '',
       d.installed_image_digest, r.payload, d.trust_policy_version
FROM reps
JOIN campaigns_rollout r ON r.id = reps.id
JOIN campaigns_device d ON d.id = r.device_id
LEFT JOIN campaigns_devicepsk p ON p.device_id = d.id
"""

# The whole pass in one statement: each rollout of the window takes its group's answer (or is
# deferred when its device is in flight in another campaign), rollouts are taken in order until
# ``room`` have been chosen, the chosen ones get a command (INSERT ... SELECT) and are claimed
# (UPDATE ... FROM, still pending or not at all), the refused and deferred ones are written the
# same way. It returns what it wrote, so the caller sees a claim that lost a row.
_DECIDE_SQL = """
WITH g(gkey, verdict, reason, detail, args, delta, gi) AS (
    SELECT * FROM unnest(%(gkeys)s::text[], %(verdicts)s::text[], %(reasons)s::text[],
                         %(details)s::text[], %(args)s::text[], %(deltas)s::boolean[])
                  WITH ORDINALITY
),
w AS MATERIALIZED ({window}),
v AS (
    SELECT w.id, w.device_id, w.endpoint, w.clock, w.pos, g.gi,
           CASE WHEN EXISTS (
                    SELECT 1 FROM campaigns_rollout o
                    WHERE o.device_id = w.device_id AND o.state IN {in_flight}
                      AND o.campaign_id <> %(campaign)s)
                THEN 'defer' ELSE g.verdict END AS verdict
    FROM w JOIN g ON g.gkey = w.gkey
),
x AS MATERIALIZED (
    SELECT v.*, count(*) FILTER (WHERE v.verdict = 'go')
               OVER (ORDER BY v.pos ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
    FROM v
),
chosen AS MATERIALIZED (SELECT * FROM x WHERE x.before < %(room)s),
cmd AS (
    INSERT INTO campaigns_devicecommand
        (id, device_id, operation, args, status, gateway_id, result, error_code, error, attempts,
         created_at, updated_at)
    SELECT gen_random_uuid(), c.device_id, 'fw_update',
           g.args::jsonb || CASE WHEN %(nonce)s
               THEN jsonb_build_object('report_nonce', left(replace(
                   gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), %(nonce_hex)s))
               ELSE '{{}}'::jsonb END,
           %(command_pending)s, '', '{{}}'::jsonb, '', '', 0, %(stamp)s, %(stamp)s
    FROM chosen c JOIN g ON g.gi = c.gi WHERE c.verdict = 'go'
    RETURNING id, device_id
),
claimed AS (
    UPDATE campaigns_rollout r
    SET state = %(queued)s, manifest_id = %(manifest)s, command_id = cmd.id,
        device_clock = c.clock, dispatched_at = %(now)s, deadline_at = %(deadline)s,
        attempts = r.attempts + 1, next_attempt_at = NULL, reason = '', detail = '',
        report = NULL, report_verdict = '',
        payload = CASE WHEN g.delta THEN %(payload_delta)s
                       WHEN r.payload = %(payload_delta)s THEN '' ELSE r.payload END,
        updated_at = %(now)s
    FROM chosen c JOIN cmd ON cmd.device_id = c.device_id JOIN g ON g.gi = c.gi
    WHERE r.id = c.id AND r.state = %(pending)s
    RETURNING c.pos, cmd.id AS command_id
),
held AS (
    UPDATE campaigns_rollout r
    SET state = CASE WHEN c.verdict = 'skip' THEN %(skipped)s ELSE r.state END,
        reason = CASE WHEN c.verdict = 'defer' THEN r.reason ELSE g.reason END,
        detail = CASE WHEN c.verdict = 'defer' THEN r.detail
                      ELSE left(replace(g.detail, %(mark)s, c.endpoint), 500) END,
        finished_at = CASE WHEN c.verdict = 'skip' THEN %(now)s ELSE r.finished_at END,
        next_attempt_at = CASE WHEN c.verdict = 'skip' THEN r.next_attempt_at
                               ELSE %(recheck)s END,
        updated_at = CASE WHEN c.verdict = 'defer' THEN r.updated_at ELSE %(now)s END
    FROM chosen c JOIN g ON g.gi = c.gi
    WHERE r.id = c.id AND c.verdict <> 'go' AND r.state = %(pending)s
    RETURNING c.verdict, g.reason
)
SELECT (SELECT count(*) FROM chosen WHERE verdict = 'go'),
       (SELECT array_agg(command_id::text ORDER BY pos) FROM claimed),
       (SELECT array_agg(reason) FROM held WHERE verdict <> 'defer')
"""
# The in-flight states as SQL literals, so that the busy check can use the partial unique index
# ``one_in_flight_rollout_per_device`` (a parameter would hide the index's predicate).
_IN_FLIGHT_SQL = "(" + ", ".join(f"'{state.value}'" for state in IN_FLIGHT_STATES) + ")"


def _dispatch_set(
    campaign: Campaign,
    spec: Any,
    release: checks.ReleaseState,
    *,
    room: int,
    now: dt.datetime,
) -> tuple[int, dict[str, int]]:
    """Dispatch set-based (PostgreSQL): one read of the distinct groups of the candidate window
    (``_GROUPS_SQL``), the checks, windows and delivery decision once per group in Python, then
    one statement deciding, inserting the commands and claiming the rollouts (``_DECIDE_SQL``).
    Three queries per pass besides the counters, whatever the batch; the same answers as
    ``_dispatch_rows``. A claim that lost a row (event intake moved it) or a device that became
    busy in another campaign meanwhile voids the whole statement: the batch stays pending and
    the next pass decides it again on fresh data."""
    max_skew = spec.freshness.max_clock_skew
    params: dict[str, Any] = {
        "clockless_before": clock.CLOCKLESS_BEFORE,
        "clockless": clock.CLOCKLESS,
        "unknown": clock.UNKNOWN,
        "ok": clock.OK,
        "off": clock.OFF,
        "max_skew": max_skew.total_seconds(),
        "campaign": campaign.pk,
        "pending": RolloutState.PENDING.value,
        "stage": campaign.current_stage,
        "now": now,
        "window": room * 2,
    }
    device_class = campaign.device_class
    target = campaign_target(campaign)
    manifest = target.manifest
    gate = EncryptionGate(manifest, device_class)
    needs_report = device_class.delivery in REPORTING_PROFILES
    deltas_on = device_class.delta_updates and manifest is not None
    # A field splits the groups only where this pass reads it: tags for the windows, the report
    # key for a reporting class, the decryption key for a release wrapped for device keys, the
    # installed image and the last payload for a class with deltas, the policy version held
    # for a trust-policy campaign.
    extra = ", d.tags" if spec.windows else ""
    if needs_report:
        extra += ", d.report_key <> ''"
    if gate.active:
        extra += ", d.id = ANY(%(decrypting)s::bigint[])"
        params["decrypting"] = sorted(gate.devices)
    if deltas_on:
        extra += ", d.installed_image_digest, r.payload"
    if target.policy is not None:
        extra += ", d.trust_policy_version"
    candidates_sql = _CANDIDATES_SQL.format(extra=extra)
    window_sql = _WINDOW_SQL.format(candidates=candidates_sql)
    with connection.cursor() as cursor:
        cursor.execute(_GROUPS_SQL.format(candidates=candidates_sql), params)
        groups = cursor.fetchall()
    if not groups:
        return 0, {}

    checker = DispatchChecker(
        manifest,
        target.manifest_version,
        device_class=campaign.device_class,
        release=release,
        now=now,
        max_clock_skew=max_skew,
        policy=target.policy,
    )
    method_of = delivery.methods_for(device_class.delivery_method)
    timeout = spec.timeouts.device
    manifest_row = target.manifest_row
    args_of: dict[tuple[str, str | None], str] = {}
    offers: dict[str, DeltaOffer] = {}
    gkeys: list[str] = []
    verdicts: list[str] = []
    reasons: list[str | None] = []
    details: list[str | None] = []
    args: list[str | None] = []
    deltas: list[bool] = []
    for (
        gkey, endpoint, class_id, version, sequence, counter, offset, device_time, trusted_at,
        tags, protocols, fw_method, dtls, device_id, has_report_key, installed_digest, payload,
        held_policy,
    ) in groups:  # fmt: skip
        gkeys.append(gkey)
        deltas.append(False)
        # Django's PostgreSQL backend hands jsonb to a raw cursor as its text.
        tags, protocols = _from_json(tags), _from_json(protocols)
        if spec.windows and not windows.window_open(
            spec.windows, now=now, tags=frozenset(tags or ())
        ):
            verdicts.append("defer")
            reasons.append(None)
            details.append(None)
            args.append(None)
            continue
        # A device checked alone is named by its own endpoint; a group by the mark.
        named = endpoint if gkey.startswith("device ") else _ENDPOINT_MARK
        refusal = checker.check(
            PlanDevice(
                0, named, class_id, None, version, sequence, counter, offset, True, None, None,
                device_time, trusted_at, held_policy,
            )
        )  # fmt: skip
        if refusal is None and needs_report and not has_report_key:
            refusal = checks.Refusal(
                checks.NO_REPORT_KEY,
                f"{named}: no report key registered (its success is unverifiable)",
            )
        if refusal is None:
            refusal = gate.refusal(device_id, named)
        if refusal is None:
            decision = method_of(protocols, fw_method, dtls)
            if decision.method is not None:
                offer = None
                if (
                    deltas_on
                    and manifest is not None
                    and installed_digest
                    and payload != ROLLOUT_PAYLOAD_FALLBACK
                    and delivery.delta_deliverable(device_class.delivery, decision.method)
                ):
                    offer = offers.get(installed_digest)
                    if offer is None:
                        offer = offers[installed_digest] = delta_offer(
                            device_class=device_class,
                            manifest=manifest_row,
                            installed_image_digest=installed_digest,
                            signed_precursors=manifest.precursor_digests,
                        )
                    if offer.delta is None:
                        offer = None
                delta_sha = offer.delta.sha256 if offer is not None and offer.delta else None
                if (decision.method, delta_sha) not in args_of:
                    args_of[decision.method, delta_sha] = json.dumps(
                        command_args(
                            campaign, target, method=decision.method, timeout=timeout, delta=offer
                        )
                    )
                verdicts.append("go")
                reasons.append(None)
                details.append(None)
                args.append(args_of[decision.method, delta_sha])
                deltas[-1] = offer is not None
                continue
            refusal = checks.Refusal(delivery.NO_SUPPORTED_DELIVERY, f"{named}: {decision.reason}")
        verdicts.append("hold" if refusal.reason in checks.TRANSIENT_REASONS else "skip")
        reasons.append(refusal.reason)
        details.append(refusal.message)
        args.append(None)

    params.update(
        gkeys=gkeys,
        verdicts=verdicts,
        reasons=reasons,
        details=details,
        args=args,
        deltas=deltas,
        # Each command its own report nonce, drawn by PostgreSQL (a group shares its arguments).
        nonce=needs_report,
        nonce_hex=2 * REPORT_NONCE_BYTES,
        payload_delta=ROLLOUT_PAYLOAD_DELTA,
        room=room,
        command_pending=CommandStatus.PENDING.value,
        queued=RolloutState.QUEUED.value,
        skipped=RolloutState.SKIPPED.value,
        manifest=target.manifest_id,
        deadline=now + timeout + GATEWAY_TIMEOUT_MARGIN if timeout else None,
        recheck=now + DEFER_RECHECK,
        mark=_ENDPOINT_MARK,
        stamp=timezone.now(),  # the commands' creation, in real time (the resend rule reads it)
    )
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_DECIDE_SQL.format(window=window_sql, in_flight=_IN_FLIGHT_SQL), params)
            chosen, command_ids, refused = cursor.fetchone() or (0, None, None)
            command_ids, refused = list(command_ids or ()), list(refused or ())
            if len(command_ids) != chosen:
                raise IntegrityError("rollouts changed under the dispatcher")
    except IntegrityError:
        # A rollout left pending, or a device became busy in another campaign, at the same
        # moment: the statement is void; the next pass decides the batch again.
        return 0, {}
    skipped: dict[str, int] = {}
    for reason in refused:
        skipped[reason] = skipped.get(reason, 0) + 1
    commands_queue(command_ids)
    return len(command_ids), skipped


def _from_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def fw_update_args(
    manifest: Any,
    *,
    profile: str,
    method: str,
    timeout: dt.timedelta | None,
    delta: DeltaOffer | None = None,
) -> dict[str, Any]:
    """The ``fw_update`` command's arguments (the contract with the gateway, docs/lwm2m.md
    "fw_update command"): what to deliver for this manifest, in which profile, pulled or
    pushed, and the delta offered instead of the full image, if any."""
    args: dict[str, Any] = {
        "manifest_digest": manifest.manifest_digest,
        "delivery": profile,
        "image_sha256": manifest.image_digest,
        "image_size": int(manifest.image_size),
        "method": method,
    }
    if profile in REPORTING_PROFILES:
        # Fresh per attempt (a retry is a new command): the device signs it into its report,
        # so a report of an earlier attempt cannot stand for this one.
        args["report_nonce"] = secrets.token_hex(REPORT_NONCE_BYTES)
    if timeout:
        args["timeout"] = timeout.total_seconds()
    if delta is not None and delta.delta is not None:
        args["delta_sha256"] = delta.delta.sha256
        args["delta_size"] = int(delta.delta.size)
    return args


def _per_row(
    rows: list[tuple[int, checks.Refusal]], value: Callable[[checks.Refusal], str], field: Any
) -> Any:
    """One value per rollout in a single UPDATE: the constant itself when every row shares it,
    else a CASE on the primary key."""
    values = {pk: value(refusal) for pk, refusal in rows}
    distinct = set(values.values())
    if len(distinct) == 1:
        return distinct.pop()
    return Case(*(When(pk=pk, then=Value(v)) for pk, v in values.items()), output_field=field)


def _per_value(claims: list[tuple[int, Any, str]], field: Any) -> Any:
    """The claims' third values in one UPDATE: the constant when all agree, else a CASE."""
    distinct = {state for _, _, state in claims}
    if len(distinct) == 1:
        return distinct.pop()
    return Case(*(When(pk=pk, then=Value(state)) for pk, _, state in claims), output_field=field)


def _claim(
    target: Target,
    claims: list[tuple[int, Any, str]],
    *,
    now: dt.datetime,
    deadline: dt.datetime | None,
) -> int:
    """Pending rollouts -> queued with their command and the device's clock state, in one
    UPDATE; returns the rows claimed. On PostgreSQL the (rollout, command, clock) triples
    travel as three arrays (``unnest``): a CASE of one branch per row costs more to build in
    the ORM than the whole pass's SQL."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE campaigns_rollout AS r SET state = %s, manifest_id = %s,"
                " command_id = v.command_id, device_clock = v.device_clock, dispatched_at = %s,"
                " deadline_at = %s, attempts = r.attempts + 1, next_attempt_at = NULL,"
                " reason = '', detail = '', report = NULL, report_verdict = '', updated_at = %s"
                " FROM unnest(%s::bigint[], %s::uuid[], %s::varchar[])"
                " AS v(id, command_id, device_clock)"
                " WHERE r.id = v.id AND r.state = %s",
                [
                    RolloutState.QUEUED.value,
                    target.manifest_id,
                    now,
                    deadline,
                    now,
                    [pk for pk, _, _ in claims],
                    [command_id for _, command_id, _ in claims],
                    [state for _, _, state in claims],
                    RolloutState.PENDING.value,
                ],
            )
            return int(cursor.rowcount)
    return Rollout.objects.filter(
        pk__in=[pk for pk, _, _ in claims], state=RolloutState.PENDING
    ).update(
        state=RolloutState.QUEUED,
        manifest=target.manifest_row,
        command_id=Case(
            *(When(pk=pk, then=Value(command_id)) for pk, command_id, _ in claims),
            output_field=UUIDField(),
        ),
        device_clock=_per_value(claims, CharField()),
        dispatched_at=now,
        deadline_at=deadline,
        attempts=F("attempts") + 1,
        next_attempt_at=None,
        reason="",
        detail="",
        report=None,
        report_verdict="",
        updated_at=now,
    )


def _insert_commands(commands: list[DeviceCommand]) -> None:
    """``bulk_create`` of fresh commands; on PostgreSQL one COPY (the same columns and values:
    the ORM's per-row parameter binding was the largest cost of a dispatch pass)."""
    if connection.vendor != "postgresql" or not commands:
        DeviceCommand.objects.bulk_create(commands)
        return
    stamp = timezone.now()
    with (
        connection.cursor() as cursor,
        cursor.copy(
            "COPY campaigns_devicecommand (id, device_id, operation, args, status, gateway_id,"
            " result, error_code, error, attempts, created_at, updated_at) FROM STDIN"
        ) as copy,
    ):
        for command in commands:
            command.created_at = command.updated_at = stamp
            copy.write_row(
                (
                    command.pk,
                    command.device_id,
                    command.operation,
                    json.dumps(command.args),
                    command.status,
                    command.gateway_id,
                    json.dumps(command.result),
                    command.error_code,
                    command.error,
                    command.attempts,
                    stamp,
                    stamp,
                )
            )
