"""The device trust policy: what a SUIT device itself requires of a release, and how it rotates.

Pure (no Django, no clock: ``now`` is a parameter). The device-side counterpart of the server's
release policy (``manifests.policy``), in the manner of a TUF root: for each approving role the
public keys the device trusts and how many of them must have signed, a version and an expiry,
signed by the security keys. Format (docs/suit.md, "Device trust policy")::

    Signed_Trust_Policy = [ body: bstr .cbor Trust_Policy, signatures: [+ COSE_Sign1_Tagged] ]
    Trust_Policy = {
        "type": "fwupd-trust-policy", "class": bstr .size 16, "version": uint,
        "expires": uint,                      ; POSIX seconds, UTC
        "roles": { + role => { "threshold": uint, "keys": [+ bstr] } }   ; SubjectPublicKeyInfo DER
    }

Each COSE_Sign1 is detached (payload nil) over the body bytes; its protected header carries alg
and kid (RFC 9679 thumbprint). The body is a map and a manifest approval signs an encoded
SUIT_Digest (an array), so a signature made for one can never verify as the other.

Invariants enforced:

* a policy decodes only when deterministic CBOR, every role is an approving role, every threshold
  is between 1 and the number of its keys, and no key is listed twice or under two roles (one
  signature never counts for two roles);
* :func:`check_envelope`: every policy role's threshold is met by *distinct* listed keys of that
  role whose COSE_Sign1 verifies over the envelope's manifest digest (two blocks from one key
  count once; a key the policy does not list counts for nothing); the policy has not expired and
  is the device's class's;
* :func:`accept_rotation`: a new policy replaces the current one only when it is for the same
  class, has a higher version, has not expired, keeps the security role, and is signed by a
  threshold of the current policy's security keys and a threshold of its own security keys.

Every refusal is a :class:`manifests.device_rules.DeviceCheckError` (Update Result 5, integrity
check failure, except a document that does not decode: 6) with a stable ``code``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization

from manifests.device_rules import (
    DeviceCheckError,
    FwResult,
    UnsupportedManifestError,
    require_signature,
)
from manifests.suit.cbor import decode_item, dumps
from manifests.suit.constants import EC_ALGS, ED_ALGS
from manifests.suit.cose import parse_sign1, sign1, verify_raw
from manifests.suit.errors import SUITError, SUITUnsupportedError
from manifests.suit.keys import KeyInfo, key_info
from manifests.suit.model import Envelope, SignatureBlock
from manifests.suit.verify import unsupported_features, verify_envelope

POLICY_TYPE = "fwupd-trust-policy"
# The project's approving roles (manifests.policy.APPROVING_ROLES).
ROLES = ("author", "qa", "security", "fleet_operator")
SECURITY = "security"
MAX_POLICY_SIZE = 64 * 1024
MAX_DEPTH = 8


# --- errors ------------------------------------------------------------------------------------
class TrustPolicyError(DeviceCheckError):
    """The device refuses an update or a policy under its trust policy."""

    code = "device.trust_policy"
    fw_result = FwResult.INTEGRITY_CHECK_FAILURE


class TrustPolicyFormatError(TrustPolicyError):
    """The trust-policy document does not decode or breaks a structural rule."""

    code = "device.trust_policy_format"
    fw_result = FwResult.UNSUPPORTED_PACKAGE_TYPE


class TrustThresholdError(TrustPolicyError):
    """An envelope lacks a role's threshold of distinct, listed, verifying keys."""

    code = "device.trust_threshold"


class TrustPolicyExpiredError(TrustPolicyError):
    """The policy (the device's, or the one offered) has expired by the device's clock."""

    code = "device.trust_policy_expired"


class TrustPolicyClassError(TrustPolicyError):
    """The policy or the manifest is for another device class."""

    code = "device.trust_policy_class"


class TrustPolicyRollbackError(TrustPolicyError):
    """The offered policy's version is not above the device's current one."""

    code = "device.trust_policy_rollback"


