"""The pure approval evaluator: thresholds, separation of duties, keys, delegation."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from manifests.policy import (
    MAX_DELEGATION_DEPTH,
    DelegationFact,
    KeyFact,
    PolicyError,
    ReleaseFacts,
    Scope,
    SignatureFact,
    evaluate,
    validate_policy,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
EARLY = NOW - dt.timedelta(days=30)
AUTHOR, QA1, QA2, SEC1, SEC2, OPS, STRANGER = 1, 2, 3, 4, 5, 6, 7
CLASS = 10
ROLES = {
    AUTHOR: frozenset({"author"}),
    QA1: frozenset({"qa"}),
    QA2: frozenset({"qa"}),
    SEC1: frozenset({"security"}),
    SEC2: frozenset({"security"}),
    OPS: frozenset({"fleet_operator"}),
}
RELEASE = ReleaseFacts(author=AUTHOR, device_class=CLASS)
POLICY = {"qa": 1, "security": 1}
_ids = itertools.count(1)


def key(kid: str, owner: int, **kw: dt.datetime | None) -> KeyFact:
    return KeyFact(kid=kid, owner=owner, valid_from=kw.pop("valid_from", EARLY) or EARLY, **kw)


KEYS = {f"k{p}": key(f"k{p}", p) for p in (AUTHOR, QA1, QA2, SEC1, SEC2, OPS, STRANGER)}


def sig(
    person: int,
    role: str,
    *,
    kid: str | None = None,
    valid: bool = True,
    at: dt.datetime = NOW - dt.timedelta(hours=1),
) -> SignatureFact:
    return SignatureFact(
        id=next(_ids), kid=kid or f"k{person}", signer=person, role=role, signed_at=at, valid=valid
    )


def run(
    signatures, *, policy=POLICY, keys=KEYS, roles=ROLES, delegations=(), release=RELEASE, now=NOW
):
    return evaluate(
        release=release,
        policy=policy,
        signatures=signatures,
        keys=keys,
        roles=roles,
        delegations=delegations,
        now=now,
    )


# --- threshold matrix -----------------------------------------------------------------------
FULL = {"author": 1, "qa": 2, "security": 1, "fleet_operator": 1}
ALL_ROLES = {
    AUTHOR: frozenset({"author"}),
    8: frozenset({"author"}),
    QA1: frozenset({"qa"}),
    QA2: frozenset({"qa"}),
    9: frozenset({"qa"}),
    SEC1: frozenset({"security"}),
    SEC2: frozenset({"security"}),
    OPS: frozenset({"fleet_operator"}),
    11: frozenset({"fleet_operator"}),
}
ALL_KEYS = {f"k{p}": key(f"k{p}", p) for p in ALL_ROLES}
SIGNERS = {
    "author": [8, 8],
    "qa": [QA1, QA2, 9],
    "security": [SEC1, SEC2],
    "fleet_operator": [OPS, 11],
}


@pytest.mark.parametrize("role", list(FULL))
@pytest.mark.parametrize("shape", ["missing", "exactly_met", "over"])
def test_threshold_matrix(role: str, shape: str):
    signatures = []
    for r, need in FULL.items():
        people = sorted(set(SIGNERS[r]))
        count = need
        if r == role:
            count = {"missing": need - 1, "exactly_met": need, "over": min(need + 1, len(people))}[
                shape
            ]
        signatures += [sig(p, r) for p in people[:count]]
    verdict = run(signatures, policy=FULL, keys=ALL_KEYS, roles=ALL_ROLES)
    assert verdict.approved is (shape != "missing")
    assert verdict.tally[role].met is (shape != "missing")
    expected = {"missing": FULL[role] - 1, "exactly_met": FULL[role], "over": None}[shape]
    if expected is not None:
        assert len(verdict.tally[role].credited) == expected


def test_author_cannot_approve_own_release_even_holding_the_role():
    roles = dict(ROLES) | {AUTHOR: frozenset({"author", "qa"})}
    s = sig(AUTHOR, "qa")
    verdict = run([s, sig(SEC1, "security")], roles=roles)
    assert not verdict.approved
    assert "author cannot approve" in verdict.ignored[s.id]


def test_author_signature_counts_for_the_author_role_only():
    verdict = run(
        [sig(AUTHOR, "author"), sig(QA1, "qa"), sig(SEC1, "security")],
        policy={"author": 1, "qa": 1, "security": 1},
    )
    assert verdict.approved
    assert verdict.tally["author"].credited[0].person == AUTHOR


def test_same_person_with_two_keys_counts_once():
    keys = dict(KEYS) | {"kQA1b": key("kQA1b", QA1)}
    verdict = run(
        [sig(QA1, "qa"), sig(QA1, "qa", kid="kQA1b"), sig(SEC1, "security")],
        policy={"qa": 2, "security": 1},
        keys=keys,
    )
    assert not verdict.approved
    assert len(verdict.tally["qa"].credited) == 1


def test_one_person_counts_once_across_roles():
    roles = dict(ROLES) | {QA1: frozenset({"qa", "security"})}
    verdict = run([sig(QA1, "qa"), sig(QA1, "security")], roles=roles)
    assert not verdict.approved
    assert verdict.tally["security"].missing == 1


def test_signature_that_does_not_verify_for_this_manifest_never_counts():
    replayed = sig(QA1, "qa", valid=False)
    verdict = run([replayed, sig(SEC1, "security")])
    assert not verdict.approved
    assert "does not verify" in verdict.ignored[replayed.id]


def test_unregistered_key_and_someone_elses_key_do_not_count():
    a = sig(QA1, "qa", kid="unknown")
    b = sig(QA1, "qa", kid=f"k{QA2}")
    verdict = run([a, b, sig(SEC1, "security")])
    assert not verdict.approved
    assert "unregistered" in verdict.ignored[a.id]
    assert "another person" in verdict.ignored[b.id]


def test_signer_without_the_role_does_not_count():
    s = sig(STRANGER, "qa")
    verdict = run([s, sig(SEC1, "security")])
    assert not verdict.approved and "no such role" in verdict.ignored[s.id]


@pytest.mark.parametrize(
    ("revoked_at", "approved"),
    [
        (NOW - dt.timedelta(hours=2), False),  # revoked before the signature was made
        (NOW - dt.timedelta(minutes=30), False),  # revoked after signing: stops counting now
        (NOW + dt.timedelta(hours=1), True),  # revocation effective later: still counts now
    ],
    ids=["revoked-before-signing", "revoked-after-signing", "revocation-in-future"],
)
def test_revoked_key(revoked_at: dt.datetime, approved: bool):
    keys = dict(KEYS) | {f"k{QA1}": key(f"k{QA1}", QA1, revoked_at=revoked_at)}
    verdict = run([sig(QA1, "qa"), sig(SEC1, "security")], keys=keys)
    assert verdict.approved is approved


def test_expired_key_and_key_not_yet_valid_when_signing():
    keys = dict(KEYS) | {
        f"k{QA1}": key(f"k{QA1}", QA1, valid_until=NOW - dt.timedelta(minutes=1)),
        f"k{SEC1}": key(f"k{SEC1}", SEC1, valid_from=NOW - dt.timedelta(minutes=10)),
    }
    verdict = run(
        [sig(QA1, "qa"), sig(SEC1, "security", at=NOW - dt.timedelta(hours=1))], keys=keys
    )
    assert not verdict.approved
    assert verdict.tally["qa"].missing == 1 and verdict.tally["security"].missing == 1


def test_policy_change_re_evaluates():
    signatures = [sig(QA1, "qa"), sig(SEC1, "security")]
    assert run(signatures).approved
    assert not run(signatures, policy={"qa": 1, "security": 2}).approved


@pytest.mark.parametrize(
    "rules",
    [{}, {"auditor": 1}, {"qa": 0}, {"qa": True}, {"qa": "1"}, {"nobody": 1}, []],
    ids=["empty", "auditor-cannot-approve", "zero", "bool", "string", "unknown-role", "list"],
)
def test_bad_policy_is_refused(rules):
    with pytest.raises(PolicyError):
        validate_policy(rules)


# --- delegation -----------------------------------------------------------------------------
ANYWHERE = Scope()
D1, D2, D3 = 21, 22, 23  # delegatees without roles of their own
KEYS_D = dict(KEYS) | {f"k{p}": key(f"k{p}", p) for p in (D1, D2, D3)}


def delegation(
    id_: int,
    *,
    delegator=SEC1,
    delegatees=(D1, D2),
    threshold=2,
    scope=ANYWHERE,
    expires_at=NOW + dt.timedelta(days=1),
    revoked_at=None,
    parent=None,
    role="security",
):
    return DelegationFact(
        id=id_,
        delegator=delegator,
        role=role,
        delegatees=frozenset(delegatees),
        threshold=threshold,
        scope=scope,
        expires_at=expires_at,
        revoked_at=revoked_at,
        parent=parent,
    )


def test_satisfied_delegation_counts_once_for_the_delegator():
    verdict = run(
        [sig(QA1, "qa"), sig(D1, "security"), sig(D2, "security")],
        keys=KEYS_D,
        delegations=[delegation(1)],
    )
    assert verdict.approved
    (credit,) = verdict.tally["security"].credited
    assert credit.person == SEC1 and credit.via == "delegation:1"


def test_delegation_below_its_threshold_does_not_count():
    verdict = run([sig(QA1, "qa"), sig(D1, "security")], keys=KEYS_D, delegations=[delegation(1)])
    assert not verdict.approved


def test_delegator_and_delegation_count_once_together():
    verdict = run(
        [sig(QA1, "qa"), sig(SEC1, "security"), sig(D1, "security"), sig(D2, "security")],
        policy={"qa": 1, "security": 2},
        keys=KEYS_D,
        delegations=[delegation(1)],
    )
    assert not verdict.approved
    assert len(verdict.tally["security"].credited) == 1


def test_expired_delegation_does_not_count():
    d = delegation(1, expires_at=NOW - dt.timedelta(seconds=1))
    assert not run(
        [sig(QA1, "qa"), sig(D1, "security"), sig(D2, "security")], keys=KEYS_D, delegations=[d]
    ).approved


def test_delegation_out_of_scope_does_not_count():
    d = delegation(1, scope=Scope(device_classes=frozenset({CLASS + 1})))
    assert not run(
        [sig(QA1, "qa"), sig(D1, "security"), sig(D2, "security")], keys=KEYS_D, delegations=[d]
    ).approved


def test_delegation_restricted_to_groups_needs_a_release_restricted_to_them():
    d = delegation(1, scope=Scope(groups=frozenset({"eu"})))
    signatures = [sig(QA1, "qa"), sig(D1, "security"), sig(D2, "security")]
    assert not run(signatures, keys=KEYS_D, delegations=[d]).approved
    eu_release = ReleaseFacts(author=AUTHOR, device_class=CLASS, groups=frozenset({"eu"}))
    assert run(signatures, keys=KEYS_D, delegations=[d], release=eu_release).approved


def test_sub_delegation_that_widens_scope_does_not_count():
    parent = delegation(
        1, delegatees=(D1,), threshold=1, scope=Scope(device_classes=frozenset({CLASS}))
    )
    child = delegation(2, delegator=D1, delegatees=(D2,), threshold=1, scope=Scope(), parent=1)
    verdict = run([sig(QA1, "qa"), sig(D2, "security")], keys=KEYS_D, delegations=[parent, child])
    assert not verdict.approved


def test_sub_delegation_within_scope_counts_and_revoking_the_root_revokes_the_chain():
    scope = Scope(device_classes=frozenset({CLASS}))
    parent = delegation(1, delegatees=(D1,), threshold=1, scope=scope)
    child = delegation(2, delegator=D1, delegatees=(D2,), threshold=1, scope=scope, parent=1)
    signatures = [sig(QA1, "qa"), sig(D2, "security")]
    assert run(signatures, keys=KEYS_D, delegations=[parent, child]).approved
    revoked_parent = delegation(
        1, delegatees=(D1,), threshold=1, scope=scope, revoked_at=NOW - dt.timedelta(minutes=1)
    )
    assert not run(signatures, keys=KEYS_D, delegations=[revoked_parent, child]).approved


def test_delegator_losing_the_role_voids_the_delegation():
    roles = dict(ROLES) | {SEC1: frozenset()}
    assert not run(
        [sig(QA1, "qa"), sig(D1, "security"), sig(D2, "security")],
        roles=roles,
        keys=KEYS_D,
        delegations=[delegation(1)],
    ).approved


def test_delegation_chain_longer_than_the_bound_is_ignored():
    people = [100 + i for i in range(MAX_DELEGATION_DEPTH + 1)]
    keys = dict(KEYS) | {f"k{p}": key(f"k{p}", p) for p in people}
    chain, delegator = [], SEC1
    for i, person in enumerate(people):
        chain.append(
            delegation(
                i + 1, delegator=delegator, delegatees=(person,), threshold=1, parent=i or None
            )
        )
        delegator = person
    verdict = run([sig(QA1, "qa"), sig(people[-1], "security")], keys=keys, delegations=chain)
    assert not verdict.approved
    shorter = run(
        [sig(QA1, "qa"), sig(people[MAX_DELEGATION_DEPTH - 1], "security")],
        keys=keys,
        delegations=chain[:MAX_DELEGATION_DEPTH],
    )
    assert shorter.approved
