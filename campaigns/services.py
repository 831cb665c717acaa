"""Campaign services: plan, apply (idempotent, revisioned), lifecycle actions, gates and
emergency stops. Each runs in one transaction, checks the actor's role, and writes its audit
event; the reconcile loop that moves campaigns forward lives in ``campaigns.engine``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import itertools
import secrets
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import DateTimeField, JSONField, Q, Value
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
# Rows written per INSERT (or per COPY write) when persisting a plan: large enough to amortise
# round trips, small enough to keep one statement's memory and lock time modest.
PLAN_WRITE_BATCH = 5000
# Devices read per query while planning (server-side iteration, constant memory per chunk).
PLAN_READ_CHUNK = 20000

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


def _monotone(bounds: list[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(bounds))


def _stage_finder(bounds: list[int], current: int) -> Callable[[int], int | None]:
    """``stages.stage_for`` with these bounds, by bisection when they are non-decreasing (as
    every cut ``stage_bounds`` makes, and the revise path's, are): the first bound above the
    bucket is its stage."""
    if not _monotone(bounds):
        return lambda value: stages.stage_for(value, bounds, current=current)
    last = len(bounds)

    def find(value: int) -> int | None:
        index = bisect.bisect_right(bounds, value)
        return None if index == last else max(index, current)

    return find


class PlanRows:
    """A plan's rows in compact columns (about 20 bytes a device: 1M devices take ~20 MB where
    PlanRow objects took ~300 MB), streamed into COPY by ``_write_rows``. A row's stage is not
    stored: it is derived from its bucket and the plan's bounds when read, exactly as
    ``campaign_plan`` defines it. Iterating yields ``PlanRow`` objects."""

    def __init__(self) -> None:
        self.device_ids = array("q")
        self.buckets = array("Q")
        # Index into ``outcomes``: (reason, detail) shared by many rows; 0 is "eligible".
        self.outcome = array("I")
        self.outcomes: list[tuple[str, str]] = [("", "")]
        self._outcome_index: dict[tuple[str, str], int] = {("", ""): 0}
        # Row number -> detail for refusals whose message names the device itself.
        self.details: dict[int, str] = {}
        self.bounds: list[int] = []
        self.current_stage = 0

    def __len__(self) -> int:
        return len(self.device_ids)

    def outcome_of(self, reason: str, detail: str) -> int:
        index = self._outcome_index.get((reason, detail))
        if index is None:
            index = self._outcome_index[(reason, detail)] = len(self.outcomes)
            self.outcomes.append((reason, detail))
        return index

    def resolved(self) -> Iterator[tuple[int, int | None, int, str, str]]:
        """(device id, stage, bucket, reason, detail) of every row, in planning order."""
        find = _stage_finder(self.bounds, self.current_stage)
        last = len(self.bounds) - 1
        outcomes, details = self.outcomes, self.details
        for i, (device_id, value, outcome) in enumerate(
            zip(self.device_ids, self.buckets, self.outcome, strict=True)
        ):
            stage = find(value)
            if outcome == 0:
                if stage is None:
                    yield device_id, None, value, NOT_IN_ANY_STAGE, BEYOND_LAST_STAGE
                else:
                    yield device_id, stage, value, "", ""
                continue
            reason, detail = outcomes[outcome]
            # excluded: reported under the stage its bucket falls in
            yield device_id, last if stage is None else stage, value, reason, details.get(i, detail)

    def __iter__(self) -> Iterator[PlanRow]:
        for device_id, stage, value, reason, detail in self.resolved():
            yield PlanRow(device_id, value, stage, reason, detail)


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
    rows: PlanRows = field(default_factory=PlanRows)

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


def device_facts(
    device: Device | PlanDevice, device_class: DeviceClass | None
) -> checks.DeviceFacts:
    identity = None
    if device.device_class_id is not None and device_class is not None:
        cls = device_class if device.device_class_id == device_class.pk else device.device_class
        identity = _identity(cls)
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


def _identity(cls: Any) -> dc.DeviceIdentity:
    return dc.DeviceIdentity(
        vendor_id=cls.vendor.uuid,
        class_id=cls.uuid,
        component_id=cls.component_id_bytes,
        payload_format=cls.payload_format,
    )


class PlanDevice:
    """The device fields the exclusion rules read (``classify_device``, ``device_facts``),
    loaded as one narrow row instead of a model instance."""

    __slots__ = (
        "clock_offset_seconds",
        "created_at",
        "device_class",
        "device_class_id",
        "endpoint",
        "firmware_version",
        "last_seen",
        "online",
        "pk",
        "security_counter",
        "sequence_number",
    )

    def __init__(
        self,
        pk: int,
        endpoint: str,
        device_class_id: int | None,
        device_class: DeviceClass | None,
        firmware_version: str,
        sequence_number: int | None,
        security_counter: int,
        clock_offset_seconds: float | None,
        online: bool,
        last_seen: dt.datetime | None,
        created_at: dt.datetime | None,
    ) -> None:
        self.pk, self.endpoint = pk, endpoint
        self.device_class_id, self.device_class = device_class_id, device_class
        self.firmware_version, self.sequence_number = firmware_version, sequence_number
        self.security_counter, self.clock_offset_seconds = security_counter, clock_offset_seconds
        self.online, self.last_seen, self.created_at = online, last_seen, created_at


def _candidates(spec: CampaignSpec, device_class: DeviceClass) -> Any:
    """Devices the selector reaches: the vendor's devices (or unmapped ones) narrowed by the
    include list and tags; those of another class stay in so they are reported as mismatches."""
    target = spec.target
    devices = Device.objects.filter(
        Q(vendor=device_class.vendor) | Q(vendor__isnull=True) | Q(device_class=device_class)
    )
    if target.include:
        devices = devices.filter(endpoint__in=list(target.include))
    return devices.order_by("pk")


def classify_device(
    device: Device | PlanDevice,
    *,
    resolved: Resolved,
    manifest: dc.ManifestFacts,
    manifest_version: tuple[int, int, int, int],
    release: checks.ReleaseState,
    now: dt.datetime,
) -> checks.Refusal | None:
    """Why a selected device is excluded from the campaign now, or None if it is eligible."""
    spec, device_class = resolved.spec, resolved.device_class
    if device.endpoint in spec.target.exclude:
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


# Stands for the endpoint in a refusal computed once for a group of devices; no real message
# holds a NUL, so replacing it gives exactly the message the device's own endpoint would.
_ENDPOINT = "\x00endpoint\x00"
BEYOND_LAST_STAGE = "beyond the last stage's share"


class DispatchChecker:
    """``checks.check_dispatch`` for many devices of one campaign, computed once per group of
    devices that agree on what the checks read of them (class, installed version, sequence
    number, security counter) with the endpoint as a placeholder; a device whose clock offset
    is beyond the tolerance (the refusal names its own skew) is checked alone. The answer is
    the one ``check_dispatch(..., device=device_facts(device, device_class))`` gives."""

    def __init__(
        self,
        manifest: dc.ManifestFacts,
        manifest_version: tuple[int, int, int, int],
        *,
        device_class: DeviceClass,
        release: checks.ReleaseState,
        now: dt.datetime,
        max_clock_skew: dt.timedelta,
    ) -> None:
        self.manifest, self.manifest_version = manifest, manifest_version
        self.device_class, self.release, self.now = device_class, release, now
        self.max_clock_skew = max_clock_skew
        self._classes: dict[int | None, DeviceClass | None] = {
            None: None,
            device_class.pk: device_class,
        }
        self._groups: dict[tuple[Any, ...], tuple[checks.Refusal | None, bool]] = {}

    def _check(self, device: PlanDevice) -> checks.Refusal | None:
        if device.device_class_id not in self._classes:
            self._classes[device.device_class_id] = (
                DeviceClass.objects.select_related("vendor")
                .filter(pk=device.device_class_id)
                .first()
            )
        device.device_class = self._classes[device.device_class_id]
        return checks.check_dispatch(
            self.manifest,
            self.manifest_version,
            device=device_facts(device, self.device_class),
            release=self.release,
            now=self.now,
            max_clock_skew=self.max_clock_skew,
        )

    def check(self, device: PlanDevice) -> checks.Refusal | None:
        offset = device.clock_offset_seconds
        if offset is not None and dt.timedelta(seconds=abs(offset)) > self.max_clock_skew:
            return self._check(device)
        key = (
            device.device_class_id,
            device.firmware_version,
            device.sequence_number,
            device.security_counter,
        )
        group = self._groups.get(key)
        if group is None:
            refusal = self._check(
                PlanDevice(
                    device.pk, _ENDPOINT, device.device_class_id, None, device.firmware_version,
                    device.sequence_number, device.security_counter, None, True, None, None,
                )
            )  # fmt: skip
            group = self._groups[key] = (
                refusal,
                refusal is not None and _ENDPOINT in refusal.message,
            )
        refusal, names_device = group
        if names_device and refusal is not None:
            return checks.Refusal(
                refusal.reason, refusal.message.replace(_ENDPOINT, device.endpoint)
            )
        return refusal


def campaign_plan(
    *,
    spec: CampaignSpec,
    source: str = "<api>",
    now: dt.datetime | None = None,
    salt: str | None = None,
    bounds: list[int] | None = None,
    current_stage: int = 0,
) -> Plan:
    """Validate and plan without writing anything: cohort per stage and exclusions by reason.

    Devices stream as narrow tuples (server-side cursor on PostgreSQL). The exclusion rules
    are pure functions of a few device fields, so ``classify_device`` runs once per group of
    devices that agree on them (class, installed version, sequence number, security counter)
    with the endpoint left as a placeholder, and the group's answer is reused; a device whose
    answer would also depend on its own values (a clock skew beyond the tolerance, offline past
    ``offline_max``) is classified alone. Memory: the rows in compact columns (~20 bytes a
    device) plus, while cutting the stages, the sorted buckets of the eligible devices (a list
    of Python ints, ~44 bytes a device)."""
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
    rows = plan.rows
    target = spec.target
    tag_rules = bool(target.tags_any or target.tags_all or target.exclude_tags)
    offline_max, max_skew = target.offline_max, spec.freshness.max_clock_skew
    no_time = Value(None, output_field=DateTimeField())
    queryset = _candidates(spec, resolved.device_class).values_list(
        "pk",
        "endpoint",
        "device_class_id",
        "firmware_version",
        "sequence_number",
        "security_counter",
        "clock_offset_seconds",
        "online",
        "last_seen" if offline_max is not None else no_time,
        "created_at" if offline_max is not None else no_time,
        "tags" if tag_rules else Value(None, output_field=JSONField()),
    )
    classes: dict[int | None, DeviceClass | None] = {
        None: None,
        resolved.device_class.pk: resolved.device_class,
    }

    def device_class_of(class_id: int | None) -> DeviceClass | None:
        if class_id not in classes:
            classes[class_id] = (
                DeviceClass.objects.select_related("vendor").filter(pk=class_id).first()
            )
        return classes[class_id]

    def classify(device: PlanDevice) -> checks.Refusal | None:
        return classify_device(
            device,
            resolved=resolved,
            manifest=manifest,
            manifest_version=manifest_version,
            release=release,
            now=now,
        )

    excluded_everyone = (
        rows.outcome_of(release_refusal.reason, release_refusal.message) if release_refusal else 0
    )
    by_spec = rows.outcome_of(EXCLUDED_BY_SPEC, "listed under target.exclude")
    groups: dict[tuple[Any, ...], tuple[int, str | None]] = {}
    tags_seen: dict[tuple[str, ...], bool] = {}
    counts: Counter[int] = Counter()
    eligible = array("Q")
    add_id, add_bucket, add_outcome = (
        rows.device_ids.append,
        rows.buckets.append,
        rows.outcome.append,
    )
    details, exclude, sha256, from_bytes = (
        rows.details,
        target.exclude,
        hashlib.sha256,
        int.from_bytes,
    )
    prefix = f"{salt or ''}:"
    for (
        pk,
        endpoint,
        class_id,
        version,
        sequence,
        counter,
        offset,
        online,
        last_seen,
        created_at,
        tags,
    ) in queryset.iterator(chunk_size=PLAN_READ_CHUNK):
        if tag_rules:
            tag_key = tuple(tags or ())
            matches = tags_seen.get(tag_key)
            if matches is None:
                matches = tags_seen[tag_key] = target.tags_match(frozenset(tag_key))
            if not matches:
                continue
        # stages.bucket(salt, endpoint), inlined: it runs once per device.
        value = from_bytes(sha256((prefix + endpoint).encode()).digest()[:8], "big")
        if excluded_everyone:
            outcome = excluded_everyone
        elif endpoint in exclude:
            outcome = by_spec
        elif (offset is not None and dt.timedelta(seconds=abs(offset)) > max_skew) or (
            offline_max is not None
            and not online
            and ((last := last_seen or created_at) is None or now - last > offline_max)
        ):
            # The answer may name this device's own clock or last contact: classified alone.
            refusal = classify(
                PlanDevice(
                    pk, endpoint, class_id, device_class_of(class_id), version, sequence,
                    counter, offset, online, last_seen, created_at,
                )
            )  # fmt: skip
            if refusal is None:
                outcome = 0
            else:
                outcome = rows.outcome_of(refusal.reason, "")
                details[len(rows.device_ids)] = refusal.message
        else:
            key = (class_id, version, sequence, counter)
            group = groups.get(key)
            if group is None:
                # Passing the offline and clock checks is what this group shares: the
                # representative is online with no clock offset (the same answer).
                refusal = classify(
                    PlanDevice(
                        pk, _ENDPOINT, class_id, device_class_of(class_id), version, sequence,
                        counter, None, True, None, None,
                    )
                )  # fmt: skip
                if refusal is None:
                    group = (0, None)
                elif _ENDPOINT in refusal.message:
                    group = (rows.outcome_of(refusal.reason, ""), refusal.message)
                else:
                    group = (rows.outcome_of(refusal.reason, refusal.message), None)
                groups[key] = group
            outcome, template = group
            if template is not None:
                details[len(rows.device_ids)] = template.replace(_ENDPOINT, endpoint)
        add_id(pk)
        add_bucket(value)
        add_outcome(outcome)
        if outcome:
            counts[outcome] += 1
        else:
            eligible.append(value)
    for outcome, n in counts.items():
        plan.excluded[rows.outcomes[outcome][0]] += n
    ordered = sorted(eligible)
    del eligible
    plan.bounds = bounds or stages.stage_bounds([stage_size(s) for s in spec.stages], ordered)
    rows.bounds, rows.current_stage = plan.bounds, current_stage
    if _monotone(plan.bounds):  # count the eligible per stage by bisection
        below = 0
        for index, upper in enumerate(plan.bounds):
            upto = bisect.bisect_left(ordered, upper)
            plan.stage_counts[max(index, current_stage)] += upto - below
            below = upto
        beyond = len(ordered) - below
    else:
        beyond = 0
        find = _stage_finder(plan.bounds, current_stage)
        for value in ordered:
            index = find(value)
            if index is None:
                beyond += 1
            else:
                plan.stage_counts[index] += 1
    if beyond:
        plan.excluded[NOT_IN_ANY_STAGE] += beyond
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
        _write_rows(campaign, plan.rows, fresh=True)
        audit_record(
            actor=actor,
            action="campaign.create",
            object_type="campaign",
            object_id=campaign.name,
            details={"source": source, "spec_digest": digest, **plan.as_dict()},
            now=now,
        )
    return campaign


def _write_rows(campaign: Campaign, rows: Iterable[PlanRow], *, fresh: bool = False) -> None:
    """Persist planned rows, skipping devices the campaign already has a rollout for (none when
    ``fresh``: the campaign was created in this transaction). A plan's rows go into PostgreSQL
    with one COPY; elsewhere, and for small lists of rows, through ``bulk_create``."""
    existing: set[int] = (
        set()
        if fresh
        else set(Rollout.objects.filter(campaign=campaign).values_list("device_id", flat=True))
    )
    if isinstance(rows, PlanRows) and connection.vendor == "postgresql":
        _copy_rows(campaign, rows, existing)
        return
    batch: list[Rollout] = []
    for row in rows:
        if row.device_id in existing:
            continue
        skipped = bool(row.reason) and row.reason not in checks.TRANSIENT_REASONS
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


def _copy_text(value: str) -> str:
    """A value escaped for COPY's text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _copy_rows(campaign: Campaign, rows: PlanRows, existing: set[int]) -> None:
    """The rows ``_write_rows`` would create, as one ``COPY ... FROM STDIN`` (text format, built
    in chunks): the same columns and values bulk_create writes (attempts 0, updated_at now)."""
    head = f"{campaign.pk}\t"
    tail = f"\t0\t{timezone.now().isoformat()}\n"
    pending, skipped = RolloutState.PENDING.value, RolloutState.SKIPPED.value
    chunk: list[str] = []
    with (
        connection.cursor() as cursor,
        cursor.copy(
            "COPY campaigns_rollout (campaign_id, device_id, stage, bucket, state, reason, detail,"
            " attempts, updated_at) FROM STDIN"
        ) as copy,
    ):
        for device_id, stage, value, reason, detail in rows.resolved():
            if existing and device_id in existing:
                continue
            if reason:
                state = pending if reason in checks.TRANSIENT_REASONS else skipped
                chunk.append(
                    f"{head}{device_id}\t{stage or 0}\t{value}\t{state}\t{_copy_text(reason)}\t"
                    f"{_copy_text(detail[:500])}{tail}"
                )
            else:
                chunk.append(f"{head}{device_id}\t{stage}\t{value}\t{pending}\t\t{tail}")
            if len(chunk) >= PLAN_WRITE_BATCH:
                copy.write("".join(chunk))
                chunk.clear()
        if chunk:
            copy.write("".join(chunk))


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
