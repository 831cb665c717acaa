"""Encrypted payloads (draft-ietf-suit-firmware-encryption): pure, no Django, keys are parameters.

What is written (every choice is recorded in docs/suit.md, "Encrypted payloads")::

    SUIT_Encryption_Info = 96([                       / COSE_Encrypt_Tagged /
        << {1: 1} >>,                                 / protected: alg A128GCM /
        {5: iv},                                      / unprotected: 12-byte IV /
        nil,                                          / detached ciphertext /
        [ recipient... ]                              / one per key that may unwrap the CEK /
    ])
    recipient, AES Key Wrap under a class key-encryption key:
        [h'', {1: -3 | -5, 4: kid}, wrapped-cek]     / A128KW for a 16-byte KEK, A256KW for 32 /
    recipient, ECDH-ES + AES-KW to a device's P-256 public key:
        [<< {1: -29} >>, {-1: ephemeral COSE_Key, 4: kid}, wrapped-cek]

The payload is AES-128-GCM under a fresh content-encryption key (CEK) per release, with the
Enc_structure ``["Encrypt", protected, h'']`` as AAD; the detached ciphertext is the GCM output
(ciphertext || 16-byte tag). ECDH-ES + A128KW derives the KEK with HKDF-SHA256 (no salt) over the
ECDH shared secret and the COSE_KDF_Context ``[-3, [nil, nil, nil], [nil, nil, nil], [128,
recipient-protected, "SUIT Payload Encryption"]]``.

Invariants: a decryption returns plaintext only if the CEK unwrapped under the caller's key (AES
Key Wrap's integrity check, RFC 3394) and the GCM tag over the ciphertext and protected header
verified; each failure is its own error class, so a device reports *why* it refused. Nothing
here logs, and no error message carries key material.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from .cbor import CBORTag, dumps
from .constants import TAG_COSE_ENCRYPT
from .errors import SUITError

ALG_A128GCM = 1
ALG_A128CTR = -65534  # RFC 9459; no integrity of its own: the plaintext digest check carries it
ALG_A128KW = -3
ALG_A256KW = -5
ALG_ECDH_ES_A128KW = -29
KDF_OTHER = b"SUIT Payload Encryption"

_H_ALG, _H_KID, _H_IV, _H_EPHEMERAL = 1, 4, 5, -1
_KW_ALGS = {16: ALG_A128KW, 32: ALG_A256KW}
_CEK_BYTES = 16
_IV_BYTES = 12
_CTR_IV_BYTES = 16
CONTENT_ALGS = {"A128GCM": ALG_A128GCM, "A128CTR": ALG_A128CTR}
_TAG_BYTES = 16
_MAX_RECIPIENTS = 10_000  # a release addresses at most this many keys in its signed manifest


class SUITEncryptionError(SUITError):
    """A payload cannot be encrypted or decrypted (base of the encryption errors)."""

    code = "suit.encryption"


class SUITEncryptionInfoError(SUITEncryptionError):
    """The SUIT_Encryption_Info is not a COSE_Encrypt of the algorithms supported here."""

    code = "suit.encryption_info"


class SUITNoRecipientError(SUITEncryptionError):
    """No recipient in the encryption info is addressed to the key identifier given."""

    code = "suit.no_recipient"


class SUITKeyUnwrapError(SUITEncryptionError):
    """The wrapped content key does not unwrap under this key (wrong key or tampered wrap)."""

    code = "suit.key_unwrap"


class SUITCiphertextError(SUITEncryptionError):
    """The AES-GCM tag does not verify (tampered ciphertext, tag or protected header)."""

    code = "suit.ciphertext_auth"


@dataclass(frozen=True)
class KEKRecipient:
    """A key-encryption key (16 or 32 bytes) shared by a device class, named by ``kid``."""

    kid: bytes
    key: bytes


@dataclass(frozen=True)
class ECDHRecipient:
    """One device's P-256 public key, named by ``kid``."""

    kid: bytes
    public_key: ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class EncryptedPayload:
    """What encrypting a payload yields: the detached ciphertext (served to devices) and the
    encoded SUIT_Encryption_Info (goes into the signed manifest)."""

    ciphertext: bytes
    encryption_info: bytes
    kids: tuple[bytes, ...]


@dataclass(frozen=True)
class RecipientInfo:
    """What a recipient says about itself (nothing secret)."""

    alg: int
    kid: bytes | None  # None: the recipient names no key (the draft's ECDH-ES example)


