"""Campaign services: plan, apply (idempotent, revisioned), lifecycle actions, gates and
emergency stops. Each runs in one transaction, checks the actor's role, and writes its audit
event; the reconcile loop that moves campaigns forward lives in ``campaigns.engine``.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.services import audit_record
from campaigns import checks, stages
from campaigns.errors import (
    CampaignConflictError,
    CampaignStateError,
    EmergencyStopError,
    GateError,
    SpecError,
    UnknownReleaseError,
    UnknownTargetError,
)
from campaigns.models import (
    IN_FLIGHT_STATES,
    Campaign,
    CampaignRevision,
    CampaignStage,
    CampaignStatus,
    Device,
    EmergencyStop,
    Rollout,
    RolloutState,
    StageStatus,
)
from campaigns.spec import CampaignSpec, spec_diff
from manifests.models import DeviceClass, Release, ReleaseKind, ReleaseStatus, Role
from manifests.services import release_evaluate, require_role
from manifests.versions import VersionError, parse_version
from workers.lwm2m import device_checks as dc

OPERATOR_ROLES = (Role.FLEET_OPERATOR, Role.ADMIN)
STOP_ROLES = (Role.FLEET_OPERATOR, Role.SECURITY, Role.ADMIN)
LIFT_ROLES = (Role.SECURITY, Role.ADMIN)
# Rows written per INSERT when persisting a plan: large enough to amortise round trips, small
# enough to keep one statement's memory and lock time modest.
PLAN_WRITE_BATCH = 5000
# Devices read per query while planning (server-side iteration, constant memory per chunk).
PLAN_READ_CHUNK = 5000

EXCLUDED_BY_SPEC = "excluded_by_spec"
OFFLINE_TOO_LONG = "offline_too_long"
VERSION_CONSTRAINT = "version_constraint"
NOT_IN_ANY_STAGE = "not_in_any_stage"


# --- resolving a spec -------------------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    spec: CampaignSpec
    release: Release
    device_class: DeviceClass


def resolve(spec: CampaignSpec, *, source: str = "<api>") -> Resolved:
    """Look the spec's names up; unknown ones are refused with the field path."""
    vendor_domain, _, class_name = spec.target.device_class.partition("/")
    device_class = (
        DeviceClass.objects.select_related("vendor")
        .filter(vendor__domain=vendor_domain.lower(), name=class_name)
        .first()
    )
    if device_class is None:
        raise UnknownTargetError(
            f"{source}: target.device_class: no device class {spec.target.device_class!r}"
        )
    release = (
        Release.objects.select_related("manifest__device_class__vendor", "manifest__image")
        .filter(name=spec.release)
        .first()
    )
    if release is None:
        raise UnknownReleaseError(f"{source}: release: no release named {spec.release!r}")
    if release.manifest.device_class_id != device_class.pk:
        raise SpecError(
            source=source,
            path="release",
            reason=f"release {release.name} is for {release.manifest.device_class}, "
            f"not {device_class}",
        )
    return Resolved(spec=spec, release=release, device_class=device_class)


# --- planning ---------------------------------------------------------------------------------
@dataclass
class PlanRow:
    device_id: int
    bucket: int
    stage: int | None
    reason: str = ""
    detail: str = ""


@dataclass
class Plan:
    campaign: str
    release: str
    device_class: str
    release_refusal: checks.Refusal | None
    stage_names: list[str]
    stage_counts: list[int]
    bounds: list[int]
    excluded: Counter[str] = field(default_factory=Counter)
    rows: list[PlanRow] = field(default_factory=list)

    @property
    def cohort(self) -> int:
        return sum(self.stage_counts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "release": self.release,
            "device_class": self.device_class,
            "release_blocked": (
                {"reason": self.release_refusal.reason, "detail": self.release_refusal.message}
                if self.release_refusal
                else None
            ),
            "cohort": self.cohort,
            "stages": [
                {"name": name, "devices": count}
                for name, count in zip(self.stage_names, self.stage_counts, strict=True)
            ],
            "excluded": dict(sorted(self.excluded.items())),
        }


