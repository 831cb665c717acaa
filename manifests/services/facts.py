"""Rows turned into the facts ``manifests.policy`` evaluates: keys, the policy that applies,
signatures (verified here, over the stored manifest), roles as of a time, delegations.

Reads only, no state changes: every service that decides something about approval (the
releases, the key lifecycle, the catalog's author-key check) reads through here, so each of
them sees a key, a policy or a delegation the same way the evaluator does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F, Q

from manifests import suit
from manifests.models import (
    Delegation,
    DeviceClass,
    KeyStatus,
    PolicyKind,
    Release,
    ReleaseKind,
    ReleasePolicy,
    RoleAssignment,
    SigningKey,
)
from manifests.policy import (
    DelegationFact,
    KeyFact,
    ReleaseFacts,
    Scope,
    SignatureFact,
)

# Used when no policy row exists: nobody ships alone, and rollbacks need two security people.
BUILTIN_POLICIES: dict[str, dict[str, int]] = {
    PolicyKind.NORMAL: {"author": 1, "qa": 1, "security": 1},
    PolicyKind.INCIDENT: {"security": 2},
}


# --- keys -----------------------------------------------------------------------------------
def key_fact(key: SigningKey) -> KeyFact:
    return KeyFact(
        kid=key.kid,
        owner=key.owner_id,
        valid_from=key.valid_from,
        valid_until=key.valid_until,
        revoked_at=key.revoked_at if key.status == KeyStatus.REVOKED else None,
    )


def key_is_usable(key: SigningKey, *, at: dt.datetime) -> bool:
    """Within its validity and not revoked as of ``at``."""
    return key_fact(key).usable_at(at)


def signature_valid(env: suit.Envelope, block: suit.SignatureBlock, key: SigningKey) -> bool:
    """``block`` verifies over ``env``'s manifest digest with ``key`` (False, never an error)."""
    try:
        public = suit.load_public_key_pem(key.public_key_pem.encode())
        return bool(suit.verify_signature_block(env, block, public))
    except suit.SUITError:
        return False


# --- policy ---------------------------------------------------------------------------------
def policy_kind(release: Release) -> str:
    """Rollback releases are approved under the incident policy."""
    return PolicyKind.INCIDENT if release.kind == ReleaseKind.ROLLBACK else PolicyKind.NORMAL


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


# --- roles and delegations ------------------------------------------------------------------
def roles_at(people: set[int], now: dt.datetime) -> dict[int, frozenset[str]]:
    """The granted roles of several people at once, as of ``now`` (one query)."""
    rows = (
        RoleAssignment.objects.filter(user_id__in=people, granted_at__lte=now)
        .filter(Q(revoked_at__isnull=True) | Q(revoked_at__gt=now))
        .values_list("user_id", "role")
    )
    roles: dict[int, set[str]] = {}
    for user_id, role in rows:
        roles.setdefault(user_id, set()).add(role)
    return {user: frozenset(r) for user, r in roles.items()}


def delegation_facts(
    roles: set[str], *, delegatee: AbstractBaseUser | None = None
) -> list[DelegationFact]:
    """Every delegation of ``roles`` (live or not: the evaluator judges each link), optionally
    only those naming ``delegatee``."""
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
                scope=scope_of(d),
                expires_at=d.expires_at,
                revoked_at=d.revoked_at,
                parent=d.parent_id,
            )
        )
    return facts


def scope_of(d: Delegation) -> Scope:
    return Scope(
        device_classes=None
        if d.scope_device_classes is None
        else frozenset(d.scope_device_classes),
        groups=None if d.scope_groups is None else frozenset(d.scope_groups),
    )


# --- a release's facts, for the pure evaluator ----------------------------------------------
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
    policy, source = policy_for(manifest.device_class, policy_kind(release))
    approvals = list(release.approvals.select_related("key"))
    env = suit.decode_envelope(manifest.envelope_bytes)
    signatures = []
    for approval in approvals:
        try:
            block = suit.parse_signature_block(bytes(approval.cose))
            valid = signature_valid(env, block, approval.key)
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
    delegations = delegation_facts(set(policy))
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
        roles=roles_at(people, now),
        delegations=delegations,
    )