class TrustPolicyRoleError(TrustPolicyError):
    """The offered policy drops the security role, which signs every later rotation."""

    code = "device.trust_policy_role"


class TrustPolicySignatureError(TrustPolicyError):
    """The offered policy is not signed by a threshold of the current, or of its own, security
    keys."""

    code = "device.trust_policy_signature"


# --- the document ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoleRule:
    threshold: int
    keys: tuple[KeyInfo, ...]

    @property
    def kids(self) -> frozenset[bytes]:
        return frozenset(k.kid for k in self.keys)


@dataclass(frozen=True)
class TrustPolicy:
    class_id: uuid.UUID
    version: int
    expires: dt.datetime
    roles: Mapping[str, RoleRule]
    body: bytes
    signatures: tuple[SignatureBlock, ...]
    raw: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def expired_at(self, now: dt.datetime) -> bool:
        _aware(now)
        return now >= self.expires


@dataclass(frozen=True)
class TrustVerdict:
    """Which listed keys verified, per role (kids)."""

    signed: Mapping[str, frozenset[bytes]]


def _aware(now: dt.datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")


def _spki(key: Any) -> bytes:
    return key_info(key).public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def policy_body(
    *,
    class_id: uuid.UUID,
    version: int,
    expires: dt.datetime,
    roles: Mapping[str, tuple[int, Sequence[Any]]],
) -> bytes:
    """The deterministic CBOR body of a policy: ``roles`` maps a role to (threshold, public or
    private keys). Checked as :func:`decode_policy` would check it."""
    _aware(expires)
    body = dumps(
        {
            "type": POLICY_TYPE,
            "class": class_id.bytes,
            "version": version,
            "expires": int(expires.timestamp()),
            "roles": {
                role: {"threshold": threshold, "keys": [_spki(k) for k in keys]}
                for role, (threshold, keys) in roles.items()
            },
        }
    )
    _parse_body(body)
    return body


def sign_policy(body: bytes, key: Any) -> bytes:
    """One tagged COSE_Sign1 over the policy body (detached), by a private key."""
    _parse_body(body)
    try:
        return sign1(body, key)
    except SUITError as exc:
        raise TrustPolicyFormatError(f"cannot sign the policy: {exc}") from None


def assemble_policy(body: bytes, signatures: Iterable[bytes]) -> bytes:
    """The signed document: the body and its signatures (each block once, in the given order)."""
    blocks: list[bytes] = []
    for raw in signatures:
        if bytes(raw) not in blocks:
            blocks.append(bytes(raw))
    data = dumps([body, [_decoded_block(b) for b in blocks]])
    decode_policy(data)
    return data


def _decoded_block(raw: bytes) -> Any:
    try:
        return decode_item(raw, "signature", MAX_DEPTH, canonical=False)
    except SUITError as exc:
        raise TrustPolicyFormatError(f"signature is not CBOR: {exc}") from None


def is_trust_policy(data: bytes) -> bool:
    """Whether a package looks like a signed trust policy (a 2-array) rather than a SUIT
    envelope (tag 107); the device then processes it as a rotation."""
    return data[:1] == b"\x82"


def _parse_body(body: bytes) -> tuple[uuid.UUID, int, dt.datetime, dict[str, RoleRule]]:
    try:
        doc = decode_item(body, "policy", MAX_DEPTH)
    except SUITError as exc:
        raise TrustPolicyFormatError(f"policy body: {exc}") from None
    if dumps(doc) != body:
        raise TrustPolicyFormatError("policy body is not deterministic CBOR")
    if not isinstance(doc, dict) or set(doc) != {"type", "class", "version", "expires", "roles"}:
        raise TrustPolicyFormatError(
            "policy body must be a map of exactly type, class, version, expires, roles"
        )
    if doc["type"] != POLICY_TYPE:
        raise TrustPolicyFormatError(f"policy type is {doc['type']!r}, not {POLICY_TYPE!r}")
    if not isinstance(doc["class"], bytes) or len(doc["class"]) != 16:
        raise TrustPolicyFormatError("class must be the 16-byte class UUID")
    for name in ("version", "expires"):
        if type(doc[name]) is not int or doc[name] < 0:
            raise TrustPolicyFormatError(f"{name} must be an unsigned integer")
    if not isinstance(doc["roles"], dict) or not doc["roles"]:
        raise TrustPolicyFormatError("roles must be a non-empty map")
    roles: dict[str, RoleRule] = {}
    seen: dict[bytes, str] = {}
    for role, rule in doc["roles"].items():
        if role not in ROLES:
            raise TrustPolicyFormatError(f"role {role!r} is not one of {ROLES}")
        if not isinstance(rule, dict) or set(rule) != {"threshold", "keys"}:
            raise TrustPolicyFormatError(f"role {role}: a map of exactly threshold and keys")
        keys = rule["keys"]
        if not isinstance(keys, list) or not keys:
            raise TrustPolicyFormatError(f"role {role}: keys must be a non-empty array")
        infos: list[KeyInfo] = []
        for der in keys:
            if not isinstance(der, bytes):
                raise TrustPolicyFormatError(f"role {role}: a key is not a byte string")
            try:
                info = key_info(serialization.load_der_public_key(der))
            except (ValueError, TypeError, SUITError) as exc:
                raise TrustPolicyFormatError(f"role {role}: unusable key ({exc})") from None
            if info.kid in seen:
                raise TrustPolicyFormatError(
                    f"key {info.kid.hex()[:16]}… is listed twice ({seen[info.kid]} and {role}): "
                    "one signature must never count twice"
                )
            seen[info.kid] = role
            infos.append(info)
        threshold = rule["threshold"]
        if type(threshold) is not int or not 1 <= threshold <= len(infos):
            raise TrustPolicyFormatError(
                f"role {role}: threshold must be between 1 and its {len(infos)} key(s)"
            )
        roles[role] = RoleRule(threshold=threshold, keys=tuple(infos))
    expires = dt.datetime.fromtimestamp(doc["expires"], tz=dt.UTC)
    return uuid.UUID(bytes=doc["class"]), doc["version"], expires, roles


def body_roles(body: bytes) -> Mapping[str, RoleRule]:
    """The roles of a policy body (a draft's, before any signature), by the same structural
    rules as :func:`decode_policy`."""
    return _parse_body(bytes(body))[3]


def decode_policy(data: bytes) -> TrustPolicy:
    """Structural decoding of a signed trust policy; signatures are not verified here."""
    data = bytes(data)
    if len(data) > MAX_POLICY_SIZE:
        raise TrustPolicyFormatError(f"policy of {len(data)} bytes exceeds {MAX_POLICY_SIZE}")
    try:
        top = decode_item(data, "trust-policy", MAX_DEPTH, canonical=False)
    except SUITError as exc:
        raise TrustPolicyFormatError(f"trust policy: {exc}") from None
    if not isinstance(top, list) or len(top) != 2 or not isinstance(top[0], bytes):
        raise TrustPolicyFormatError("a trust policy is [body bstr, [+ COSE_Sign1]]")
    if not isinstance(top[1], list) or not top[1]:
        raise TrustPolicyFormatError("a trust policy carries at least one signature")
    class_id, version, expires, roles = _parse_body(top[0])
    blocks = []
    for i, item in enumerate(top[1]):
        try:
            block = parse_sign1(dumps(item), f"signatures[{i}]", MAX_DEPTH - 2, i)
        except SUITError as exc:
            raise TrustPolicyFormatError(f"signature {i}: {exc}") from None
        if block.kind != "sign1":
            raise TrustPolicyFormatError(f"signature {i} is not a COSE_Sign1")
        blocks.append(block)
    return TrustPolicy(
        class_id=class_id,
        version=version,
        expires=expires,
        roles=roles,
        body=top[0],
        signatures=tuple(blocks),
        raw=data,
    )


# --- verification ------------------------------------------------------------------------------
def _family_ok(alg: int, info: KeyInfo) -> bool:
    return (alg in EC_ALGS and info.family == "ES256") or (
        alg in ED_ALGS and info.family == "Ed25519"
    )


def _signers(
    blocks: Sequence[SignatureBlock], payload: bytes, keys: Iterable[KeyInfo]
) -> frozenset[bytes]:
    """Distinct kids among ``keys`` with at least one block verifying over ``payload``."""
    by_kid = {k.kid: k for k in keys}
    valid: set[bytes] = set()
    for block in blocks:
        if block.kind != "sign1":
            continue  # a MAC names no signer the policy could list
        if block.kid is not None:
            candidates = [by_kid[block.kid]] if block.kid in by_kid else []
        else:
            candidates = list(by_kid.values())
        for info in candidates:
            if info.kid in valid or not _family_ok(block.alg, info):
                continue
            if verify_raw(block, payload, info):
                valid.add(info.kid)
                break
    return frozenset(valid)


def signature_verifies(block: SignatureBlock, body: bytes, key: Any) -> bool:
    """``block`` is a COSE_Sign1 by ``key`` over the policy ``body`` (False, never an error,
    for any other signature or key)."""
    try:
        return key_info(key).kid in _signers([block], body, [key_info(key)])
    except SUITError:
        return False


def listed_kids(policy: TrustPolicy) -> dict[bytes, str]:
    """Every key the policy lists (kid) and its role."""
    return {kid: role for role, rule in policy.roles.items() for kid in rule.kids}


def check_envelope(envelope: Envelope, policy: TrustPolicy, *, now: dt.datetime) -> TrustVerdict:
    """Refuse unless every role of ``policy`` has its threshold of distinct listed keys whose
    signature verifies over the envelope's manifest digest (the device's install rule)."""
    if policy.expired_at(now):
        raise TrustPolicyExpiredError(
            f"the device's trust policy v{policy.version} expired at {policy.expires.isoformat()}"
        )
    class_id = envelope.manifest.class_id
    if class_id is not None and class_id != policy.class_id:
        raise TrustPolicyClassError(f"manifest class {class_id} is not {policy.class_id}")
    signed = {
        role: _signers(envelope.signatures, envelope.digest_bstr, rule.keys)
        for role, rule in policy.roles.items()
    }
    short = [
        f"{role} {len(signed[role])} of {rule.threshold}"
        for role, rule in sorted(policy.roles.items())
        if len(signed[role]) < rule.threshold
    ]
    if short:
        raise TrustThresholdError(
            f"trust policy v{policy.version} not met: {', '.join(short)} distinct listed keys "
            "signed"
        )
    return TrustVerdict(signed=signed)


def _security_signers(policy: TrustPolicy, rule: RoleRule) -> frozenset[bytes]:
    return _signers(policy.signatures, policy.body, rule.keys)


def accept_initial(data: bytes, *, class_id: uuid.UUID, now: dt.datetime) -> TrustPolicy:
    """The policy a device is provisioned with: its class's, unexpired, with a security role
    whose threshold of keys signed it."""
    policy = decode_policy(data)
    if policy.class_id != class_id:
        raise TrustPolicyClassError(f"policy class {policy.class_id} is not {class_id}")
    if policy.expired_at(now):
        raise TrustPolicyExpiredError(f"policy v{policy.version} has expired")
    rule = policy.roles.get(SECURITY)
    if rule is None:
        raise TrustPolicyRoleError("a trust policy needs a security role")
    if len(_security_signers(policy, rule)) < rule.threshold:
        raise TrustPolicySignatureError(
            f"policy v{policy.version} is not signed by {rule.threshold} of its security keys"
        )
    return policy


def accept_rotation(current: TrustPolicy, data: bytes, *, now: dt.datetime) -> TrustPolicy:
    """The new policy when the device may replace ``current`` with it (TUF root rotation);
    raises the specific refusal otherwise. ``current`` may have expired: rotation is how a
    device whose policy lapsed gets a new one."""
    new = decode_policy(data)
    if new.class_id != current.class_id:
        raise TrustPolicyClassError(f"policy class {new.class_id} is not {current.class_id}")
    if new.version <= current.version:
        raise TrustPolicyRollbackError(
            f"policy version {new.version} is not above the device's {current.version}"
        )
    if new.expired_at(now):
        raise TrustPolicyExpiredError(f"policy v{new.version} expired at {new.expires.isoformat()}")
    new_rule = new.roles.get(SECURITY)
    if new_rule is None:
        raise TrustPolicyRoleError(
            f"policy v{new.version} drops the security role, which signs every rotation"
        )
    current_rule = current.roles[SECURITY]
    by_current = _security_signers(new, current_rule)
    if len(by_current) < current_rule.threshold:
        raise TrustPolicySignatureError(
            f"policy v{new.version} is signed by {len(by_current)} of the "
            f"{current_rule.threshold} current security keys it needs"
        )
    by_new = _security_signers(new, new_rule)
    if len(by_new) < new_rule.threshold:
        raise TrustPolicySignatureError(
            f"policy v{new.version} is signed by {len(by_new)} of the {new_rule.threshold} of "
            "its own security keys it needs"
        )
    return new


# --- what a device holding a policy (hex, as its state stores it) runs -------------------------
_HELD: dict[str, TrustPolicy] = {}
_HELD_MAX = 64


def held_policy(policy_hex: str) -> TrustPolicy | None:
    """The policy a device stores (hex of the signed document; empty: none), decoded once."""
    if not policy_hex:
        return None
    hit = _HELD.get(policy_hex)
    if hit is None:
        hit = decode_policy(bytes.fromhex(policy_hex))
        if len(_HELD) >= _HELD_MAX:
            _HELD.clear()
        _HELD[policy_hex] = hit
    return hit


def verify_for_device(
    envelope: Envelope,
    policy_hex: str,
    *,
    anchors: Sequence[Any],
    now: dt.datetime,
    decrypting: bool = False,
) -> None:
    """The device's signature rule before install: its trust policy's thresholds when it holds
    one, else one signature from its trust anchors (devices provisioned before policies).
    ``decrypting``: the device holds a payload decryption key, so an encrypted payload is one
    it can take; under either rule an envelope it cannot enforce is refused first."""
    problems = unsupported_features(envelope, decrypting=decrypting)
    if problems:
        raise UnsupportedManifestError("; ".join(problems))
    policy = held_policy(policy_hex)
    if policy is not None:
        check_envelope(envelope, policy, now=now)
        return
    try:
        verdict = verify_envelope(envelope, anchors, threshold=1, decrypting=decrypting)
    except SUITUnsupportedError as exc:
        raise UnsupportedManifestError(str(exc)) from None
    require_signature(list(verdict.valid_kids))


def next_policy(
    policy_hex: str,
    data: bytes,
    *,
    class_id: uuid.UUID,
    anchors: Sequence[Any],
    now: dt.datetime,
) -> TrustPolicy:
    """The policy a device takes from a trust-policy package: a rotation of the one it holds;
    holding none, a first policy for its class signed by its own security threshold and by one
    of the device's trust anchors (else anyone could hand the device a policy of their keys)."""
    current = held_policy(policy_hex)
    if current is not None:
        return accept_rotation(current, data, now=now)
    policy = accept_initial(data, class_id=class_id, now=now)
    if not _signers(policy.signatures, policy.body, [key_info(a) for a in anchors]):
        raise TrustPolicySignatureError(
            f"policy v{policy.version} is signed by none of the device's trust anchors"
        )
    return policy