def release_state(release: Release, *, now: dt.datetime) -> checks.ReleaseState:
    """The release as dispatch sees it now: approval re-evaluated from its signatures."""
    if release.status == ReleaseStatus.REVOKED:
        return checks.ReleaseState(True, False, "revoked", release.kind == ReleaseKind.ROLLBACK)
    verdict = release_evaluate(release, now=now)
    approved = verdict.approved and release.status != ReleaseStatus.DRAFT
    return checks.ReleaseState(
        False, approved, verdict.summary(), release.kind == ReleaseKind.ROLLBACK
    )


def manifest_facts(release: Release) -> tuple[dc.ManifestFacts, tuple[int, int, int, int]]:
    from manifests import suit

    env = suit.decode_envelope(release.manifest.envelope_bytes)
    return dc.facts_from_manifest(env.manifest), parse_version(release.manifest.version)


def device_facts(device: Device, device_class: DeviceClass | None) -> checks.DeviceFacts:
    identity = None
    if device.device_class_id is not None and device_class is not None:
        cls = device_class if device.device_class_id == device_class.pk else device.device_class
        identity = dc.DeviceIdentity(
            vendor_id=cls.vendor.uuid,
            class_id=cls.uuid,
            component_id=cls.component_id_bytes,
            payload_format=cls.payload_format,
        )
    try:
        installed_version = (
            parse_version(device.firmware_version) if device.firmware_version else None
        )
    except VersionError:
        installed_version = None
    return checks.DeviceFacts(
        endpoint=device.endpoint,
        identity=identity,
        installed=dc.InstalledFirmware(
            version=device.firmware_version,
            sequence_number=device.sequence_number or 0,
            security_counter=device.security_counter,
        ),
        installed_version=installed_version,
        clock_offset_seconds=device.clock_offset_seconds,
    )


def _candidates(spec: CampaignSpec, device_class: DeviceClass) -> Any:
    """Devices the selector reaches: the vendor's devices (or unmapped ones) narrowed by the
    include list and tags; those of another class stay in so they are reported as mismatches."""
    target = spec.target
    devices = Device.objects.filter(
        Q(vendor=device_class.vendor) | Q(vendor__isnull=True) | Q(device_class=device_class)
    )
    if target.include:
        devices = devices.filter(endpoint__in=list(target.include))
    return devices.select_related("device_class__vendor").order_by("pk")


def classify_device(
    device: Device,
    *,
    resolved: Resolved,
    manifest: dc.ManifestFacts,
    manifest_version: tuple[int, int, int, int],
    release: checks.ReleaseState,
    now: dt.datetime,
) -> checks.Refusal | None:
    """Why a selected device is excluded from the campaign now, or None if it is eligible."""
    spec, device_class = resolved.spec, resolved.device_class
    if device.endpoint in set(spec.target.exclude):
        return checks.Refusal(EXCLUDED_BY_SPEC, "listed under target.exclude")
    if device.device_class_id != device_class.pk:
        return checks.Refusal(
            checks.CLASS_MISMATCH,
            f"{device.endpoint} is {device.device_class or 'not mapped to a class'}",
        )
    if spec.target.offline_max is not None and not device.online:
        last = device.last_seen or device.created_at
        if last is None or now - last > spec.target.offline_max:
            return checks.Refusal(OFFLINE_TOO_LONG, f"not seen since {last}")
    facts = device_facts(device, device_class)
    if spec.target.version is not None and (
        facts.installed_version is None or not spec.target.version.matches(facts.installed_version)
    ):
        return checks.Refusal(
            VERSION_CONSTRAINT, f"installed {device.firmware_version or 'unknown'} is outside it"
        )
    return checks.check_dispatch(
        manifest,
        manifest_version,
        device=facts,
        release=release,
        now=now,
        max_clock_skew=spec.freshness.max_clock_skew,
    )


def _iter_devices(queryset: Any) -> Iterator[Device]:
    return queryset.iterator(chunk_size=PLAN_READ_CHUNK)


