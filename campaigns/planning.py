"""Planning a campaign: which devices its selector reaches, why each excluded one is excluded, the
stage cut of the eligible ones by bucket, and the rows written for them. ``campaign_plan`` writes
nothing (the CLI's ``campaign plan`` and the API's preview); ``write_rows`` persists a plan's
rows (one COPY on PostgreSQL) for campaign creation, revision and late enrolment.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import itertools
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import (
    BooleanField,
    DateTimeField,
    ExpressionWrapper,
    JSONField,
    Q,
    Value,
)
from django.utils import timezone

from campaigns import checks, delivery, stages
from campaigns.clock import SERVER_TIME_ONLY, clock_state
from campaigns.eligibility import (
    _ENDPOINT,
    EXCLUDED_BY_SPEC,
    EncryptionGate,
    PlanDevice,
    classify_device,
    held_for_clock,
    manifest_facts,
    policy_dispatch_state,
    policy_facts,
    resolve,
)
from campaigns.errors import SpecError
from campaigns.fleet import UnknownGroupError
from campaigns.fleet_selectors import group_member_endpoints
from campaigns.models import Campaign, Device, Rollout, RolloutState
from campaigns.spec import CampaignSpec
from manifests.delivery import REPORTING_PROFILES
from manifests.models import DeviceClass
from manifests.selectors import threshold_enforcement
from manifests.services import DeltaOffer, delta_offer, release_dispatch_state

# Rows written per INSERT (or per COPY write) when persisting a plan: large enough to amortise
# round trips, small enough to keep one statement's memory and lock time modest.
PLAN_WRITE_BATCH = 5000
# Devices read per query while planning (server-side iteration, constant memory per chunk).
PLAN_READ_CHUNK = 20000

NOT_IN_ANY_STAGE = "not_in_any_stage"
BEYOND_LAST_STAGE = "beyond the last stage's share"


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
    # Eligible devices that will be dispatched under the server's use-before check alone, by
    # clock state (``campaigns.clock``): clockless, unknown (never read), off (accepted).
    server_time_only: Counter[str] = field(default_factory=Counter)
    rows: PlanRows = field(default_factory=PlanRows)
    # The class's delivery profile and forced method; per stage, the eligible devices the
    # gateway will push to (the others pull).
    delivery: str = ""
    delivery_method: str = ""
    stage_push: list[int] = field(default_factory=list)
    # Whether the class's devices check the approval thresholds themselves (a SUIT class with a
    # released device trust policy) or only the server does (image profile, no policy), and why.
    device_thresholds: bool = False
    thresholds_why: str = ""
    # Eligible devices the registry knows hold a released trust policy of the class (a
    # confirmed delivery, ``Device.trust_policy_version``): only they check thresholds; the
    # others of a SUIT class with a policy are counted as protected by the server only.
    policy_holders: int = 0
    # Per stage, the eligible devices offered a delta rather than the full image, and the bytes
    # those deltas save on the wire (``manifests.services.delta_offer``); ``image_size`` is the
    # full image's, so a stage's bytes on the wire are devices x image_size - saved.
    image_size: int = 0
    stage_delta: list[int] = field(default_factory=list)
    stage_saved: list[int] = field(default_factory=list)
    # A trust-policy campaign: the policy's version (``release`` is then ""), and per stage the
    # devices the registry records already holding it (excluded as ``trust_policy_held``).
    trust_policy: int | None = None
    stage_held: list[int] = field(default_factory=list)

    @property
    def target(self) -> str:
        return self.release if self.trust_policy is None else f"trust policy v{self.trust_policy}"

    @property
    def cohort(self) -> int:
        return sum(self.stage_counts)

    def _holders(self) -> int:
        return min(self.policy_holders, self.cohort) if self.device_thresholds else 0

    def stage_methods(self, index: int) -> dict[str, int]:
        push = self.stage_push[index] if index < len(self.stage_push) else 0
        return {"pull": self.stage_counts[index] - push, "push": push}

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "release": self.release or None,
            "trust_policy": self.trust_policy,
            "target": self.target,
            "device_class": self.device_class,
            "release_blocked": (
                {"reason": self.release_refusal.reason, "detail": self.release_refusal.message}
                if self.release_refusal
                else None
            ),
            "cohort": self.cohort,
            "delivery": self.delivery,
            "delivery_method": self.delivery_method,
            "image_size": self.image_size,
            "stages": [
                {
                    "name": name,
                    "devices": count,
                    "methods": self.stage_methods(index),
                    "delta": {
                        "devices": self.stage_delta[index] if self.stage_delta else 0,
                        "bytes_saved": self.stage_saved[index] if self.stage_saved else 0,
                    },
                    # Devices of the stage already at the campaign's trust-policy version.
                    "already_held": self.stage_held[index] if self.stage_held else 0,
                }
                for index, (name, count) in enumerate(
                    zip(self.stage_names, self.stage_counts, strict=True)
                )
            ],
            "excluded": dict(sorted(self.excluded.items())),
            "server_time_only": dict(sorted(self.server_time_only.items())),
            "threshold_enforcement": {
                "device": self._holders(),
                "server_only": self.cohort - self._holders(),
                "why": self.thresholds_why,
            },
        }


def group_members(name: str, *, source: str = "<api>") -> frozenset[str]:
    """The current members of the group a spec targets; an unknown group is a spec error."""
    try:
        return frozenset(group_member_endpoints(name))
    except UnknownGroupError as exc:
        raise SpecError(str(exc), source=source, path="target.group") from None


def _candidates(spec: CampaignSpec, device_class: DeviceClass) -> Any:
    """Devices the selector reaches: the vendor's devices (or unmapped ones) narrowed by the
    include list and tags; those of another class stay in so they are reported as mismatches."""
    target = spec.target
    devices = Device.objects.filter(
        Q(vendor=device_class.vendor) | Q(vendor__isnull=True) | Q(device_class=device_class)
    )
    if target.include is not None:  # an empty include (a group cut to nothing) selects none
        devices = devices.filter(endpoint__in=list(target.include))
    return devices.order_by("pk")


def campaign_plan(
    *,
    spec: CampaignSpec,
    source: str = "<api>",
    now: dt.datetime | None = None,
    salt: str | None = None,
    bounds: list[int] | None = None,
    current_stage: int = 0,
    members: frozenset[str] | None = None,
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
    if spec.target.group is not None:
        # A campaign's frozen members, or (a preview) the group as it is now.
        if members is None:
            members = group_members(spec.target.group, source=source)
        spec = spec.narrowed(members)
    resolved = resolve(spec, source=source)
    device_thresholds, thresholds_why = threshold_enforcement(resolved.device_class)
    release_refusal = None
    policy = None
    manifest: Any = None
    manifest_version: Any = None
    release: checks.ReleaseState
    if resolved.trust_policy is not None:
        # A trust-policy campaign: the policy is "the release" of the rules below.
        policy = policy_facts(resolved.trust_policy)
        release = state = policy_dispatch_state(resolved.trust_policy, now=now)
        if resolved.device_class.delivery == "image":
            release_refusal = checks.Refusal(
                checks.IMAGE_PROFILE,
                f"{resolved.device_class} is an image-profile class: MCUboot devices cannot "
                "hold a trust policy",
            )
        elif state.superseded_by is not None:
            release_refusal = checks.Refusal(checks.TRUST_POLICY_SUPERSEDED, state.summary)
        elif state.expired:
            release_refusal = checks.Refusal(checks.TRUST_POLICY_EXPIRED, state.summary)
        elif not state.approved:
            release_refusal = checks.Refusal(checks.NOT_APPROVED, state.summary)
        image_size = len(bytes(resolved.trust_policy.document or b""))
    else:
        assert resolved.release is not None  # noqa: S101 - resolve gives one of the two
        release = release_dispatch_state(resolved.release, now=now)
        manifest, manifest_version = manifest_facts(resolved.release)
        if release.revoked:
            release_refusal = checks.Refusal(checks.RELEASE_REVOKED, "release revoked")
        elif not release.approved:
            release_refusal = checks.Refusal(checks.NOT_APPROVED, release.summary)
        elif manifest.use_before is not None and now >= manifest.use_before:
            release_refusal = checks.Refusal(checks.EXPIRED, f"expired {manifest.use_before}")
        image_size = resolved.release.manifest.image.size
    plan = Plan(
        campaign=spec.name,
        release=resolved.release.name if resolved.release is not None else "",
        trust_policy=resolved.trust_policy.version if resolved.trust_policy else None,
        stage_held=[0] * len(spec.stages),
        device_class=str(resolved.device_class),
        release_refusal=release_refusal,
        stage_names=[s.name for s in spec.stages],
        stage_counts=[0] * len(spec.stages),
        bounds=[],
        delivery=resolved.device_class.delivery,
        delivery_method=resolved.device_class.delivery_method,
        stage_push=[0] * len(spec.stages),
        device_thresholds=device_thresholds,
        thresholds_why=thresholds_why,
        image_size=image_size,
        stage_delta=[0] * len(spec.stages),
        stage_saved=[0] * len(spec.stages),
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
        "device_time",
        "clock_trusted_at",
        "online",
        "last_seen" if offline_max is not None else no_time,
        "created_at" if offline_max is not None else no_time,
        "tags" if tag_rules else Value(None, output_field=JSONField()),
        "fw_protocols",
        "fw_delivery_method",
        "psk",
        "installed_image_digest",
        ExpressionWrapper(~Q(report_key=""), output_field=BooleanField()),
        "trust_policy_version",
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
            policy=policy,
        )

    excluded_everyone = (
        rows.outcome_of(release_refusal.reason, release_refusal.message) if release_refusal else 0
    )
    by_spec = rows.outcome_of(EXCLUDED_BY_SPEC, "listed under target.exclude")
    # Who the gateway can deliver to: decided per device from its /5/0/8, /5/0/9 and DTLS,
    # after every other rule passed (a device refused anyway is counted under that reason).
    method_of = delivery.methods_for(resolved.device_class.delivery_method)
    gate = EncryptionGate(manifest, resolved.device_class)
    undeliverable = rows.outcome_of(delivery.NO_SUPPORTED_DELIVERY, "")
    # A SUIT class's device without a report key could never have its success verified.
    needs_report = resolved.device_class.delivery in REPORTING_PROFILES
    keyless = rows.outcome_of(checks.NO_REPORT_KEY, "")
    pushed = array("Q")
    # Eligible devices offered a delta: (bucket, bytes saved); offers are the same for every
    # device on one installed image, so they are decided once per digest.
    with_delta: list[tuple[int, int]] = []
    offers: dict[str, DeltaOffer] = {}
    deltas_on = resolved.device_class.delta_updates and policy is None
    held_outcome = rows.outcome_of(checks.TRUST_POLICY_HELD, "")
    held: list[int] = []  # buckets of devices already at the campaign's policy version
    groups: dict[tuple[Any, ...], tuple[int, str | None]] = {}
    tags_seen: dict[tuple[str, ...], bool] = {}
    counts: Counter[int] = Counter()
    eligible = array("Q")
    server_only: list[tuple[int, str]] = []  # (bucket, clock state) of eligible devices
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
        device_time,
        trusted_at,
        online,
        last_seen,
        created_at,
        tags,
        protocols,
        fw_method,
        psk,
        installed_digest,
        has_report_key,
        policy_version,
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
        elif held_for_clock(offset, device_time, trusted_at, max_skew) or (
            offline_max is not None
            and not online
            and ((last := last_seen or created_at) is None or now - last > offline_max)
        ):
            # The answer may name this device's own clock or last contact: classified alone.
            refusal = classify(
                PlanDevice(
                    pk, endpoint, class_id, device_class_of(class_id), version, sequence,
                    counter, offset, online, last_seen, created_at, device_time, trusted_at,
                    policy_version,
                )
            )  # fmt: skip
            if refusal is None:
                outcome = 0
            else:
                outcome = rows.outcome_of(refusal.reason, "")
                details[len(rows.device_ids)] = refusal.message
        else:
            # A trust-policy campaign's rules also read the policy version the device holds.
            key = (class_id, version, sequence, counter, policy_version if policy else None)
            group = groups.get(key)
            if group is None:
                # Passing the offline and clock checks is what this group shares: the
                # representative is online with no clock offset (the same answer).
                refusal = classify(
                    PlanDevice(
                        pk, _ENDPOINT, class_id, device_class_of(class_id), version, sequence,
                        counter, None, True, None, None, None, None, policy_version,
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
        if not outcome and needs_report and not has_report_key:
            outcome = keyless
            details[len(rows.device_ids)] = f"{endpoint}: no report key registered"
        if not outcome and gate.active and (refusal := gate.refusal(pk, endpoint)):
            outcome = rows.outcome_of(refusal.reason, "")
            details[len(rows.device_ids)] = refusal.message
        if not outcome:
            decision = method_of(protocols, fw_method, psk is not None)
            if decision.method is None:
                outcome = undeliverable
                details[len(rows.device_ids)] = f"{endpoint}: {decision.reason}"
            elif decision.method == delivery.PUSH:
                pushed.append(value)
            if (
                deltas_on
                and installed_digest
                and decision.method is not None
                and delivery.delta_deliverable(resolved.device_class.delivery, decision.method)
            ):
                offer = offers.get(installed_digest)
                if offer is None:
                    offer = offers[installed_digest] = delta_offer(
                        device_class=resolved.device_class,
                        manifest=resolved.release.manifest,
                        installed_image_digest=installed_digest,
                        signed_precursors=manifest.precursor_digests,
                    )
                if offer.delta is not None:
                    with_delta.append((value, offer.saved))
        add_id(pk)
        add_bucket(value)
        add_outcome(outcome)
        if outcome:
            counts[outcome] += 1
            if outcome == held_outcome:
                held.append(value)
        else:
            eligible.append(value)
            if policy_version is not None:
                plan.policy_holders += 1
            state = clock_state(device_time=device_time, offset_seconds=offset, max_skew=max_skew)
            if state in SERVER_TIME_ONLY:
                server_only.append((value, state))
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
    find = _stage_finder(plan.bounds, current_stage)
    for value, state in server_only:
        if find(value) is not None:
            plan.server_time_only[state] += 1
    for value in pushed:
        index = find(value)
        if index is not None:
            plan.stage_push[index] += 1
    for value, saved in with_delta:
        index = find(value)
        if index is not None:
            plan.stage_delta[index] += 1
            plan.stage_saved[index] += saved
    last = len(plan.stage_held) - 1
    for value in held:
        # Reported under the stage its bucket falls in, as every excluded row is.
        index = find(value)
        plan.stage_held[last if index is None else index] += 1
    return plan


def stage_size(stage: Any) -> stages.StageSize:
    kind, value = stage.size
    return stages.StageSize(kind, value)


def write_rows(campaign: Campaign, rows: Iterable[PlanRow], *, fresh: bool = False) -> None:
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


# The columns a plan's COPY writes: every NOT NULL column of campaigns_rollout but the id. COPY
# bypasses the model's defaults, so a column left out is NULL and every apply on PostgreSQL fails
# (device_clock did; tests/campaigns/test_planning.py checks this list against the model).
COPY_COLUMNS = (
    "campaign_id",
    "device_id",
    "stage",
    "bucket",
    "state",
    "reason",
    "detail",
    "attempts",
    "updated_at",
    "device_clock",
    "report_verdict",
    "payload",
    "waits",
)


def _copy_rows(campaign: Campaign, rows: PlanRows, existing: set[int]) -> None:
    """The rows ``_write_rows`` would create, as one ``COPY ... FROM STDIN`` (text format, built
    in chunks): the same columns and values bulk_create writes (attempts 0, updated_at now, no
    device clock recorded yet: that is written when the rollout is claimed; no report verdict,
    no delta sent, no wait)."""
    head = f"{campaign.pk}\t"
    # no device clock, verdict, delta; no wait
    tail = f"\t0\t{timezone.now().isoformat()}\t\t\t\t0\n"
    pending, skipped = RolloutState.PENDING.value, RolloutState.SKIPPED.value
    chunk: list[str] = []
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY campaigns_rollout ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy,
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