def _kdf_context(recipient_protected: bytes) -> bytes:
    return dumps([ALG_A128KW, [None, None, None], [None, None, None],
                  [128, recipient_protected, KDF_OTHER]])  # fmt: skip


def _ecdh_kek(private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey,
              recipient_protected: bytes) -> bytes:  # fmt: skip
    shared = private.exchange(ec.ECDH(), peer)
    return HKDF(
        algorithm=hashes.SHA256(), length=16, salt=None, info=_kdf_context(recipient_protected)
    ).derive(shared)


def _cose_ec2(public: ec.EllipticCurvePublicKey) -> dict[int, Any]:
    numbers = public.public_numbers()
    return {1: 2, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}


def _ec2_from_cose(key: Any) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, Mapping) or key.get(1) != 2 or key.get(-1) != 1:
        raise SUITEncryptionInfoError("ephemeral key is not an EC2 P-256 COSE_Key")
    x, y = key.get(-2), key.get(-3)
    if type(x) is not bytes or type(y) is not bytes or len(x) != 32 or len(y) != 32:
        raise SUITEncryptionInfoError("ephemeral key coordinates are not 32-byte strings")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    except ValueError:
        raise SUITEncryptionInfoError("ephemeral key is not a point on P-256") from None


def _enc_structure(protected: bytes) -> bytes:
    return dumps(["Encrypt", protected, b""])


def _wrap_for(recipient: KEKRecipient | ECDHRecipient, cek: bytes) -> list[Any]:
    if type(recipient.kid) is not bytes or not recipient.kid:
        raise SUITEncryptionError("a recipient's kid must be non-empty bytes")
    if isinstance(recipient, KEKRecipient):
        alg = _KW_ALGS.get(len(recipient.key)) if type(recipient.key) is bytes else None
        if alg is None:
            raise SUITEncryptionError("a key-encryption key is 16 or 32 bytes")
        return [b"", {_H_ALG: alg, _H_KID: recipient.kid}, aes_key_wrap(recipient.key, cek)]
    if not isinstance(recipient, ECDHRecipient):
        raise SUITEncryptionError(f"unknown recipient type {type(recipient).__name__}")
    if not isinstance(recipient.public_key, ec.EllipticCurvePublicKey) or not isinstance(
        recipient.public_key.curve, ec.SECP256R1
    ):
        raise SUITEncryptionError("an ECDH-ES recipient key must be a P-256 public key")
    protected = dumps({_H_ALG: ALG_ECDH_ES_A128KW})
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    kek = _ecdh_kek(ephemeral, recipient.public_key, protected)
    unprotected = {_H_EPHEMERAL: _cose_ec2(ephemeral.public_key()), _H_KID: recipient.kid}
    return [protected, unprotected, aes_key_wrap(kek, cek)]


def encrypt_payload(
    plaintext: bytes,
    recipients: Sequence[KEKRecipient | ECDHRecipient],
    *,
    content_key: bytes | None = None,
    iv: bytes | None = None,
    content_alg: str = "A128GCM",
) -> EncryptedPayload:
    """Encrypt ``plaintext`` under a fresh CEK (``content_key`` only for fixed test vectors) and
    wrap the CEK once per recipient. Each call yields a new CEK: one per release.

    ``content_alg``: "A128GCM" (default, authenticated) or "A128CTR" (the draft's choice for a
    device that decrypts while streaming into flash: no tag, the IV is the initial counter block,
    integrity rests on the plaintext's digest in the signed manifest)."""
    if not recipients:
        raise SUITEncryptionError("an encrypted payload needs at least one recipient")
    if len(recipients) > _MAX_RECIPIENTS:
        raise SUITEncryptionError(f"more than {_MAX_RECIPIENTS} recipients")
    kids = [r.kid for r in recipients]
    if len(set(kids)) != len(kids):
        raise SUITEncryptionError("two recipients share a kid")
    if content_alg not in CONTENT_ALGS:
        raise SUITEncryptionError(f"content_alg must be one of {sorted(CONTENT_ALGS)}")
    ctr = content_alg == "A128CTR"
    iv_bytes = _CTR_IV_BYTES if ctr else _IV_BYTES
    cek = os.urandom(_CEK_BYTES) if content_key is None else content_key
    nonce = os.urandom(iv_bytes) if iv is None else iv
    if len(cek) != _CEK_BYTES or len(nonce) != iv_bytes:
        raise SUITEncryptionError(f"{content_alg} takes a 16-byte key and a {iv_bytes}-byte IV")
    if ctr:
        # The draft's AES-CTR layout: alg and IV unprotected, no Enc_structure (no AAD).
        protected = b""
        unprotected: dict[int, Any] = {_H_ALG: ALG_A128CTR, _H_IV: nonce}
        encryptor = Cipher(algorithms.AES(cek), modes.CTR(nonce)).encryptor()
        ciphertext = encryptor.update(bytes(plaintext)) + encryptor.finalize()
    else:
        protected = dumps({_H_ALG: ALG_A128GCM})
        unprotected = {_H_IV: nonce}
        ciphertext = AESGCM(cek).encrypt(nonce, bytes(plaintext), _enc_structure(protected))
    body = [protected, unprotected, None, [_wrap_for(r, cek) for r in recipients]]
    info = dumps(CBORTag(TAG_COSE_ENCRYPT, body))
    return EncryptedPayload(ciphertext=ciphertext, encryption_info=info, kids=tuple(kids))