def campaign_plan(
    *,
    spec: CampaignSpec,
    source: str = "<api>",
    now: dt.datetime | None = None,
    salt: str | None = None,
    bounds: list[int] | None = None,
    current_stage: int = 0,
) -> Plan:
    """Validate and plan without writing anything: cohort per stage and exclusions by reason."""
    now = now or timezone.now()
    resolved = resolve(spec, source=source)
    release = release_state(resolved.release, now=now)
    manifest, manifest_version = manifest_facts(resolved.release)
    release_refusal = None
    if release.revoked:
        release_refusal = checks.Refusal(checks.RELEASE_REVOKED, "release revoked")
    elif not release.approved:
        release_refusal = checks.Refusal(checks.NOT_APPROVED, release.approval_summary)
    elif manifest.use_before is not None and now >= manifest.use_before:
        release_refusal = checks.Refusal(checks.EXPIRED, f"expired {manifest.use_before}")
    plan = Plan(
        campaign=spec.name,
        release=resolved.release.name,
        device_class=str(resolved.device_class),
        release_refusal=release_refusal,
        stage_names=[s.name for s in spec.stages],
        stage_counts=[0] * len(spec.stages),
        bounds=[],
    )
    salt = salt or ""
    eligible: list[PlanRow] = []
    for device in _iter_devices(_candidates(spec, resolved.device_class)):
        if not spec.target.tags_match(frozenset(device.tags or [])):
            continue
        refusal = release_refusal or classify_device(
            device,
            resolved=resolved,
            manifest=manifest,
            manifest_version=manifest_version,
            release=release,
            now=now,
        )
        row = PlanRow(device_id=device.pk, bucket=stages.bucket(salt, device.endpoint), stage=None)
        if refusal is not None:
            row.reason, row.detail = refusal.reason, refusal.message
            plan.excluded[refusal.reason] += 1
        else:
            eligible.append(row)
        plan.rows.append(row)
    plan.bounds = bounds or stages.stage_bounds(
        [stage_size(s) for s in spec.stages], [r.bucket for r in eligible]
    )
    last = len(spec.stages) - 1
    for row in plan.rows:
        if row.reason:  # excluded: reported under the stage its bucket falls in
            row.stage = stages.stage_for(row.bucket, plan.bounds, current=current_stage)
            row.stage = last if row.stage is None else row.stage
    for row in eligible:
        index = stages.stage_for(row.bucket, plan.bounds, current=current_stage)
        if index is None:
            row.reason, row.detail = NOT_IN_ANY_STAGE, "beyond the last stage's share"
            plan.excluded[NOT_IN_ANY_STAGE] += 1
        else:
            row.stage = index
            plan.stage_counts[index] += 1
    return plan


def stage_size(stage: Any) -> stages.StageSize:
    kind, value = stage.size
    return stages.StageSize(kind, value)


def stage_rules(stage: Any) -> stages.StageRules:
    return stages.StageRules(
        success_threshold=stage.success_threshold,
        failure_threshold=stage.failure_threshold,
        min_finished=stage.min_finished,
        soak=stage.soak,
        failure_action=stage.failure_action,
        gate=stage.gate,
    )


# --- apply ------------------------------------------------------------------------------------
def campaign_apply(
    *, spec: CampaignSpec, actor: Any, source: str = "<api>", now: dt.datetime | None = None
) -> tuple[Campaign, str]:
    """Create the campaign, or a new revision when the spec changed; the same spec twice
    changes nothing. Returns the campaign and "created" | "revised" | "unchanged"."""
    now = now or timezone.now()
    require_role(actor, *OPERATOR_ROLES, at=now)
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
    plan = campaign_plan(spec=spec, source=source, now=now, salt=salt)
    if plan.release_refusal is not None:
        raise CampaignStateError(
            f"{source}: release: {plan.release} cannot be rolled out now "
            f"({plan.release_refusal.reason}: {plan.release_refusal.message})"
        )
    resolved = resolve(spec, source=source)
    with transaction.atomic():
        if Campaign.objects.select_for_update().filter(name=spec.name).exists():
            raise CampaignConflictError(f"campaign {spec.name} was created concurrently")
        campaign = Campaign.objects.create(
            name=spec.name,
            release=resolved.release,
            device_class=resolved.device_class,
            spec=document,
            spec_digest=digest,
            salt=salt,
            created_by=actor,
            ramp_started_at=now,
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
                started_at=now if i == 0 else None,
            )
            for i, s in enumerate(spec.stages)
        )
        _write_rows(campaign, plan.rows)
        audit_record(
            actor=actor,
            action="campaign.create",
            object_type="campaign",
            object_id=campaign.name,
            details={"source": source, "spec_digest": digest, **plan.as_dict()},
            now=now,
        )
    return campaign


