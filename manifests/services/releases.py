"""Releases and their approval: create, submit, approve, revoke, and the verdict.

Authorisation is checked here, not in the callers, so the CLI, the API and the console cannot
skip it. Approval is always computed from the stored signatures by ``manifests.policy.evaluate``
(``release_evaluate``); ``Release.status`` only records the last result for display and queries,
and dispatch asks ``release_dispatch_state`` at every pass. ``releases_reevaluate`` is what the
key, role, policy and delegation services above this module call after a change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from audit.services import audit_record
from manifests import suit
from manifests.errors import (
    ApprovalKeyError,
    BadApprovalSignatureError,
    DuplicateApprovalError,
    NotAuthorizedToApproveError,
    ReleaseExistsError,
    ReleaseStateError,
    SelfApprovalError,
)
from manifests.models import (
    Approval,
    DeviceClass,
    Manifest,
    Release,
    ReleaseKind,
    ReleaseStatus,
    Role,
    SigningKey,
)
from manifests.policy import (
    APPROVING_ROLES,
    DelegationFact,
    ReleaseFacts,
    Verdict,
    chain_valid,
    evaluate,
)
from manifests.services.access import (
    ENVELOPE_FREEZERS,
    RELEASE_WRITE,
    REVOKERS,
    require_role,
    roles_of,
)
from manifests.services.facts import (
    delegation_facts,
    key_fact,
    load_release_facts,
    policy_for,
    policy_kind,
    roles_at,
    signature_valid,
)
from manifests.signals import release_approval_lost, release_revoked


def release_create(
    *,
    manifest: Manifest,
    name: str,
    actor: Any,
    kind: str = ReleaseKind.NORMAL,
    target_groups: Sequence[str] = (),
    notes: str = "",
    now: dt.datetime | None = None,
) -> Release:
    """A draft release of a stored manifest; the author's manifest signature becomes its
    ``author`` approval, so the author role counts from the start."""
    now = now or timezone.now()
    if kind not in ReleaseKind.values:
        raise ReleaseStateError(f"release kind must be one of {ReleaseKind.values}")
    with transaction.atomic():
        require_role(actor, *RELEASE_WRITE, at=now)
        if Release.objects.filter(Q(manifest=manifest) | Q(name=name)).exists():
            raise ReleaseExistsError(f"a release named {name!r} or of this manifest exists")
        release = Release.objects.create(
            manifest=manifest,
            name=name,
            kind=kind,
            target_groups=sorted(set(target_groups)),
            notes=notes,
            created_by=manifest.created_by,
        )
        env = suit.decode_envelope(manifest.envelope_bytes)
        for block in env.signatures:
            if block.kid and block.kid.hex() == manifest.author_key.kid:
                Approval.objects.create(
                    release=release,
                    signer=manifest.created_by,
                    key=manifest.author_key,
                    role=Role.AUTHOR,
                    cose=block.raw,
                    cose_sha256=hashlib.sha256(block.raw).hexdigest(),
                    signed_at=manifest.created_at,
                )
                break
        audit_record(
            actor=actor,
            action="release.create",
            object_type="release",
            object_id=release.name,
            details={
                "manifest": manifest.manifest_digest,
                "kind": kind,
                "target_groups": release.target_groups,
            },
            now=now,
        )
        return release


def release_submit(*, release: Release, actor: Any, now: dt.datetime | None = None) -> Verdict:
    now = now or timezone.now()
    with transaction.atomic():
        locked = Release.objects.select_for_update().get(pk=release.pk)
        require_role(actor, *RELEASE_WRITE, at=now)
        if locked.status != ReleaseStatus.DRAFT:
            raise ReleaseStateError(f"release {locked.name} is {locked.status}, not draft")
        Release.objects.filter(pk=locked.pk).update(status=ReleaseStatus.PENDING)
        audit_record(
            actor=actor,
            action="release.submit",
            object_type="release",
            object_id=locked.name,
            now=now,
        )
        locked.status = ReleaseStatus.PENDING
        return _refresh(locked, now=now, actor=actor)


def release_approve(
    *,
    release: Release,
    signer: AbstractBaseUser,
    role: str,
    cose: bytes,
    now: dt.datetime | None = None,
) -> tuple[Approval, Verdict]:
    """Store one uploaded COSE_Sign1 after checking it; returns the new verdict.

    Refused (nothing written) when the release is not pending, the bytes are not a COSE_Sign1
    that verifies over this manifest's digest, the key is unknown / someone else's / not valid
    now, the signer is the author, the signer may not approve in ``role``, or it is a duplicate.
    """
    now = now or timezone.now()
    if role not in Role.values or role in (Role.AUDITOR, Role.ADMIN):
        raise NotAuthorizedToApproveError(f"{role!r} is not an approving role")
    with transaction.atomic():
        locked = (
            Release.objects.select_for_update()
            .select_related("manifest__device_class")
            .get(pk=release.pk)
        )
        if locked.status not in (ReleaseStatus.PENDING, ReleaseStatus.APPROVED):
            raise ReleaseStateError(
                f"release {locked.name} is {locked.status}; approvals go to pending releases"
            )
        if signer.pk == locked.created_by_id and role != Role.AUTHOR:
            raise SelfApprovalError(
                f"{signer.get_username()} authored {locked.name} and cannot approve it as {role}"
            )
        env = suit.decode_envelope(locked.manifest.envelope_bytes)
        try:
            block = suit.parse_signature_block(cose)
        except suit.SUITError as exc:
            raise BadApprovalSignatureError(f"not a COSE_Sign1 block: {exc} [{exc.code}]") from exc
        if not block.kid:
            raise BadApprovalSignatureError("the signature carries no kid header")
        key = SigningKey.objects.filter(kid=block.kid.hex()).first()
        if key is None:
            raise ApprovalKeyError(f"kid {block.kid.hex()[:16]}… is not a registered key")
        if key.owner_id != signer.pk:
            raise ApprovalKeyError(f"key {key.kid[:16]}… is registered to someone else")
        if not key_fact(key).usable_at(now):
            raise ApprovalKeyError(f"key {key.kid[:16]}… is expired, revoked or not yet valid")
        if not signature_valid(env, block, key):
            raise BadApprovalSignatureError(
                "the signature does not verify over this release's manifest digest "
                "(forged, or made for another manifest)"
            )
        capacities = [
            c for c in approval_capacities(signer=signer, release=locked, now=now) if c.role == role
        ]
        if not capacities:
            raise NotAuthorizedToApproveError(
                f"{signer.get_username()} holds no {role!r} role and no live delegation of it "
                f"covers {locked.manifest.device_class}"
            )
        if not any(c.counts for c in capacities):
            # Accepting it would store a signature the policy then ignores.
            raise NotAuthorizedToApproveError(
                f"the delegation of {role!r} to {signer.get_username()} hangs from a link that "
                "is revoked, expired, out of scope or too deep: the signature would not count"
            )
        try:
            with transaction.atomic():
                approval = Approval.objects.create(
                    release=locked,
                    signer=signer,
                    key=key,
                    role=role,
                    cose=bytes(cose),
                    cose_sha256=hashlib.sha256(cose).hexdigest(),
                    signed_at=now,
                )
        except IntegrityError:
            raise DuplicateApprovalError(
                f"this signature, or key {key.kid[:16]}… as {role}, is already on {locked.name}"
            ) from None
        audit_record(
            actor=signer,
            action="release.approve",
            object_type="release",
            object_id=locked.name,
            details={"role": role, "kid": key.kid, "approval": approval.pk},
            now=now,
        )
        return approval, _refresh(locked, now=now, actor=signer)


def release_revoke(
    *, release: Release, reason: str, actor: Any, now: dt.datetime | None = None
) -> Release:
    now = now or timezone.now()
    if not reason.strip():
        raise ReleaseStateError("a revocation needs a reason")
    with transaction.atomic():
        require_role(actor, *REVOKERS, at=now)
        locked = Release.objects.select_for_update().get(pk=release.pk)
        if locked.status == ReleaseStatus.REVOKED:
            raise ReleaseStateError(f"release {locked.name} is already revoked")
        before = locked.status
        Release.objects.filter(pk=locked.pk).update(
            status=ReleaseStatus.REVOKED, revoked_at=now, revoked_by=actor, revoke_reason=reason
        )
        locked.refresh_from_db()
        audit_record(
            actor=actor,
            action="release.revoke",
            object_type="release",
            object_id=locked.name,
            details={"reason": reason, "from": before},
            now=now,
        )
        release_revoked.send(sender=Release, release=locked, reason=reason)
        return locked


def release_evaluate(release: Release, *, now: dt.datetime | None = None) -> Verdict:
    """Evaluate the policy now, from the stored signatures (no cached flag is consulted)."""
    now = now or timezone.now()
    facts = load_release_facts(release, now=now)
    return evaluate(
        release=facts.release,
        policy=facts.policy,
        signatures=facts.signatures,
        keys=facts.keys,
        roles=facts.roles,
        delegations=facts.delegations,
        now=now,
    )


@dataclass(frozen=True)
class ReleaseDispatchState:
    """A release as dispatch sees it at one instant: approval re-evaluated from its signatures.

    ``summary`` says why it is not approved (or what counted); ``rollback`` marks a rollback
    release, approved under the incident policy, which may install an older version."""

    revoked: bool
    approved: bool
    summary: str
    rollback: bool


def release_dispatch_state(release: Release, *, now: dt.datetime) -> ReleaseDispatchState:
    """Whether ``release`` may go to devices at ``now``. The one answer the dispatch path uses:
    re-run at every pass, so approval is never a stale flag. A revoked release is never
    approved; a draft is not approved even when its signatures would satisfy the policy."""
    rollback = release.kind == ReleaseKind.ROLLBACK
    if release.status == ReleaseStatus.REVOKED:
        return ReleaseDispatchState(
            revoked=True, approved=False, summary="revoked", rollback=rollback
        )
    verdict = release_evaluate(release, now=now)
    return ReleaseDispatchState(
        revoked=False,
        approved=verdict.approved and release.status != ReleaseStatus.DRAFT,
        summary=verdict.summary(),
        rollback=rollback,
    )


def _counted_envelope(release: Release, verdict: Verdict) -> bytes:
    """The manifest envelope with the COSE_Sign1 of every approval the verdict counted."""
    counted = {
        sid for tally in verdict.tally.values() for c in tally.credited for sid in c.signatures
    }
    blocks = [bytes(a.cose) for a in release.approvals.filter(pk__in=counted).order_by("pk")]
    return suit.add_signatures(release.manifest.envelope_bytes, blocks)


def released_envelope(release: Release, *, now: dt.datetime | None = None) -> bytes:
    """The released envelope: the bytes frozen when the release was first approved (what
    devices download). Refused unless the release is approved now (a revoked release, or one
    whose approval was lost, has nothing to hand out even though its frozen file stays as it
    was). A release approved before envelopes were frozen has none stored; its envelope is then
    built from the approvals counted now."""
    verdict = release_evaluate(release, now=now)
    status = Release.objects.filter(pk=release.pk).values_list("status", flat=True).first()
    if status == ReleaseStatus.REVOKED:
        raise ReleaseStateError(f"release {release.name} is revoked")
    if not verdict.approved:
        raise ReleaseStateError(f"release {release.name} is not approved: {verdict.summary()}")
    frozen = (
        Release.objects.filter(pk=release.pk).values_list("released_envelope", flat=True).first()
    )
    if frozen is not None:
        return bytes(frozen)
    return _counted_envelope(release, verdict)


def releases_reevaluate(
    *,
    kids: Iterable[str] | None = None,
    device_class: DeviceClass | None = None,
    now: dt.datetime | None = None,
    actor: Any = None,
) -> int:
    """Re-run the policy for live releases affected by a key, role, policy or delegation change
    (all of them when nothing narrows it); returns how many changed status."""
    now = now or timezone.now()
    releases = Release.objects.filter(status__in=[ReleaseStatus.PENDING, ReleaseStatus.APPROVED])
    if kids is not None:
        affected = Approval.objects.filter(key__kid__in=list(kids)).values("release_id")
        releases = releases.filter(pk__in=affected)
    if device_class is not None:
        releases = releases.filter(manifest__device_class=device_class)
    changed = 0
    with transaction.atomic():
        for release in releases.select_for_update(of=("self",)).order_by("pk"):
            before = release.status
            _refresh(release, now=now, actor=actor)
            changed += release.status != before
    return changed


def _refresh(release: Release, *, now: dt.datetime, actor: Any) -> Verdict:
    """Record the verdict's status change (audited) and fire the hook when approval is lost.
    The caller holds the release row lock."""
    verdict = release_evaluate(release, now=now)
    status = ReleaseStatus.APPROVED if verdict.approved else ReleaseStatus.PENDING
    if status != release.status and release.status in (
        ReleaseStatus.PENDING,
        ReleaseStatus.APPROVED,
    ):
        lost = release.status == ReleaseStatus.APPROVED
        Release.objects.filter(pk=release.pk).update(
            status=status, approved_at=now if verdict.approved else None
        )
        release.status = status
        frozen = _freeze_released_envelope(release, verdict) if verdict.approved else {}
        audit_record(
            actor=actor,
            action="release.approval_lost" if lost else "release.approved",
            object_type="release",
            object_id=release.name,
            details={
                "summary": verdict.summary(),
                "ignored": {str(k): v for k, v in verdict.ignored.items()},
                **frozen,
            },
            now=now,
        )
        if lost:
            release_approval_lost.send(
                sender=Release, release=release, verdict=verdict, reason=verdict.summary()
            )
    return verdict


def _freeze_released_envelope(release: Release, verdict: Verdict) -> dict[str, str]:
    """Store the released envelope the first time ``release`` is approved (the conditional
    update never overwrites one already stored); returns its digest for the audit event, or
    nothing when it was frozen before."""
    data = _counted_envelope(release, verdict)
    digest = hashlib.sha256(data).hexdigest()
    stored = Release.objects.filter(pk=release.pk, released_envelope__isnull=True).update(
        released_envelope=data, released_sha256=digest
    )
    if not stored:
        return {}
    release.released_envelope, release.released_sha256 = data, digest
    signatures = len(suit.decode_envelope(data).signatures)
    return {"released_sha256": digest, "released_signatures": str(signatures)}


@dataclass(frozen=True)
class EnvelopeFreeze:
    """What ``released_envelopes_freeze`` did: releases frozen now (name, digest), approved
    releases that already had one, and approved releases whose approval does not hold now
    (name, why): these are left as they are (the periodic re-evaluation marks them pending)."""

    frozen: tuple[tuple[str, str], ...]
    already: int
    not_approved: tuple[tuple[str, str], ...]


def released_envelopes_freeze(
    *,
    actor: AbstractBaseUser,
    names: Sequence[str] | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> EnvelopeFreeze:
    """Freeze the released envelope of approved releases that have none: releases approved
    before envelopes were frozen at approval, which are served author-only, so SUIT devices
    holding a trust policy refuse them (docs/architecture.md, section 7).

    The envelope is built as approval builds it: the imported manifest bytes with the
    COSE_Sign1 of every stored approval the policy counts *now*; a release whose approval no
    longer holds gets none. Idempotent (the conditional update never overwrites a frozen
    envelope; a second run freezes nothing), audited per release (``release.envelope_frozen``
    with the digest), rows locked in primary-key order. ``names`` narrows it; ``dry_run``
    reports what would be frozen and writes nothing. Security or admin."""
    now = now or timezone.now()
    frozen: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    with transaction.atomic():
        require_role(actor, *ENVELOPE_FREEZERS, at=now)
        releases = Release.objects.filter(status=ReleaseStatus.APPROVED)
        if names is not None:
            unknown = sorted(
                set(names) - set(releases.filter(name__in=names).values_list("name", flat=True))
            )
            if unknown:
                raise ReleaseStateError(f"not an approved release: {', '.join(unknown)}")
            releases = releases.filter(name__in=names)
        already = releases.filter(released_envelope__isnull=False).count()
        pending = (
            releases.filter(released_envelope__isnull=True)
            .select_for_update(of=("self",))
            .select_related("manifest")
            .order_by("pk")
        )
        for release in pending:
            verdict = release_evaluate(release, now=now)
            if not verdict.approved:
                skipped.append((release.name, verdict.summary()))
                continue
            if dry_run:
                data = _counted_envelope(release, verdict)
                frozen.append((release.name, hashlib.sha256(data).hexdigest()))
                continue
            details = _freeze_released_envelope(release, verdict)
            if not details:
                already += 1
                continue
            audit_record(
                actor=actor,
                action="release.envelope_frozen",
                object_type="release",
                object_id=release.name,
                details={**details, "summary": verdict.summary()},
                now=now,
            )
            frozen.append((release.name, details["released_sha256"]))
    return EnvelopeFreeze(frozen=tuple(frozen), already=already, not_approved=tuple(skipped))


# --- who may sign what: one answer for this service, the console and the API -----------------
@dataclass(frozen=True)
class ApprovalCapacity:
    """A role in which ``release_approve`` accepts someone's signature on a release: held
    directly (``delegation`` None), or through a live, in-scope delegation naming them.

    ``counts`` is False when the service accepts the signature (it checks the delegation naming
    the signer, as it always has) but the policy evaluator will ignore it, because a link above
    that delegation is expired, revoked or out of scope, or the chain is too long."""

    role: str
    delegation: DelegationFact | None = None
    counts: bool = True


def approval_capacities(
    *, signer: AbstractBaseUser, release: Release, now: dt.datetime | None = None
) -> list[ApprovalCapacity]:
    """Every role in which ``release_approve`` would accept ``signer``'s signature on
    ``release`` (given one that verifies, by a usable key of theirs), and through what.

    The rules are the service's own, and ``release_approve`` decides with this function: nothing
    unless the release is pending or approved; the author only as ``author`` (separation of
    duties); any approving role they hold; a role the release's policy requires, delegated to
    them by a live delegation whose scope covers the release. A person may appear more than
    once for a role (held and delegated, or several delegations)."""
    now = now or timezone.now()
    if release.status not in (ReleaseStatus.PENDING, ReleaseStatus.APPROVED):
        return []
    held = roles_of(signer, at=now)
    found = [ApprovalCapacity(role=role) for role in APPROVING_ROLES if role in held]
    manifest = release.manifest
    policy, _ = policy_for(manifest.device_class, policy_kind(release))
    delegations = delegation_facts(set(policy))
    target = ReleaseFacts(
        author=release.created_by_id,
        device_class=manifest.device_class_id,
        groups=frozenset(release.target_groups),
    )
    mine = [
        d
        for d in delegations
        if signer.pk in d.delegatees
        and d.live_at(now)
        and d.scope.covers(device_class=target.device_class, groups=target.groups)
    ]
    if mine:
        by_id = {d.id: d for d in delegations}
        roots = roles_at({d.delegator for d in delegations}, now)
        found += [
            ApprovalCapacity(
                role=d.role,
                delegation=d,
                counts=chain_valid(d, by_id=by_id, roles=roots, release=target, now=now),
            )
            for d in mine
        ]
    if signer.pk == release.created_by_id:
        found = [c for c in found if c.role == Role.AUTHOR]
    return found
