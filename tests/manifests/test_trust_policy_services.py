"""Device trust policies through the services: drafted by security, released only when the
class's devices would accept the signed document, stored as exact bytes and audited; a key
revocation drafts the next policy without the key."""

from __future__ import annotations

import datetime as dt

import pytest

from audit.models import AuditEvent
from audit.services import audit_verify
from manifests import device_trust, services, suit
from manifests.errors import (
    BadTrustPolicySignatureError,
    InvalidTrustPolicyError,
    PermissionDeniedError,
    TrustPolicyStateError,
)
from manifests.models import DeviceTrustPolicy, SigningKey, TrustPolicyStatus
from manifests.selectors import current_trust_policy, served_trust_policy
from tests.manifests.test_releases import NOW, team  # noqa: F401

pytestmark = pytest.mark.django_db
LATER = NOW + dt.timedelta(days=365)


def _kid(persona) -> str:
    return suit.kid_for_public_key(persona.private_key).hex()


def _roles(people) -> dict[str, tuple[int, list[str]]]:
    return {
        "author": (1, [_kid(people["author"])]),
        "qa": (1, [_kid(people["qa"]), _kid(people["operator"])]),
        "security": (1, [_kid(people["security"])]),
    }


def _sign(policy: DeviceTrustPolicy, persona, *, now=NOW) -> DeviceTrustPolicy:
    block = device_trust.sign_policy(policy.body_bytes, persona.private_key)
    return services.trust_policy_sign(policy=policy, signer=persona.user, cose=block, now=now)


@pytest.fixture
def released(team, device_class) -> DeviceTrustPolicy:  # noqa: F811
    draft = services.trust_policy_draft(
        device_class=device_class,
        roles=_roles(team),
        expires_at=LATER,
        actor=team["security"].user,
        now=NOW,
    )
    return _sign(draft, team["security"])


def test_policy_released_when_its_security_threshold_signed_it(team, released, device_class):  # noqa: F811
    assert released.status == TrustPolicyStatus.RELEASED and released.version == 1
    document = served_trust_policy(released.sha256)
    assert document is not None and document == bytes(released.document)
    policy = device_trust.accept_initial(document, class_id=device_class.uuid, now=NOW)
    assert policy.roles["qa"].threshold == 1 and len(policy.roles["qa"].keys) == 2
    assert current_trust_policy(device_class) == released
    event = AuditEvent.objects.get(action="trust_policy.released")
    assert event.details["sha256"] == released.sha256
    assert audit_verify().ok


def test_draft_by_someone_without_the_security_role_is_refused(team, device_class):  # noqa: F811
    with pytest.raises(PermissionDeniedError):
        services.trust_policy_draft(
            device_class=device_class,
            roles=_roles(team),
            expires_at=LATER,
            actor=team["author"].user,
            now=NOW,
        )
    assert not DeviceTrustPolicy.objects.exists()


@pytest.mark.parametrize(
    "bad",
    ["unknown_key", "threshold_above_keys", "expired", "key_under_two_roles"],
)
def test_malformed_policy_draft_is_refused(team, device_class, bad):  # noqa: F811
    roles, expires = _roles(team), LATER
    if bad == "unknown_key":
        roles["qa"] = (1, ["ab" * 32])
    elif bad == "threshold_above_keys":
        roles["qa"] = (3, roles["qa"][1])
    elif bad == "expired":
        expires = NOW - dt.timedelta(seconds=1)
    else:
        roles["qa"] = (1, [_kid(team["author"])])
    with pytest.raises(InvalidTrustPolicyError):
        services.trust_policy_draft(
            device_class=device_class,
            roles=roles,
            expires_at=expires,
            actor=team["security"].user,
            now=NOW,
        )
    assert not DeviceTrustPolicy.objects.exists()


def test_policy_signature_made_for_another_policy_is_refused(team, device_class):  # noqa: F811
    draft = services.trust_policy_draft(
        device_class=device_class,
        roles=_roles(team),
        expires_at=LATER,
        actor=team["security"].user,
        now=NOW,
    )
    other = device_trust.policy_body(
        class_id=device_class.uuid,
        version=1,
        expires=LATER + dt.timedelta(days=1),
        roles={"security": (1, [team["security"].private_key])},
    )
    block = device_trust.sign_policy(other, team["security"].private_key)
    with pytest.raises(BadTrustPolicySignatureError, match="does not verify"):
        services.trust_policy_sign(policy=draft, signer=team["security"].user, cose=block, now=NOW)
    with pytest.raises(BadTrustPolicySignatureError, match="not a key of the signer"):
        block = device_trust.sign_policy(draft.body_bytes, team["security"].private_key)
        services.trust_policy_sign(policy=draft, signer=team["qa"].user, cose=block, now=NOW)
    draft.refresh_from_db()
    assert draft.status == TrustPolicyStatus.DRAFT and not draft.signatures.exists()


def test_signature_on_a_released_policy_is_refused(team, released):  # noqa: F811
    with pytest.raises(TrustPolicyStateError):
        _sign(released, team["qa"])


def test_a_signature_short_of_the_rotation_rule_leaves_the_draft_unreleased(
    team,  # noqa: F811
    released,
    device_class,
):
    draft = services.trust_policy_draft(
        device_class=device_class,
        roles={**_roles(team), "security": (1, [_kid(team["outsider"])])},
        expires_at=LATER,
        actor=team["security"].user,
        now=NOW,
    )
    _sign(draft, team["outsider"])  # its own security key only: the current one is missing
    draft.refresh_from_db()
    assert draft.status == TrustPolicyStatus.DRAFT and served_trust_policy(draft.sha256) is None
    _sign(draft, team["security"])
    draft.refresh_from_db()
    assert draft.status == TrustPolicyStatus.RELEASED and draft.version == 2


def test_key_revocation_drafts_the_next_policy_without_the_key(team, released, device_class):  # noqa: F811
    qa_key = SigningKey.objects.get(kid=_kid(team["qa"]))
    services.key_revoke(key=qa_key, reason="stolen", actor=team["security"].user, now=NOW)
    draft = DeviceTrustPolicy.objects.get(device_class=device_class, version=2)
    assert draft.status == TrustPolicyStatus.DRAFT and "revoked" in draft.reason
    _sign(draft, team["security"])
    draft.refresh_from_db()
    assert draft.status == TrustPolicyStatus.RELEASED
    held = device_trust.accept_rotation(
        device_trust.decode_policy(bytes(released.document)), bytes(draft.document), now=NOW
    )
    assert bytes.fromhex(qa_key.kid) not in device_trust.listed_kids(held)
    assert held.roles["qa"].kids == {bytes.fromhex(_kid(team["operator"]))}


def test_revoking_the_only_security_key_asks_for_a_hand_drafted_policy(
    team,  # noqa: F811
    released,
    device_class,
):
    key = SigningKey.objects.get(kid=_kid(team["security"]))
    services.key_revoke(key=key, reason="compromised", actor=team["security"].user, now=NOW)
    assert not DeviceTrustPolicy.objects.filter(version=2).exists()
    assert AuditEvent.objects.filter(action="trust_policy.redraft_needed").count() == 1