def _write_rows(campaign: Campaign, rows: list[PlanRow]) -> None:
    existing = set(Rollout.objects.filter(campaign=campaign).values_list("device_id", flat=True))
    batch: list[Rollout] = []
    for row in rows:
        if row.device_id in existing:
            continue
        skipped = bool(row.reason)
        batch.append(
            Rollout(
                campaign=campaign,
                device_id=row.device_id,
                stage=row.stage or 0,
                bucket=Decimal(row.bucket),
                state=RolloutState.SKIPPED if skipped else RolloutState.PENDING,
                reason=row.reason,
                detail=row.detail[:500],
            )
        )
        if len(batch) >= PLAN_WRITE_BATCH:
            Rollout.objects.bulk_create(batch)
            batch.clear()
    if batch:
        Rollout.objects.bulk_create(batch)


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
    if resolved.device_class.pk != campaign.device_class_id:
        raise SpecError(
            source=source,
            path="target.device_class",
            reason="a campaign's device class cannot change; start a new campaign",
        )
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status in (CampaignStatus.COMPLETED, CampaignStatus.ABORTED):
            raise CampaignStateError(f"campaign {locked.name} is {locked.status}; start a new one")
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
        locked.save(update_fields=["spec", "spec_digest", "revision", "release"])
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
            spec=spec, source=source, now=now, salt=locked.salt, current_stage=locked.current_stage
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
        _write_rows(locked, plan.rows)
        audit_record(
            actor=actor,
            action="campaign.revise",
            object_type="campaign",
            object_id=locked.name,
            details={"revision": locked.revision, "source": source, "diff": diff},
            now=now,
        )
    return locked


# --- lifecycle --------------------------------------------------------------------------------
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
            locked.ramp_started_at = now
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
    require_role(actor, *OPERATOR_ROLES, at=now)
    return _transition(
        campaign,
        allowed=(CampaignStatus.RUNNING,),
        to=CampaignStatus.PAUSED,
        actor=actor,
        action="pause",
        reason=reason or "paused by operator",
        now=now,
    )


def campaign_resume(
    *, campaign: Campaign, actor: Any, retry_failed: bool = True, now: dt.datetime | None = None
) -> Campaign:
    """Resume a paused campaign. By default the devices that failed or timed out in the stages
    run so far are tried again: a pause on failures is followed by fixing their cause, and
    the stage's thresholds are then judged on the new attempts."""
    now = now or timezone.now()
    require_role(actor, *OPERATOR_ROLES, at=now)
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
                state=RolloutState.PENDING, next_attempt_at=None, finished_at=None, command_id=None
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
    require_role(actor, *OPERATOR_ROLES, at=now)
    return abort_campaign(campaign, actor=actor, reason=reason, now=now)


def abort_campaign(campaign: Campaign, *, actor: Any, reason: str, now: dt.datetime) -> Campaign:
    """The abort itself, also used by the engine when a failure threshold says abort."""
    from campaigns.engine import cancel_rollouts

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
            require_role(actor, *OPERATOR_ROLES, at=now)
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


# --- emergency stop ---------------------------------------------------------------------------
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
    require_role(actor, *STOP_ROLES, at=now)
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
        from campaigns.engine import cancel_rollouts

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
    require_role(actor, *LIFT_ROLES, at=now)
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


def active_stops(campaign: Campaign) -> list[EmergencyStop]:
    return list(
        EmergencyStop.objects.filter(lifted_at__isnull=True).filter(
            Q(scope="global")
            | Q(scope="release", release_id=campaign.release_id)
            | Q(scope="device_class", device_class_id=campaign.device_class_id)
        )
    )


def in_flight_elsewhere(device_ids: list[int], campaign: Campaign) -> set[int]:
    return set(
        Rollout.objects.filter(device_id__in=device_ids, state__in=IN_FLIGHT_STATES)
        .exclude(campaign=campaign)
        .values_list("device_id", flat=True)
    )
