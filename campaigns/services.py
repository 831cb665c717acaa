"""Campaign services: apply (idempotent, revisioned), lifecycle actions, gates and emergency stops.
Each runs in one transaction, checks the actor's role, and writes its audit event. Planning is
``campaigns.planning``, the eligibility rules ``campaigns.eligibility``, the per-device rollout
lifecycle ``campaigns.rollouts``; the reconcile loop that moves campaigns forward is
``campaigns.engine``.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from django.db import OperationalError, connection, transaction
from django.utils import timezone

from audit.services import audit_record
from campaigns import checks
from campaigns.eligibility import resolve
from campaigns.errors import (
    CampaignConflictError,
    CampaignStartedError,
    CampaignStateError,
    EmergencyStopError,
    GateError,
    SpecError,
    TrustPolicyRollbackError,
    transient_conflict,
)
from campaigns.models import (
    Campaign,
    CampaignRevision,
    CampaignStage,
    CampaignStatus,
    EmergencyStop,
    Rollout,
    RolloutState,
    StageStatus,
)
from campaigns.planning import campaign_plan, group_members, write_rows
from campaigns.rollouts import cancel_rollouts
from campaigns.selectors import dispatch_begun, start_at_of
from campaigns.spec import CampaignSpec, spec_diff
from manifests.models import DeviceClass, Release, Role
from manifests.services import access, require_role

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Runs of an operator's change (apply, pause, resume, abort) that lost a deadlock or
# serialization conflict to event intake or the engine's pass (``_retrying``).
APPLY_ATTEMPTS = 4


def _retrying(what: str, run: Callable[[], T]) -> T:
    """``run()``; called outside a transaction, a run the database picked as a deadlock's victim
    (or a serialization failure) is run again, a few times with a short growing pause: nothing
    of it was kept, and the operator should not have to ask again. Inside a caller's
    transaction the error is the caller's to handle (that transaction is lost with it)."""
    if connection.in_atomic_block:
        return run()
    for attempt in range(APPLY_ATTEMPTS):
        try:
            return run()
        except OperationalError as exc:
            if not transient_conflict(exc) or attempt == APPLY_ATTEMPTS - 1:
                raise
            logger.warning("%s lost a lock conflict, again: %s", what, exc)
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("not reached: the last attempt returns or raises")


def campaign_apply(
    *, spec: CampaignSpec, actor: Any, source: str = "<api>", now: dt.datetime | None = None
) -> tuple[Campaign, str]:
    """Create the campaign, or a new revision when the spec changed; the same spec twice
    changes nothing. Returns the campaign and "created" | "revised" | "unchanged".

    Called outside a transaction, an apply the database picked as a deadlock's victim (or a
    serialization failure) is run again, a few times with a short growing pause: nothing of it
    was kept, and the operator should not have to apply again. Inside a caller's transaction
    the error is the caller's to handle (that transaction is lost with it)."""
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    return _retrying(
        f"campaign apply {spec.name}",
        lambda: _campaign_apply(spec=spec, actor=actor, source=source, now=now),
    )


def _campaign_apply(
    *, spec: CampaignSpec, actor: Any, source: str, now: dt.datetime
) -> tuple[Campaign, str]:
    digest = spec.digest()
    document = spec.to_document()
    existing = Campaign.objects.filter(name=spec.name).first()
    if existing is not None and existing.spec_digest == digest:
        return existing, "unchanged"
    if existing is None:
        return _campaign_create(
            spec, document, digest, actor=actor, source=source, now=now
        ), "created"
    return _campaign_revise(
        existing, spec, document, digest, actor=actor, source=source, now=now
    ), "revised"