@dataclass(frozen=True)
class _Parsed:
    protected: bytes
    alg: int
    iv: bytes
    # alg, kid (None: the recipient names no key), wrapped cek, the recipient itself
    recipients: tuple[tuple[int, bytes | None, bytes, Any], ...]


EncryptionInfo = bytes | CBORTag  # encoded, or as the decoder returns it (Manifest.encryption_info)


def _parse(encryption_info: EncryptionInfo) -> _Parsed:
    if isinstance(encryption_info, CBORTag):
        item = encryption_info
    else:
        try:
            item = cbor2.loads(bytes(encryption_info))
        except Exception:
            raise SUITEncryptionInfoError("encryption-info is not one CBOR item") from None
    if not isinstance(item, cbor2.CBORTag) or item.tag != TAG_COSE_ENCRYPT:
        raise SUITEncryptionInfoError("encryption-info is not a COSE_Encrypt tagged 96")
    body = item.value
    if not isinstance(body, list | tuple) or len(body) != 4:
        raise SUITEncryptionInfoError("COSE_Encrypt is not an array of 4")
    protected, unprotected, ciphertext, recipients = body
    if type(protected) is not bytes or not isinstance(unprotected, Mapping):
        raise SUITEncryptionInfoError("COSE_Encrypt headers are malformed")
    try:
        header = cbor2.loads(protected) if protected else {}
    except Exception:
        raise SUITEncryptionInfoError("COSE_Encrypt protected header is not CBOR") from None
    if not isinstance(header, Mapping):
        raise SUITEncryptionInfoError("COSE_Encrypt protected header is not a map")
    content_alg = header.get(_H_ALG, unprotected.get(_H_ALG))
    if content_alg == ALG_A128GCM and header.get(_H_ALG) == ALG_A128GCM:
        iv_bytes = _IV_BYTES
    elif content_alg == ALG_A128CTR:
        iv_bytes = _CTR_IV_BYTES
    else:
        raise SUITEncryptionInfoError(
            "content encryption is not A128GCM (alg 1, protected) or A128CTR (alg -65534)"
        )
    iv = unprotected.get(_H_IV)
    if type(iv) is not bytes or len(iv) != iv_bytes:
        raise SUITEncryptionInfoError(f"the IV is not {iv_bytes} bytes")
    if ciphertext is not None:
        raise SUITEncryptionInfoError("the ciphertext must be detached (nil)")
    if not isinstance(recipients, list | tuple) or not recipients:
        raise SUITEncryptionInfoError("COSE_Encrypt has no recipients")
    parsed = []
    for i, r in enumerate(recipients):
        if not isinstance(r, list | tuple) or len(r) != 3:
            raise SUITEncryptionInfoError(f"recipient[{i}] is not an array of 3")
        r_protected, r_unprotected, wrapped = r
        if type(r_protected) is not bytes or not isinstance(r_unprotected, Mapping):
            raise SUITEncryptionInfoError(f"recipient[{i}] headers are malformed")
        if type(wrapped) is not bytes:
            raise SUITEncryptionInfoError(f"recipient[{i}] wrapped key is not bytes")
        try:
            r_header = cbor2.loads(r_protected) if r_protected else {}
        except Exception:
            raise SUITEncryptionInfoError(f"recipient[{i}] protected is not CBOR") from None
        if not isinstance(r_header, Mapping):
            raise SUITEncryptionInfoError(f"recipient[{i}] protected is not a map")
        alg = r_header.get(_H_ALG, r_unprotected.get(_H_ALG))
        kid = r_unprotected.get(_H_KID, r_header.get(_H_KID))
        if alg not in (ALG_A128KW, ALG_A256KW, ALG_ECDH_ES_A128KW):
            raise SUITEncryptionInfoError(f"recipient[{i}] is not A128KW/A256KW/ECDH-ES+A128KW")
        if kid is not None and type(kid) is not bytes:
            raise SUITEncryptionInfoError(f"recipient[{i}] kid is not a byte string")
        parsed.append((alg, kid, wrapped, r))
    return _Parsed(protected=protected, alg=content_alg, iv=iv, recipients=tuple(parsed))


