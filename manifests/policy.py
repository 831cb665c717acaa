"""Release approval policy, evaluated as a pure function.

``evaluate`` takes everything it needs as values — the manifest's signed digest, the uploaded
approval signatures, the registered keys, who holds which role, the delegations, the policy and
the time — and returns whether the release is approved, with a per-role tally and a reason for
every signature that did not count. No I/O, no clock: the same inputs give the same verdict, so
it is re-run at every dispatch and approval is never a stale flag.

Invariants enforced:
- a signature counts only if it verifies over THIS manifest's SUIT_Digest with the key its kid
  names (a signature made for another manifest, a forged or a duplicated one never counts);
- the key must be registered to the signer, valid at signing time and still valid (not expired,
  not revoked) at evaluation time; a revoked key's signatures stop counting from the revocation's
  effective time, whenever they were made;
- the release author's signature counts only for the ``author`` role, never as an approval in
  another role (separation of duties), and every person counts at most once per release, whatever
  number of keys, signatures or roles they have;
- a signature counts for the role it claims only if the signer holds that role, or a live
  delegation chain of that role, in scope, whose every link is unexpired and unrevoked, reaches
  the signer; a delegation is satisfied when ``threshold`` distinct delegatees signed, and then
  counts once, for its delegator; chains longer than MAX_DELEGATION_DEPTH are ignored;
- a role is met when the number of distinct credited persons reaches its threshold.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAX_DELEGATION_DEPTH = 3
ROLES = ("author", "qa", "security", "fleet_operator", "auditor", "admin")
APPROVING_ROLES = ("author", "qa", "security", "fleet_operator")


@dataclass(frozen=True)
class KeyFact:
    kid: str
    owner: int
    valid_from: dt.datetime
    valid_until: dt.datetime | None = None
    revoked_at: dt.datetime | None = None

    def usable_at(self, at: dt.datetime) -> bool:
        if at < self.valid_from:
            return False
        if self.valid_until is not None and at >= self.valid_until:
            return False
        return self.revoked_at is None or at < self.revoked_at


@dataclass(frozen=True)
class SignatureFact:
    id: int
    kid: str
    signer: int
    role: str
    signed_at: dt.datetime
    valid: bool  # the COSE signature verified over this manifest's digest with the kid's key


@dataclass(frozen=True)
class Scope:
    """None means unrestricted; a set restricts. A child scope must be a subset of its parent."""

    device_classes: frozenset[int] | None = None
    groups: frozenset[str] | None = None

    def covers(self, *, device_class: int, groups: frozenset[str]) -> bool:
        if self.device_classes is not None and device_class not in self.device_classes:
            return False
        if self.groups is None:
            return True
        return bool(groups) and groups <= self.groups

    def within(self, parent: Scope) -> bool:
        if parent.device_classes is not None and (
            self.device_classes is None or not self.device_classes <= parent.device_classes
        ):
            return False
        return parent.groups is None or (self.groups is not None and self.groups <= parent.groups)


@dataclass(frozen=True)
class DelegationFact:
    id: int
    delegator: int
    role: str
    delegatees: frozenset[int]
    threshold: int
    scope: Scope
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None = None
    parent: int | None = None

    def live_at(self, at: dt.datetime) -> bool:
        if self.expires_at is not None and at >= self.expires_at:
            return False
        return self.revoked_at is None or at < self.revoked_at


@dataclass(frozen=True)
class ReleaseFacts:
    author: int
    device_class: int
    groups: frozenset[str] = frozenset()


@dataclass
class Credit:
    person: int
    via: str  # "direct" or "delegation:<id>"
    signatures: list[int] = field(default_factory=list)


@dataclass
class RoleTally:
    required: int
    credited: list[Credit] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return len(self.credited) >= self.required

    @property
    def missing(self) -> int:
        return max(0, self.required - len(self.credited))


@dataclass
class Verdict:
    approved: bool
    tally: dict[str, RoleTally]
    ignored: dict[int, str]  # signature id -> why it did not count

    def summary(self) -> str:
        parts = [
            f"{role} {len(t.credited)}/{t.required}" + ("" if t.met else f" (needs {t.missing})")
            for role, t in self.tally.items()
        ]
        return ("APPROVED: " if self.approved else "NOT APPROVED: ") + ", ".join(parts)


class PolicyError(ValueError):
    """A release policy document is malformed."""

    code = "approval.bad_policy"


def validate_policy(rules: Mapping[str, object]) -> dict[str, int]:
    """A policy maps approving roles to thresholds >= 1; at least one role is required."""
    if not isinstance(rules, Mapping) or not rules:
        raise PolicyError("a policy maps at least one role to a threshold, e.g. {qa: 1}")
    clean: dict[str, int] = {}
    for role, threshold in rules.items():
        if role not in APPROVING_ROLES:
            raise PolicyError(f"role {role!r} cannot approve; choose from {APPROVING_ROLES}")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int)
            or not 1 <= threshold <= 50
        ):
            raise PolicyError(f"threshold for {role!r} must be an integer 1..50, not {threshold!r}")
        clean[role] = threshold
    return clean


def evaluate(
    *,
    release: ReleaseFacts,
    policy: Mapping[str, int],
    signatures: Iterable[SignatureFact],
    keys: Mapping[str, KeyFact],
    roles: Mapping[int, frozenset[str]],
    delegations: Iterable[DelegationFact],
    now: dt.datetime,
) -> Verdict:
    delegation_list = sorted(delegations, key=lambda d: d.id)
    by_id = {d.id: d for d in delegation_list}
    ignored: dict[int, str] = {}
    # role -> person -> ids of their signatures that are individually acceptable for that role
    acceptable: dict[str, dict[int, list[int]]] = {role: {} for role in policy}
    for sig in sorted(signatures, key=lambda s: (s.signed_at, s.id)):
        reason = _signature_problem(sig, release=release, policy=policy, keys=keys, now=now)
        if reason is not None:
            ignored[sig.id] = reason
        else:
            acceptable[sig.role].setdefault(sig.signer, []).append(sig.id)

    tally = {role: RoleTally(required=k) for role, k in policy.items()}
    credited: set[int] = set()  # every person counts once per release, across all roles
    for role in policy:
        signers = acceptable[role]
        # Direct holders of the role first: they need no delegation.
        for person in sorted(signers):
            if role in roles.get(person, frozenset()) and person not in credited:
                tally[role].credited.append(Credit(person, "direct", signers[person]))
                credited.add(person)
        # A satisfied delegation counts once, for its delegator.
        for delegation in delegation_list:
            if delegation.role != role or delegation.delegator in credited:
                continue
            if not chain_valid(delegation, by_id=by_id, roles=roles, release=release, now=now):
                continue
            voters = sorted(p for p in delegation.delegatees if p in signers and p not in credited)
            if len(voters) >= delegation.threshold:
                used = voters[: delegation.threshold]
                sig_ids = [sid for p in used for sid in signers[p]]
                tally[role].credited.append(
                    Credit(delegation.delegator, f"delegation:{delegation.id}", sig_ids)
                )
                credited.add(delegation.delegator)
                credited.update(used)
        counted = {sid for c in tally[role].credited for sid in c.signatures}
        for person, sig_ids in signers.items():
            for sid in sig_ids:
                if sid in counted:
                    continue
                if person in credited:
                    ignored[sid] = "person already counted once for this release"
                else:
                    ignored[sid] = (
                        "signer holds no such role and no live, in-scope delegation "
                        "of it was satisfied"
                    )
    approved = all(t.met for t in tally.values())
    return Verdict(approved=approved, tally=tally, ignored=ignored)


def _signature_problem(
    sig: SignatureFact,
    *,
    release: ReleaseFacts,
    policy: Mapping[str, int],
    keys: Mapping[str, KeyFact],
    now: dt.datetime,
) -> str | None:
    if not sig.valid:
        return "signature does not verify over this manifest's digest"
    key = keys.get(sig.kid)
    if key is None:
        return "signed with an unregistered key"
    if key.owner != sig.signer:
        return "key is registered to another person"
    if sig.signer == release.author and sig.role != "author":
        return "the release author cannot approve their own release"
    if sig.role not in policy:
        return f"role {sig.role!r} is not required by the policy"
    if not key.usable_at(sig.signed_at):
        return "key was not valid when the signature was made"
    if not key.usable_at(now):
        return "key has since expired or been revoked"
    return None


def chain_valid(
    delegation: DelegationFact,
    *,
    by_id: Mapping[int, DelegationFact],
    roles: Mapping[int, frozenset[str]],
    release: ReleaseFacts,
    now: dt.datetime,
) -> bool:
    """Every link live and in scope, each child within its parent, the root's delegator holds
    the role, and the chain is at most MAX_DELEGATION_DEPTH links long."""
    link: DelegationFact | None = delegation
    depth = 0
    while link is not None:
        depth += 1
        if depth > MAX_DELEGATION_DEPTH or not link.live_at(now):
            return False
        if link.role != delegation.role:
            return False
        if not link.scope.covers(device_class=release.device_class, groups=release.groups):
            return False
        if link.parent is None:
            return delegation.role in roles.get(link.delegator, frozenset())
        parent = by_id.get(link.parent)
        if parent is None or link.delegator not in parent.delegatees:
            return False
        if not link.scope.within(parent.scope):
            return False
        link = parent
    return False