def _ramp_start(start_at: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    """When a stage's ramp (and its unreachable clock) starts: now, or a later ``start_at``."""
    return max(now, start_at) if start_at else now


def _campaign_create(
    spec: CampaignSpec,
    document: dict[str, Any],
    digest: str,
    *,
    actor: Any,
    source: str,
    now: dt.datetime,
) -> Campaign:
    salt = secrets.token_hex(8)
    members = None
    if spec.target.group is not None:
        # Frozen here: the campaign's population never drifts with the group afterwards.
        members = group_members(spec.target.group, source=source)
        if not members:
            raise SpecError(
                source=source,
                path="target.group",
                reason=f"device group {spec.target.group!r} has no devices",
            )
    plan = campaign_plan(spec=spec, source=source, now=now, salt=salt, members=members)
    if plan.release_refusal is not None:
        refusal = plan.release_refusal
        if refusal.reason == checks.TRUST_POLICY_SUPERSEDED:
            raise TrustPolicyRollbackError(
                f"{source}: trust_policy: {plan.target} cannot be rolled out: {refusal.message}"
            )
        path = "release" if spec.trust_policy is None else "trust_policy"
        raise CampaignStateError(
            f"{source}: {path}: {plan.target} cannot be rolled out now "
            f"({refusal.reason}: {refusal.message})"
        )
    resolved = resolve(spec, source=source)
    # A scheduled campaign's first stage (its ramp, its unreachable clock) starts at start_at.
    started = _ramp_start(spec.start_at, now)
    with transaction.atomic():
        if Campaign.objects.select_for_update().filter(name=spec.name).exists():
            raise CampaignConflictError(f"campaign {spec.name} was created concurrently")
        campaign = Campaign.objects.create(
            name=spec.name,
            release=resolved.release,
            trust_policy=resolved.trust_policy,
            device_class=resolved.device_class,
            spec=document,
            spec_digest=digest,
            salt=salt,
            created_by=actor,
            ramp_started_at=started,
            target_group=spec.target.group or "",
            target_members=None if members is None else sorted(members),
        )
        CampaignRevision.objects.create(
            campaign=campaign,
            revision=1,
            spec=document,
            spec_digest=digest,
            source=source,
            created_by=actor,
        )
        CampaignStage.objects.bulk_create(
            CampaignStage(
                campaign=campaign,
                index=i,
                name=s.name,
                bucket_upper=Decimal(plan.bounds[i]),
                planned_devices=plan.stage_counts[i],
                status=StageStatus.RUNNING if i == 0 else StageStatus.PENDING,
                started_at=started if i == 0 else None,
            )
            for i, s in enumerate(spec.stages)
        )
        write_rows(campaign, plan.rows, fresh=True)
        audit_record(
            actor=actor,
            action="campaign.create",
            object_type="campaign",
            object_id=campaign.name,
            details={
                "source": source,
                "spec_digest": digest,
                **plan.as_dict(),
                **(
                    {"group": spec.target.group, "group_members": len(members)}
                    if members is not None
                    else {}
                ),
            },
            now=now,
        )
    return campaign


def _campaign_revise(
    campaign: Campaign,
    spec: CampaignSpec,
    document: dict[str, Any],
    digest: str,
    *,
    actor: Any,
    source: str,
    now: dt.datetime,
) -> Campaign:
    resolved = resolve(spec, source=source)
    if (resolved.trust_policy is None) != (campaign.trust_policy_id is None):
        raise SpecError(
            source=source,
            path="trust_policy" if campaign.trust_policy_id is not None else "release",
            reason="a campaign's kind (a release or a trust policy) cannot change; "
            "start a new campaign",
        )
    if resolved.device_class.pk != campaign.device_class_id:
        raise SpecError(
            source=source,
            path="target.device_class",
            reason="a campaign's device class cannot change; start a new campaign",
        )
    if (spec.target.group or "") != campaign.target_group:
        raise SpecError(
            source=source,
            path="target.group",
            reason="a campaign's group and its members are fixed when it is created; "
            "start a new campaign",
        )
    members = None if campaign.target_members is None else frozenset(campaign.target_members)
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status in (CampaignStatus.COMPLETED, CampaignStatus.ABORTED):
            raise CampaignStateError(f"campaign {locked.name} is {locked.status}; start a new one")
        old_start = start_at_of(locked)
        if spec.start_at != old_start:
            if dispatch_begun(locked, now=now):
                raise CampaignStartedError(
                    f"{source}: start_at: campaign {locked.name} has begun dispatching "
                    f"(start {_start_text(old_start, locked)}); its start time cannot change"
                )
            # Not begun: the first stage now starts at the new time (or at once).
            started = _ramp_start(spec.start_at, now)
            locked.ramp_started_at = started
            locked.save(update_fields=["ramp_started_at"])
            locked.stages.filter(index=0).update(started_at=started)
        old_stages = list(locked.stages.order_by("index"))
        if len(spec.stages) < locked.current_stage + 1:
            raise SpecError(
                source=source,
                path="stages",
                reason=f"the campaign is at stage {locked.current_stage}; "
                "stages already started cannot be removed",
            )
        diff = spec_diff(locked.spec, document)
        locked.spec, locked.spec_digest, locked.revision = document, digest, locked.revision + 1
        locked.release = resolved.release  # returning devices get the newest approved release
        locked.trust_policy = resolved.trust_policy
        locked.save(update_fields=["spec", "spec_digest", "revision", "release", "trust_policy"])
        CampaignRevision.objects.create(
            campaign=locked,
            revision=locked.revision,
            spec=document,
            spec_digest=digest,
            source=source,
            diff=diff,
            created_by=actor,
        )
        # Started stages keep their bucket bounds (no reshuffle); later ones are re-cut.
        started = [int(s.bucket_upper) for s in old_stages[: locked.current_stage + 1]]
        plan = campaign_plan(
            spec=spec,
            source=source,
            now=now,
            salt=locked.salt,
            current_stage=locked.current_stage,
            members=members,
        )
        bounds = started + plan.bounds[len(started) :]
        bounds = [max(b, bounds[i - 1]) if i else b for i, b in enumerate(bounds)]
        plan = campaign_plan(
            spec=spec,
            source=source,
            now=now,
            salt=locked.salt,
            bounds=bounds,
            current_stage=locked.current_stage,
            members=members,
        )
        locked.stages.filter(index__gte=len(spec.stages)).delete()
        for i, stage_spec in enumerate(spec.stages):
            CampaignStage.objects.update_or_create(
                campaign=locked,
                index=i,
                defaults={
                    "name": stage_spec.name,
                    "bucket_upper": Decimal(bounds[i]),
                    "planned_devices": plan.stage_counts[i],
                },
            )
        write_rows(locked, plan.rows)
        audit_record(
            actor=actor,
            action="campaign.revise",
            object_type="campaign",
            object_id=locked.name,
            details={"revision": locked.revision, "source": source, "diff": diff},
            now=now,
        )
    return locked


def _start_text(start_at: dt.datetime | None, campaign: Campaign) -> str:
    if start_at is None:
        return f"{campaign.created_at:%Y-%m-%d %H:%M} UTC, at creation"
    return f"{start_at:%Y-%m-%d %H:%M} UTC"


def _transition(
    campaign: Campaign,
    *,
    allowed: tuple[str, ...],
    to: str,
    actor: Any,
    action: str,
    reason: str = "",
    now: dt.datetime,
    engine: bool = False,
) -> Campaign:
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status not in allowed:
            raise CampaignStateError(f"campaign {locked.name} is {locked.status}; cannot {action}")
        locked.status = to
        locked.pause_reason = reason if to == CampaignStatus.PAUSED else ""
        locked.paused_by_engine = engine and to == CampaignStatus.PAUSED
        if to in (CampaignStatus.COMPLETED, CampaignStatus.ABORTED):
            locked.finished_at = now
        if to == CampaignStatus.RUNNING:
            # A campaign resumed before its scheduled start ramps from that start.
            start_at = start_at_of(locked)
            locked.ramp_started_at = _ramp_start(start_at, now)
        locked.save()
        audit_record(
            actor=actor,
            action=f"campaign.{action}",
            object_type="campaign",
            object_id=locked.name,
            details={"reason": reason} if reason else {},
            now=now,
        )
        return locked


def campaign_pause(
    *, campaign: Campaign, actor: Any, reason: str = "", now: dt.datetime | None = None
) -> Campaign:
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    return _retrying(
        f"campaign pause {campaign.name}",
        lambda: _transition(
            campaign,
            allowed=(CampaignStatus.RUNNING,),
            to=CampaignStatus.PAUSED,
            actor=actor,
            action="pause",
            reason=reason or "paused by operator",
            now=now,
        ),
    )


def campaign_resume(
    *, campaign: Campaign, actor: Any, retry_failed: bool = True, now: dt.datetime | None = None
) -> Campaign:
    """Resume a paused campaign. By default the devices that failed or timed out in the stages
    run so far are tried again: a pause on failures is followed by fixing their cause, and
    the stage's thresholds are then judged on the new attempts."""
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    return _retrying(
        f"campaign resume {campaign.name}",
        lambda: _resume(campaign, actor=actor, retry_failed=retry_failed, now=now),
    )


def _resume(campaign: Campaign, *, actor: Any, retry_failed: bool, now: dt.datetime) -> Campaign:
    with transaction.atomic():
        resumed = _transition(
            campaign,
            allowed=(CampaignStatus.PAUSED,),
            to=CampaignStatus.RUNNING,
            actor=actor,
            action="resume",
            now=now,
        )
        if retry_failed:
            requeued = Rollout.objects.filter(
                campaign=resumed,
                stage__lte=resumed.current_stage,
                state__in=[RolloutState.FAILED, RolloutState.TIMED_OUT],
            ).update(
                state=RolloutState.PENDING,
                next_attempt_at=None,
                finished_at=None,
                command_id=None,
                updated_at=now,
            )
            resumed.stages.filter(index=resumed.current_stage).update(success_since=None)
            if requeued:
                audit_record(
                    actor=actor,
                    action="campaign.retry_failed",
                    object_type="campaign",
                    object_id=resumed.name,
                    details={"requeued": requeued},
                    now=now,
                )
    return resumed


def campaign_abort(
    *, campaign: Campaign, actor: Any, reason: str, now: dt.datetime | None = None
) -> Campaign:
    """Stop for good: pending devices are cancelled and in-flight downloads are cancelled on
    the devices (empty Package URI)."""
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    return _retrying(
        f"campaign abort {campaign.name}",
        lambda: abort_campaign(campaign, actor=actor, reason=reason, now=now),
    )


def abort_campaign(campaign: Campaign, *, actor: Any, reason: str, now: dt.datetime) -> Campaign:
    """The abort itself, also used by the engine when a failure threshold says abort."""

    with transaction.atomic():
        aborted = _transition(
            campaign,
            allowed=(CampaignStatus.RUNNING, CampaignStatus.PAUSED),
            to=CampaignStatus.ABORTED,
            actor=actor,
            action="abort",
            reason=reason,
            now=now,
        )
        cancel_rollouts(
            Rollout.objects.filter(campaign=aborted), reason="campaign_aborted", now=now
        )
    return aborted


def campaign_promote(*, campaign: Campaign, actor: Any, now: dt.datetime | None = None) -> Campaign:
    """Approve the current stage's gate (the actor must hold the gate's role), or, for a stage
    without a gate, advance now regardless of soak (an operator decision, audited)."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status not in (CampaignStatus.RUNNING, CampaignStatus.PAUSED):
            raise CampaignStateError(f"campaign {locked.name} is {locked.status}")
        stage = locked.stages.select_for_update().get(index=locked.current_stage)
        gate = locked.spec["stages"][stage.index].get("gate")
        if gate:
            try:
                require_role(actor, gate, Role.ADMIN, at=now)
            except Exception as exc:
                raise GateError(
                    f"the gate of stage {stage.name} needs a {gate} approval: {exc}"
                ) from exc
        else:
            require_role(actor, *access.OPERATORS, at=now)
        stage.gate_approved_by, stage.gate_approved_at = actor, now
        if stage.success_since is None:
            stage.success_since = now - dt.timedelta(days=3650)  # promotion skips the soak
        stage.save()
        audit_record(
            actor=actor,
            action="campaign.promote",
            object_type="campaign",
            object_id=locked.name,
            details={"stage": stage.name, "gate": gate},
            now=now,
        )
    return locked


def emergency_stop(
    *,
    actor: Any,
    reason: str,
    release: Release | None = None,
    device_class: DeviceClass | None = None,
    now: dt.datetime | None = None,
) -> EmergencyStop:
    """Halt dispatching in scope at once and cancel queued and in-flight downloads."""
    now = now or timezone.now()
    if not reason.strip():
        raise EmergencyStopError("an emergency stop needs a reason")
    require_role(actor, *access.STOPPERS, at=now)
    scope = "release" if release else "device_class" if device_class else "global"
    with transaction.atomic():
        stop = EmergencyStop.objects.create(
            scope=scope,
            release=release,
            device_class=device_class,
            reason=reason,
            created_by=actor,
            created_at=now,
        )
        rollouts = Rollout.objects.filter(
            campaign__status__in=[CampaignStatus.RUNNING, CampaignStatus.PAUSED]
        )
        if release is not None:
            rollouts = rollouts.filter(campaign__release=release)
        if device_class is not None:
            rollouts = rollouts.filter(campaign__device_class=device_class)

        cancelled = cancel_rollouts(rollouts, reason="emergency_stop", now=now, requeue=True)
        audit_record(
            actor=actor,
            action="emergency.stop",
            object_type="emergency_stop",
            object_id=stop.pk,
            details={
                "scope": scope,
                "release": release.name if release else None,
                "device_class": str(device_class) if device_class else None,
                "reason": reason,
                "cancelled": cancelled,
            },
            now=now,
        )
    return stop


def emergency_lift(
    *, stop: EmergencyStop, actor: Any, now: dt.datetime | None = None
) -> EmergencyStop:
    now = now or timezone.now()
    require_role(actor, *access.LIFTERS, at=now)
    with transaction.atomic():
        locked = EmergencyStop.objects.select_for_update().get(pk=stop.pk)
        if locked.lifted_at is not None:
            raise EmergencyStopError(f"emergency stop {locked.pk} is already lifted")
        locked.lifted_by, locked.lifted_at = actor, now
        locked.save()
        audit_record(
            actor=actor,
            action="emergency.lift",
            object_type="emergency_stop",
            object_id=locked.pk,
            details={"scope": locked.scope},
            now=now,
        )
    return locked
