"""Releases, approvals, policies, roles and delegations.

Authorisation is checked here, not in the callers, so the CLI, the API and the console cannot
skip it. Approval is always computed from the stored signatures by ``manifests.policy.evaluate``;
``Release.status`` only records the last result for display and queries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.services import audit_record
from manifests import suit
from manifests.errors import (
    ApprovalKeyError,
    BadApprovalSignatureError,
    DelegationError,
    DuplicateApprovalError,
    InvalidPolicyError,
    NotAuthorizedToApproveError,
    PermissionDeniedError,
    ReleaseExistsError,
    ReleaseStateError,
    SelfApprovalError,
)
from manifests.models import (
    Approval,
    Delegation,
    DeviceClass,
    Manifest,
    PolicyKind,
    Release,
    ReleaseKind,
    ReleasePolicy,
    ReleaseStatus,
    Role,
    RoleAssignment,
    SigningKey,
)
from manifests.policy import (
    APPROVING_ROLES,
    MAX_DELEGATION_DEPTH,
    DelegationFact,
    PolicyError,
    ReleaseFacts,
    Scope,
    SignatureFact,
    Verdict,
    chain_valid,
    evaluate,
    validate_policy,
)
from manifests.services.keys import key_fact
from manifests.signals import release_approval_lost, release_revoked

# Used when no policy row exists: nobody ships alone, and rollbacks need two security people.
BUILTIN_POLICIES: dict[str, dict[str, int]] = {
    PolicyKind.NORMAL: {"author": 1, "qa": 1, "security": 1},
    PolicyKind.INCIDENT: {"security": 2},
}
REVOKE_ROLES = (Role.SECURITY, Role.ADMIN)
POLICY_ROLES = (Role.ADMIN,)
ROLE_ADMIN_ROLES = (Role.ADMIN,)


# --- roles ----------------------------------------------------------------------------------
def roles_of(user: AbstractBaseUser, *, at: dt.datetime | None = None) -> frozenset[str]:
    at = at or timezone.now()
    held = RoleAssignment.objects.filter(user=user, granted_at__lte=at).filter(
        Q(revoked_at__isnull=True) | Q(revoked_at__gt=at)
    )
    roles = frozenset(held.values_list("role", flat=True))
    return roles | {Role.ADMIN} if getattr(user, "is_superuser", False) else roles


def require_role(actor: Any, *roles: str, at: dt.datetime | None = None) -> AbstractBaseUser:
    """The actor must be a user holding one of ``roles`` (superusers hold admin)."""
    if not isinstance(actor, AbstractBaseUser) or not actor.is_active:
        raise PermissionDeniedError("this action needs a signed-in, active user")
    if not roles_of(actor, at=at) & set(roles):
        raise PermissionDeniedError(
            f"{actor.get_username()} needs one of the roles {sorted(roles)} for this action"
        )
    return actor


def role_grant(
    *, user: AbstractBaseUser, role: str, actor: Any, now: dt.datetime | None = None
) -> RoleAssignment:
    now = now or timezone.now()
    if role not in Role.values:
        raise PermissionDeniedError(f"unknown role {role!r}; roles are {Role.values}")
    with transaction.atomic():
        require_role(actor, *ROLE_ADMIN_ROLES, at=now)
        existing = RoleAssignment.objects.filter(user=user, role=role, revoked_at__isnull=True)
        if existing.exists():
            return existing.get()
        assignment = RoleAssignment.objects.create(
            user=user, role=role, granted_by=actor, granted_at=now
        )
        audit_record(
            actor=actor,
            action="role.grant",
            object_type="user",
            object_id=user.get_username(),
            details={"role": role},
            now=now,
        )
        return assignment


def role_revoke(
    *, user: AbstractBaseUser, role: str, actor: Any, now: dt.datetime | None = None
) -> None:
    now = now or timezone.now()
    with transaction.atomic():
        require_role(actor, *ROLE_ADMIN_ROLES, at=now)
        changed = RoleAssignment.objects.filter(
            user=user, role=role, revoked_at__isnull=True
        ).update(revoked_at=now)
        if not changed:
            raise PermissionDeniedError(f"{user.get_username()} does not hold the role {role!r}")
        audit_record(
            actor=actor,
            action="role.revoke",
            object_type="user",
            object_id=user.get_username(),
            details={"role": role},
            now=now,
        )
        releases_reevaluate(now=now, actor=actor)


# --- policy ---------------------------------------------------------------------------------
def policy_set(
    *,
    device_class: DeviceClass | None,
    kind: str,
    rules: dict[str, Any],
    actor: Any,
    now: dt.datetime | None = None,
) -> ReleasePolicy:
    now = now or timezone.now()
    if kind not in PolicyKind.values:
        raise InvalidPolicyError(f"policy kind must be one of {PolicyKind.values}, not {kind!r}")
    try:
        clean = validate_policy(rules)
    except PolicyError as exc:
        raise InvalidPolicyError(str(exc)) from exc
    with transaction.atomic():
        require_role(actor, *POLICY_ROLES, at=now)
        current = (
            ReleasePolicy.objects.select_for_update()
            .filter(device_class=device_class, kind=kind)
            .first()
        )
        before = current.rules if current else None
        if current is None:
            current = ReleasePolicy.objects.create(
                device_class=device_class, kind=kind, rules=clean, updated_by=actor, updated_at=now
            )
        else:
            current.rules, current.updated_by, current.updated_at = clean, actor, now
            current.save(update_fields=["rules", "updated_by", "updated_at"])
        audit_record(
            actor=actor,
            action="policy.set",
            object_type="policy",
            object_id=f"{kind}:{device_class.pk if device_class else 'default'}",
            details={
                "device_class": str(device_class) if device_class else None,
                "kind": kind,
                "before": before,
                "after": clean,
            },
            now=now,
        )
        releases_reevaluate(device_class=device_class, now=now, actor=actor)
        return current


def policy_for(device_class: DeviceClass, kind: str) -> tuple[dict[str, int], str]:
    """The rules that apply and where they come from (class, default or built-in)."""
    row = (
        ReleasePolicy.objects.filter(kind=kind)
        .filter(Q(device_class=device_class) | Q(device_class__isnull=True))
        .order_by(F("device_class_id").asc(nulls_last=True))  # the class's own policy first
        .first()
    )
    if row is None:
        return dict(BUILTIN_POLICIES[kind]), "built-in"
    return dict(row.rules), ("device class" if row.device_class_id else "default")


def _policy_kind(release: Release) -> str:
    return PolicyKind.INCIDENT if release.kind == ReleaseKind.ROLLBACK else PolicyKind.NORMAL


# --- releases -------------------------------------------------------------------------------
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
        require_role(actor, Role.AUTHOR, Role.ADMIN, at=now)
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
        require_role(actor, Role.AUTHOR, Role.ADMIN, at=now)
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
        if not _signature_valid(env, block, key):
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
        require_role(actor, *REVOKE_ROLES, at=now)
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


def release_is_dispatchable(release: Release, *, now: dt.datetime | None = None) -> Verdict | None:
    """The verdict when ``release`` may go to devices now; None when revoked or in draft."""
    if release.status in (ReleaseStatus.REVOKED, ReleaseStatus.DRAFT):
        return None
    verdict = release_evaluate(release, now=now)
    return verdict if verdict.approved else None


def released_envelope(release: Release, *, now: dt.datetime | None = None) -> bytes:
    """The manifest envelope with every counted approval signature in its authentication
    wrapper, so a device (or anyone) can check the approvals offline."""
    verdict = release_evaluate(release, now=now)
    if not verdict.approved:
        raise ReleaseStateError(f"release {release.name} is not approved: {verdict.summary()}")
    counted = {
        sid for tally in verdict.tally.values() for c in tally.credited for sid in c.signatures
    }
    blocks = [bytes(a.cose) for a in release.approvals.filter(pk__in=counted).order_by("pk")]
    return suit.add_signatures(release.manifest.envelope_bytes, blocks)


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
        audit_record(
            actor=actor,
            action="release.approval_lost" if lost else "release.approved",
            object_type="release",
            object_id=release.name,
            details={
                "summary": verdict.summary(),
                "ignored": {str(k): v for k, v in verdict.ignored.items()},
            },
            now=now,
        )
        if lost:
            release_approval_lost.send(
                sender=Release, release=release, verdict=verdict, reason=verdict.summary()
            )
    return verdict


# --- facts for the pure evaluator -------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseFactSet:
    release: ReleaseFacts
    policy: dict[str, int]
    policy_source: str
    signatures: list[SignatureFact]
    keys: dict[str, Any]
    roles: dict[int, frozenset[str]]
    delegations: list[DelegationFact]


def load_release_facts(release: Release, *, now: dt.datetime) -> ReleaseFactSet:
    manifest = release.manifest
    policy, source = policy_for(manifest.device_class, _policy_kind(release))
    approvals = list(release.approvals.select_related("key"))
    env = suit.decode_envelope(manifest.envelope_bytes)
    signatures = []
    for approval in approvals:
        try:
            block = suit.parse_signature_block(bytes(approval.cose))
            valid = _signature_valid(env, block, approval.key)
        except suit.SUITError:
            valid = False
        signatures.append(
            SignatureFact(
                id=approval.pk,
                kid=approval.key.kid,
                signer=approval.signer_id,
                role=approval.role,
                signed_at=approval.signed_at,
                valid=valid,
            )
        )
    keys = {a.key.kid: key_fact(a.key) for a in approvals}
    delegations = _delegation_facts(set(policy))
    people = {a.signer_id for a in approvals} | {d.delegator for d in delegations}
    return ReleaseFactSet(
        release=ReleaseFacts(
            author=release.created_by_id,
            device_class=manifest.device_class_id,
            groups=frozenset(release.target_groups),
        ),
        policy=policy,
        policy_source=source,
        signatures=signatures,
        keys=keys,
        roles=_roles_at(people, now),
        delegations=delegations,
    )


def _roles_at(people: set[int], now: dt.datetime) -> dict[int, frozenset[str]]:
    rows = (
        RoleAssignment.objects.filter(user_id__in=people, granted_at__lte=now)
        .filter(Q(revoked_at__isnull=True) | Q(revoked_at__gt=now))
        .values_list("user_id", "role")
    )
    roles: dict[int, set[str]] = {}
    for user_id, role in rows:
        roles.setdefault(user_id, set()).add(role)
    return {user: frozenset(r) for user, r in roles.items()}


def _delegation_facts(
    roles: set[str], *, delegatee: AbstractBaseUser | None = None
) -> list[DelegationFact]:
    rows = Delegation.objects.filter(role__in=roles)
    if delegatee is not None:
        rows = rows.filter(delegatees=delegatee)
    facts = []
    for d in rows.prefetch_related("delegatees"):
        facts.append(
            DelegationFact(
                id=d.pk,
                delegator=d.delegator_id,
                role=d.role,
                delegatees=frozenset(u.pk for u in d.delegatees.all()),
                threshold=d.threshold,
                scope=_scope(d),
                expires_at=d.expires_at,
                revoked_at=d.revoked_at,
                parent=d.parent_id,
            )
        )
    return facts


def _scope(d: Delegation) -> Scope:
    return Scope(
        device_classes=None
        if d.scope_device_classes is None
        else frozenset(d.scope_device_classes),
        groups=None if d.scope_groups is None else frozenset(d.scope_groups),
    )


def _signature_valid(env: suit.Envelope, block: suit.SignatureBlock, key: SigningKey) -> bool:
    try:
        public = suit.load_public_key_pem(key.public_key_pem.encode())
        return bool(suit.verify_signature_block(env, block, public))
    except suit.SUITError:
        return False


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


def delegated_roles(user: AbstractBaseUser, *, at: dt.datetime | None = None) -> frozenset[str]:
    """The approving roles ``user`` holds through a live (unrevoked, unexpired) delegation naming
    them, whatever its scope. An upper bound for gates that run before a release is known (the
    API's permission matrix, the console's pages); per release, ``approval_capacities``."""
    at = at or timezone.now()
    facts = _delegation_facts(set(APPROVING_ROLES), delegatee=user)
    return frozenset(d.role for d in facts if d.live_at(at))


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
    policy, _ = policy_for(manifest.device_class, _policy_kind(release))
    delegations = _delegation_facts(set(policy))
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
        roots = _roles_at({d.delegator for d in delegations}, now)
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


# --- delegation -------------------------------------------------------------------------------
def delegation_create(
    *,
    delegator: AbstractBaseUser,
    role: str,
    delegatees: Sequence[AbstractBaseUser],
    threshold: int,
    expires_at: dt.datetime,
    scope_device_classes: Sequence[DeviceClass] | None = None,
    scope_groups: Sequence[str] | None = None,
    parent: Delegation | None = None,
    now: dt.datetime | None = None,
) -> Delegation:
    now = now or timezone.now()
    people = {u.pk for u in delegatees}
    if not people:
        raise DelegationError("a delegation needs at least one delegatee")
    if delegator.pk in people:
        raise DelegationError("a person cannot delegate to themselves")
    if not 1 <= threshold <= len(people):
        raise DelegationError(f"threshold must be between 1 and {len(people)} (the delegatees)")
    if expires_at <= now:
        raise DelegationError("a delegation must expire in the future")
    if role not in ("qa", "security", "fleet_operator", "author"):
        raise DelegationError(f"role {role!r} cannot be delegated")
    scope = Scope(
        device_classes=None
        if scope_device_classes is None
        else frozenset(c.pk for c in scope_device_classes),
        groups=None if scope_groups is None else frozenset(scope_groups),
    )
    with transaction.atomic():
        if parent is None:
            require_role(delegator, role, at=now)
        else:
            parent = Delegation.objects.select_for_update().get(pk=parent.pk)
            depth, link = 1, parent
            while link is not None:
                depth += 1
                link = link.parent
            if depth > MAX_DELEGATION_DEPTH:
                raise DelegationError(
                    f"delegation chains are limited to {MAX_DELEGATION_DEPTH} links"
                )
            if parent.role != role:
                raise DelegationError("a sub-delegation keeps its parent's role")
            if not parent.delegatees.filter(pk=delegator.pk).exists():
                raise DelegationError("only a delegatee of the parent can sub-delegate")
            if not (parent.revoked_at is None and parent.expires_at > now):
                raise DelegationError("the parent delegation is expired or revoked")
            if not scope.within(_scope(parent)):
                raise DelegationError("a sub-delegation can only narrow its parent's scope")
            if expires_at > parent.expires_at:
                raise DelegationError("a sub-delegation cannot outlive its parent")
        delegation = Delegation.objects.create(
            delegator=delegator,
            role=role,
            threshold=threshold,
            scope_device_classes=None
            if scope.device_classes is None
            else sorted(scope.device_classes),
            scope_groups=None if scope.groups is None else sorted(scope.groups),
            parent=parent,
            expires_at=expires_at,
            created_at=now,
        )
        delegation.delegatees.set(list(delegatees))
        audit_record(
            actor=delegator,
            action="delegation.create",
            object_type="delegation",
            object_id=delegation.pk,
            details={
                "role": role,
                "delegatees": sorted(u.get_username() for u in delegatees),
                "threshold": threshold,
                "scope_device_classes": delegation.scope_device_classes,
                "scope_groups": delegation.scope_groups,
                "parent": parent.pk if parent else None,
                "expires_at": expires_at.isoformat(),
            },
            now=now,
        )
        return delegation


def delegation_revoke(
    *, delegation: Delegation, reason: str, actor: Any, now: dt.datetime | None = None
) -> Delegation:
    """Revoking a delegation voids every sub-delegation under it (the chain check sees it)."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Delegation.objects.select_for_update().get(pk=delegation.pk)
        if not (isinstance(actor, AbstractBaseUser) and actor.pk == locked.delegator_id):
            require_role(actor, Role.ADMIN, Role.SECURITY, at=now)
        if locked.revoked_at is not None:
            raise DelegationError(f"delegation {locked.pk} is already revoked")
        Delegation.objects.filter(pk=locked.pk).update(revoked_at=now, revoke_reason=reason)
        audit_record(
            actor=actor,
            action="delegation.revoke",
            object_type="delegation",
            object_id=locked.pk,
            details={"reason": reason},
            now=now,
        )
        releases_reevaluate(now=now, actor=actor)
        locked.refresh_from_db()
        return locked