def encode_encryption_info(encryption_info: EncryptionInfo) -> bytes:
    """The deterministic CBOR of an encryption info, the same for its encoded bytes and for the
    decoder's CBORTag (how a stored encryption info is matched with a manifest's)."""
    _parse(encryption_info)
    if isinstance(encryption_info, CBORTag):
        return dumps(encryption_info)
    return dumps(cbor2.loads(bytes(encryption_info)))


def recipients_of(encryption_info: EncryptionInfo) -> tuple[RecipientInfo, ...]:
    """Algorithm and kid of every recipient (what ``inspect`` and the planner look at)."""
    return tuple(RecipientInfo(alg=a, kid=k) for a, k, _, _ in _parse(encryption_info).recipients)


def unwrap_content_key(
    encryption_info: EncryptionInfo, *, kid: bytes, key: bytes | ec.EllipticCurvePrivateKey
) -> bytes:
    """The CEK from the recipient addressed to ``kid``: ``key`` is the class KEK (bytes) or the
    device's P-256 private key."""
    parsed = _parse(encryption_info)
    # The recipients addressed to ``kid``; failing those, the ones that name no key (each is
    # tried: only the right key passes AES-KW's integrity check).
    candidates = [r for r in parsed.recipients if r[1] == kid] or [
        r for r in parsed.recipients if r[1] is None
    ]
    if not candidates:
        raise SUITNoRecipientError("no recipient is addressed to this device's key")
    failures: list[SUITKeyUnwrapError] = []
    for alg, _, wrapped, recipient in candidates:
        try:
            return _unwrap(alg, wrapped, recipient, key)
        except SUITKeyUnwrapError as exc:
            failures.append(exc)
    raise failures[0]


def _unwrap(
    alg: int, wrapped: bytes, recipient: Any, key: bytes | ec.EllipticCurvePrivateKey
) -> bytes:
    try:
        if alg == ALG_ECDH_ES_A128KW:
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise SUITKeyUnwrapError("an ECDH-ES recipient needs the device's private key")
            ephemeral = _ec2_from_cose(recipient[1].get(_H_EPHEMERAL))
            kek = _ecdh_kek(key, ephemeral, recipient[0])
        else:
            if type(key) is not bytes or _KW_ALGS.get(len(key)) != alg:
                raise SUITKeyUnwrapError("the key does not fit the recipient's AES-KW size")
            kek = key
        cek = aes_key_unwrap(kek, wrapped)
    except InvalidUnwrap:
        raise SUITKeyUnwrapError(
            "the content key does not unwrap (wrong key, or the wrapped key was altered)"
        ) from None
    except ValueError:
        raise SUITKeyUnwrapError("the wrapped content key is malformed") from None
    if len(cek) != _CEK_BYTES:
        raise SUITKeyUnwrapError("the unwrapped content key is not 16 bytes")
    return cek


def decrypt_payload(
    ciphertext: bytes,
    encryption_info: EncryptionInfo,
    *,
    kid: bytes,
    key: bytes | ec.EllipticCurvePrivateKey,
) -> bytes:
    """The plaintext, or a :class:`SUITEncryptionError` saying which check failed."""
    parsed = _parse(encryption_info)
    cek = unwrap_content_key(encryption_info, kid=kid, key=key)
    if parsed.alg == ALG_A128CTR:
        # No integrity here: the caller checks the plaintext's digest (the device always does).
        decryptor = Cipher(algorithms.AES(cek), modes.CTR(parsed.iv)).decryptor()
        return decryptor.update(bytes(ciphertext)) + decryptor.finalize()
    if len(ciphertext) < _TAG_BYTES:
        raise SUITCiphertextError("the ciphertext is shorter than the GCM tag")
    try:
        return AESGCM(cek).decrypt(parsed.iv, bytes(ciphertext), _enc_structure(parsed.protected))
    except InvalidTag:
        raise SUITCiphertextError(
            "the AES-GCM tag does not verify (ciphertext or tag altered)"
        ) from None
