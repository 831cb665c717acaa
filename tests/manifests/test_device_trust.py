"""The device trust policy, device side (pure): the envelope and policy attacks are refused with
their specific reason; a release signed as the policy requires is accepted."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import pytest

from manifests import device_trust as trust
from manifests import suit
from manifests.device_rules import DeviceCheckError, FwResult

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
VENDOR_ID = suit.vendor_id("acme.example")
CLASS_ID = suit.class_id(VENDOR_ID, "thermo-v2")


@pytest.fixture(scope="module")
def keys() -> dict[str, list[Any]]:
    return {
        role: [suit.generate_private_key("ES256") for _ in range(3)]
        for role in ("author", "qa", "security", "new_security", "outsider")
    }


def _body(keys: dict[str, list[Any]], *, version: int = 1, **overrides: Any) -> bytes:
    roles = {
        "author": (1, keys["author"][:2]),
        "qa": (1, keys["qa"][:2]),
        "security": (2, keys["security"]),
    }
    roles.update(overrides.pop("roles", {}))
    for role in overrides.pop("drop", ()):
        roles.pop(role)
    return trust.policy_body(
        class_id=overrides.pop("class_id", CLASS_ID),
        version=version,
        expires=overrides.pop("expires", NOW + dt.timedelta(days=365)),
        roles=roles,
    )


def _policy(body: bytes, signers: list[Any]) -> bytes:
    return trust.assemble_policy(body, [trust.sign_policy(body, k) for k in signers])


@pytest.fixture(scope="module")
def current(keys: dict[str, list[Any]]) -> trust.TrustPolicy:
    body = _body(keys)
    return trust.accept_initial(_policy(body, keys["security"][:2]), class_id=CLASS_ID, now=NOW)


def _envelope(author: Any, approvers: list[Any]) -> suit.Envelope:
    payload = b"firmware" * 100
    params = suit.ManifestParams(
        vendor_id=VENDOR_ID,
        class_id=CLASS_ID,
        sequence_number=2,
        version="1.1.0",
        security_counter=2,
        image_digest=hashlib.sha256(payload).digest(),
        image_size=len(payload),
        uri=None,
        component_id=(b"\x00",),
        payload_format="mcuboot",
    )
    data = suit.create_envelope(params, keys=[author])
    blocks = [suit.sign_manifest_digest(data, key=k) for k in approvers]
    return suit.decode_envelope(suit.add_signatures(data, blocks))


def test_release_signed_as_the_policy_requires_is_accepted(keys, current) -> None:
    env = _envelope(keys["author"][0], [keys["qa"][1], *keys["security"][:2]])
    verdict = trust.check_envelope(env, current, now=NOW)
    assert {role: len(kids) for role, kids in verdict.signed.items()} == {
        "author": 1,
        "qa": 1,
        "security": 2,
    }


def test_author_only_envelope_is_refused(keys, current) -> None:
    env = _envelope(keys["author"][0], [])
    with pytest.raises(trust.TrustThresholdError, match="qa 0 of 1") as info:
        trust.check_envelope(env, current, now=NOW)
    assert info.value.fw_result == FwResult.INTEGRITY_CHECK_FAILURE
    assert info.value.code == "device.trust_threshold"
    assert isinstance(info.value, DeviceCheckError)


def test_two_signatures_from_one_key_count_once_and_are_refused(keys, current) -> None:
    security = keys["security"][0]
    env = _envelope(keys["author"][0], [keys["qa"][0], security])
    # A second, distinct COSE_Sign1 (ECDSA is randomised) by the same security key.
    data = suit.add_signatures(env.raw, [suit.sign_manifest_digest(env.raw, key=security)])
    twice = suit.decode_envelope(data)
    assert len(twice.signatures) == 4
    with pytest.raises(trust.TrustThresholdError, match="security 1 of 2"):
        trust.check_envelope(twice, current, now=NOW)


def test_approver_key_not_listed_in_the_device_policy_is_refused(keys, current) -> None:
    env = _envelope(keys["author"][0], [keys["qa"][2], *keys["security"][:2]])
    with pytest.raises(trust.TrustThresholdError, match="qa 0 of 1"):
        trust.check_envelope(env, current, now=NOW)


def test_signature_of_one_role_does_not_count_for_another_and_is_refused(keys, current) -> None:
    # The author signs three times in different capacities: only "author" lists that key.
    env = _envelope(keys["author"][0], [keys["author"][1], keys["security"][0]])
    with pytest.raises(trust.TrustThresholdError, match="qa 0 of 1, security 1 of 2"):
        trust.check_envelope(env, current, now=NOW)


def test_install_under_an_expired_device_policy_is_refused(keys, current) -> None:
    env = _envelope(keys["author"][0], [keys["qa"][0], *keys["security"][:2]])
    with pytest.raises(trust.TrustPolicyExpiredError):
        trust.check_envelope(env, current, now=current.expires)


def test_policy_listing_one_key_under_two_roles_is_refused(keys) -> None:
    with pytest.raises(trust.TrustPolicyFormatError, match="listed twice"):
        _body(keys, roles={"qa": (1, [keys["author"][0]])})


def test_policy_with_threshold_above_its_keys_is_refused(keys) -> None:
    with pytest.raises(trust.TrustPolicyFormatError, match="threshold"):
        _body(keys, roles={"qa": (3, keys["qa"][:2])})


# --- rotation ----------------------------------------------------------------------------------
def _rotated(keys, *, version: int = 2, signers: list[Any] | None = None, **kw: Any) -> bytes:
    body = _body(keys, version=version, roles={"security": (2, keys["new_security"])}, **kw)
    return _policy(body, signers or [*keys["security"][:2], *keys["new_security"][:2]])


def test_rotation_signed_by_current_and_new_security_thresholds_is_accepted(keys, current):
    new = trust.accept_rotation(current, _rotated(keys), now=NOW)
    assert new.version == 2
    assert new.roles["security"].kids == {suit.kid_for_public_key(k) for k in keys["new_security"]}


def test_policy_signed_by_too_few_current_keys_is_refused(keys, current) -> None:
    data = _rotated(keys, signers=[keys["security"][0], *keys["new_security"][:2]])
    with pytest.raises(trust.TrustPolicySignatureError, match="1 of the 2 current"):
        trust.accept_rotation(current, data, now=NOW)


def test_policy_signed_by_too_few_of_its_own_new_keys_is_refused(keys, current) -> None:
    data = _rotated(keys, signers=[*keys["security"][:2], keys["new_security"][0]])
    with pytest.raises(trust.TrustPolicySignatureError, match="of its own"):
        trust.accept_rotation(current, data, now=NOW)


@pytest.mark.parametrize("version", [0, 1], ids=["lower", "same"])
def test_policy_with_a_lower_or_equal_version_is_refused(keys, current, version) -> None:
    with pytest.raises(trust.TrustPolicyRollbackError):
        trust.accept_rotation(current, _rotated(keys, version=version), now=NOW)


def test_expired_policy_is_refused(keys, current) -> None:
    data = _rotated(keys, expires=NOW - dt.timedelta(seconds=1))
    with pytest.raises(trust.TrustPolicyExpiredError):
        trust.accept_rotation(current, data, now=NOW)


def test_policy_that_drops_the_security_role_is_refused(keys, current) -> None:
    body = _body(keys, version=2, drop=["security"])
    data = _policy(body, keys["security"][:2])
    with pytest.raises(trust.TrustPolicyRoleError):
        trust.accept_rotation(current, data, now=NOW)


def test_policy_for_another_class_is_refused(keys, current) -> None:
    data = _rotated(keys, class_id=uuid.uuid4())
    with pytest.raises(trust.TrustPolicyClassError):
        trust.accept_rotation(current, data, now=NOW)


def test_policy_signature_made_for_another_body_is_refused(keys, current) -> None:
    body = _body(keys, version=2, roles={"security": (2, keys["new_security"])})
    other = _body(keys, version=3)
    blocks = [trust.sign_policy(other, k) for k in keys["security"][:2]]
    blocks += [trust.sign_policy(body, k) for k in keys["new_security"][:2]]
    with pytest.raises(trust.TrustPolicySignatureError, match="0 of the 2 current"):
        trust.accept_rotation(current, trust.assemble_policy(body, blocks), now=NOW)


def test_threshold_met_by_a_revoked_key_after_rotation_is_refused(keys, current) -> None:
    # Rotation v2 replaces security key 0 (revoked on the server) by a new one.
    roles = {"security": (2, [keys["security"][1], keys["security"][2], keys["new_security"][0]])}
    body = _body(keys, version=2, roles=roles)
    new = trust.accept_rotation(
        current, _policy(body, [*keys["security"][:2], keys["new_security"][0]]), now=NOW
    )
    env = _envelope(keys["author"][0], [keys["qa"][0], *keys["security"][:2]])
    trust.check_envelope(env, current, now=NOW)  # the old policy accepted it
    with pytest.raises(trust.TrustThresholdError, match="security 1 of 2"):
        trust.check_envelope(env, new, now=NOW)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x82\x40\x80", b"\xa0", b"\x82\x41\x00\x81\x00", b"\xd8\x6b\xa0"],
    ids=["empty", "no-signatures", "map", "body-not-a-policy", "suit-envelope"],
)
def test_malformed_policy_is_refused_as_a_format_error(data) -> None:
    with pytest.raises(trust.TrustPolicyFormatError):
        trust.decode_policy(data)


def test_first_policy_not_signed_by_a_device_trust_anchor_is_refused(keys) -> None:
    body = _body(keys, roles={"security": (1, keys["outsider"][:1])})
    data = _policy(body, keys["outsider"][:1])
    with pytest.raises(trust.TrustPolicySignatureError, match="none of the device's trust"):
        trust.next_policy("", data, class_id=CLASS_ID, anchors=[keys["author"][0]], now=NOW)
    anchors = [keys["outsider"][0].public_key()]
    held = trust.next_policy("", data, class_id=CLASS_ID, anchors=anchors, now=NOW)
    assert held.version == 1
    # Once it holds one, a package is a rotation of it, whatever the anchors say.
    with pytest.raises(trust.TrustPolicyRollbackError):
        trust.next_policy(data.hex(), data, class_id=CLASS_ID, anchors=anchors, now=NOW)
