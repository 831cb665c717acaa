"""COSE_Sign1 and COSE_Mac0 with detached payload, as the SUIT authentication wrapper uses them
(RFC 9052).

The payload is the encoded SUIT_Digest of the manifest; it is never carried in the block
(``payload`` is nil) and is supplied from the envelope when verifying:
``Sig_structure = ["Signature1", protected, h'', payload]``,
``MAC_structure = ["MAC0", protected, h'', payload]`` (HMAC 256/256, alg 5, a 32-byte tag).
Signing writes the fully specified algorithms ESP256 (-9) and Ed25519 (-19) of the MTI profiles;
-7 (ES256) and -8 (EdDSA) blocks still verify.
"""

from __future__ import annotations

import hashlib
import hmac
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .cbor import CBORTag, bstr_header, decode_item, dumps
from .constants import (
    ALG_HMAC256,
    EC_ALGS,
    ED_ALGS,
    HDR_ALG,
    HDR_CRIT,
    HDR_KID,
    MAC_ALGS,
    MAC_LENGTH,
    SIGN_ALG_FOR_FAMILY,
    SIGNATURE_ALGS,
    SIGNATURE_LENGTH,
    TAG_COSE_MAC0,
    TAG_COSE_SIGN1,
)
from .errors import (
    SUITAlgorithmError,
    SUITCOSEError,
    SUITError,
    SUITInternalError,
    SUITKeyError,
    SUITKeyMismatchError,
    SUITTagError,
    SUITTypeError,
)
from .keys import KeyInfo, key_info
from .model import SignatureBlock

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_SIG1_PREFIX = b"\x84\x6aSignature1"  # array(4), tstr "Signature1"
_MAC0_PREFIX = b"\x84\x64MAC0"  # array(4), tstr "MAC0"
_UNDERSTOOD_CRIT = frozenset({HDR_ALG, HDR_KID})


def _to_be_authenticated(prefix: bytes, protected: bytes, payload: bytes) -> bytes:
    """Encoded ``[context, protected, h'', payload]`` (built directly, no re-encoding)."""
    if len(protected) == 38 and len(payload) == 38:
        # the product's blocks ({1: alg, 4: kid}) over a SHA-256 SUIT_Digest: both 0x58 0x26
        return b"".join((prefix, b"\x58\x26", protected, b"\x40\x58\x26", payload))
    return b"".join(
        (
            prefix,
            bstr_header(len(protected)),
            protected,
            b"\x40",
            bstr_header(len(payload)),
            payload,
        )
    )


# DER heads for r || s when neither has a leading zero byte (all but ~1/128 of signatures),
# indexed by (r's top bit set) * 2 + (s's top bit set): SEQUENCE, INTEGER r (0-padded when its
# top bit is set, as DER integers are signed), then the head of INTEGER s.
_DER_PARTS = (
    (b"\x30\x44\x02\x20", b"\x02\x20"),
    (b"\x30\x45\x02\x20", b"\x02\x21\x00"),
    (b"\x30\x45\x02\x21\x00", b"\x02\x20"),
    (b"\x30\x46\x02\x21\x00", b"\x02\x21\x00"),
)


def _der_signature(raw: bytes) -> bytes:
    """DER ``ECDSA-Sig-Value`` of a raw P-256 ``r || s`` (what OpenSSL verifies).

    Same bytes as ``encode_dss_signature`` of the two integers (a test compares them), built
    with byte operations: each INTEGER is minimal, with a 0 byte when its top bit is set.
    """
    r0 = raw[0]
    s0 = raw[32]
    if r0 and s0:
        head, middle = _DER_PARTS[(r0 >= 0x80) * 2 + (s0 >= 0x80)]
        return b"".join((head, raw[:32], middle, raw[32:]))
    r = raw[:32].lstrip(b"\0")
    s = raw[32:].lstrip(b"\0")
    if not r or r[0] >= 0x80:
        r = b"\0" + r
    if not s or s[0] >= 0x80:
        s = b"\0" + s
    lr = len(r)
    ls = len(s)
    return b"".join((bytes((0x30, lr + ls + 4, 2, lr)), r, bytes((2, ls)), s))


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Encoded ``["Signature1", protected, h'', payload]``."""
    return _to_be_authenticated(_SIG1_PREFIX, protected, payload)


def _check_labels(header: dict[Any, Any], where: str) -> None:
    for label in header:
        if type(label) is not int and type(label) is not str:
            raise SUITTypeError(f"header label {label!r} is not an integer or text", path=where)


def mac_structure(protected: bytes, payload: bytes) -> bytes:
    """Encoded ``["MAC0", protected, h'', payload]``."""
    return _to_be_authenticated(_MAC0_PREFIX, protected, payload)


def symmetric_kid(key: bytes) -> bytes:
    """RFC 9679 thumbprint of a symmetric COSE_Key ``{1: 4, -1: k}`` (its kid here)."""
    return hashlib.sha256(b"\xa2\x01\x04\x20" + bstr_header(len(key)) + key).digest()


def parse_sign1(raw: bytes, where: str, max_depth: int, index: int = 0) -> SignatureBlock:
    """Structural checks of one authentication block: a COSE_Sign1 (tagged 18 or untagged) or a
    tagged COSE_Mac0 (17); returns its parsed view."""
    obj = decode_item(raw, where, max_depth, canonical=False)
    tagged = False
    kind = "sign1"
    if type(obj) is CBORTag:
        if obj.tag == TAG_COSE_MAC0:
            kind = "mac0"
        elif obj.tag != TAG_COSE_SIGN1:
            raise SUITTagError(
                f"authentication block has tag {obj.tag}; COSE_Sign1 (18) and COSE_Mac0 (17) "
                "are the blocks SUIT uses here",
                path=where,
            )
        obj = obj.value
        tagged = True
    name = "COSE_Mac0" if kind == "mac0" else "COSE_Sign1"
    if type(obj) is not list or len(obj) != 4:
        raise SUITCOSEError(f"{name} must be an array of 4 items", path=where)
    protected, unprotected, payload, signature = obj
    if type(protected) is not bytes:
        raise SUITTypeError("protected header must be a byte string", path=where + "/protected")
    if type(unprotected) is not dict:
        raise SUITTypeError("unprotected header must be a map", path=where + "/unprotected")
    if payload is not None:
        raise SUITCOSEError("payload must be nil (detached SUIT_Digest)", path=where + "/payload")
    if type(signature) is not bytes:
        what = "tag" if kind == "mac0" else "signature"
        raise SUITTypeError(f"{what} must be a byte string", path=where + "/" + what)
    if protected:
        phdr = decode_item(protected, where + "/protected", max_depth - 2, canonical=False)
        if type(phdr) is not dict:
            raise SUITTypeError("protected header must encode a map", path=where + "/protected")
    else:
        phdr = {}
    _check_labels(phdr, where + "/protected")
    _check_labels(unprotected, where + "/unprotected")
    for label in phdr.keys() & unprotected.keys():
        if label != HDR_KID:
            raise SUITCOSEError(
                f"header label {label} appears in both protected and unprotected buckets",
                path=where,
            )
    if HDR_CRIT in unprotected:
        raise SUITCOSEError("crit must be in the protected header", path=where + "/unprotected")
    crit = phdr.get(HDR_CRIT)
    if crit is not None:
        if type(crit) is not list or not crit:
            raise SUITCOSEError("crit must be a non-empty array", path=where + "/protected/crit")
        for label in crit:
            if type(label) is not int or label not in _UNDERSTOOD_CRIT or label not in phdr:
                raise SUITCOSEError(
                    f"critical header {label!r} is not understood", path=where + "/protected/crit"
                )
    if HDR_ALG not in phdr:
        if HDR_ALG in unprotected:
            raise SUITCOSEError("alg must be in the protected header", path=where + "/unprotected")
        raise SUITCOSEError("protected header has no alg", path=where + "/protected")
    alg = phdr[HDR_ALG]
    if type(alg) is not int:
        raise SUITAlgorithmError(f"alg {alg!r} is not an integer", path=where + "/protected/alg")
    if kind == "mac0":
        if alg not in MAC_ALGS:
            raise SUITAlgorithmError(
                f"MAC algorithm {alg} is not supported (5, HMAC 256/256)",
                path=where + "/protected/alg",
            )
    elif alg not in SIGNATURE_ALGS:
        raise SUITAlgorithmError(
            f"signature algorithm {alg} is not supported (-7, -9, -8, -19)",
            path=where + "/protected/alg",
        )
    kid_p = phdr.get(HDR_KID)
    kid_u = unprotected.get(HDR_KID)
    if kid_p is not None and type(kid_p) is not bytes:
        raise SUITTypeError("kid must be a byte string", path=where + "/protected/kid")
    if kid_u is not None and type(kid_u) is not bytes:
        raise SUITTypeError("kid must be a byte string", path=where + "/unprotected/kid")
    if kid_p is not None and kid_u is not None and kid_p != kid_u:
        raise SUITCOSEError("protected and unprotected kid differ", path=where)
    if kind == "mac0":
        if len(signature) != MAC_LENGTH:
            raise SUITCOSEError(
                f"tag is {len(signature)} bytes; HMAC 256/256 needs {MAC_LENGTH}",
                path=where + "/tag",
            )
    elif len(signature) != SIGNATURE_LENGTH:
        raise SUITCOSEError(
            f"signature is {len(signature)} bytes; {SIGNATURE_ALGS[alg]} needs {SIGNATURE_LENGTH}",
            path=where + "/signature",
        )
    return SignatureBlock(
        alg=alg,
        kid=kid_p if kid_p is not None else kid_u,
        raw=raw,
        protected=protected,
        signature=signature,
        unprotected=MappingProxyType(unprotected),
        tagged=tagged,
        kid_protected=kid_p is not None,
        index=index,
        kind=kind,
    )


def sign1(digest_bstr: bytes, key: Any) -> bytes:
    """A tagged COSE_Sign1 over ``digest_bstr`` (detached), kid in the protected header; alg
    ESP256 (-9) for a P-256 key, Ed25519 (-19) for an Ed25519 key."""
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise SUITKeyError(f"signing needs a private key, got {type(key).__name__}")
    info = key_info(key)
    alg = SIGN_ALG_FOR_FAMILY[info.family]
    protected = dumps({HDR_ALG: alg, HDR_KID: info.kid})
    tbs = sig_structure(protected, digest_bstr)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(tbs, _ECDSA_SHA256))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(tbs)
    return dumps(CBORTag(TAG_COSE_SIGN1, [protected, {}, None, signature]))


def check_mac_key(key: bytes) -> None:
    if type(key) is not bytes or len(key) < MAC_LENGTH:
        raise SUITKeyError(f"an HMAC 256/256 key must be at least {MAC_LENGTH} bytes")


def mac0(digest_bstr: bytes, key: bytes) -> bytes:
    """A tagged COSE_Mac0 (HMAC 256/256) over ``digest_bstr`` (detached), kid = RFC 9679
    thumbprint of the symmetric key, in the protected header."""
    check_mac_key(key)
    protected = dumps({HDR_ALG: ALG_HMAC256, HDR_KID: symmetric_kid(key)})
    tag = hmac.new(key, mac_structure(protected, digest_bstr), hashlib.sha256).digest()
    return dumps(CBORTag(TAG_COSE_MAC0, [protected, {}, None, tag]))


def verify_mac(block: SignatureBlock, payload: bytes, key: bytes) -> bool:
    """True iff the COSE_Mac0 ``block``'s tag over ``payload`` is right for ``key``."""
    expected = hmac.new(key, mac_structure(block.protected, payload), hashlib.sha256).digest()
    return hmac.compare_digest(expected, block.signature)


def check_alg_for_key(alg: int, info: KeyInfo) -> None:
    """Raise SUITKeyMismatchError unless the key type is the one ``alg`` requires."""
    if alg in EC_ALGS:
        if info.family != "ES256":
            raise SUITKeyMismatchError(
                f"alg {alg} ({SIGNATURE_ALGS[alg]}) needs a P-256 key, not {info.family}"
            )
    elif alg in ED_ALGS:
        if info.family != "Ed25519":
            raise SUITKeyMismatchError(
                f"alg {alg} ({SIGNATURE_ALGS[alg]}) needs an Ed25519 key, not {info.family}"
            )
    else:
        raise SUITAlgorithmError(f"signature algorithm {alg} is not supported")


def verify_raw(block: SignatureBlock, payload: bytes, info: KeyInfo) -> bool:
    """Cryptographic check of ``block`` over ``payload`` with a key already matched to its alg."""
    tbs = sig_structure(block.protected, payload)
    try:
        if info.family == "ES256":
            info.public.verify(_der_signature(block.signature), tbs, _ECDSA_SHA256)  # type: ignore[call-arg]
        else:
            info.public.verify(block.signature, tbs)  # type: ignore[call-arg]
    except InvalidSignature:
        return False
    return True


def parse_signature_block(data: bytes, *, max_depth: int = 8) -> SignatureBlock:
    """Structural checks of one uploaded COSE_Sign1 block (as approvers upload them).

    Raises a SUITDecodeError subclass (path ``block``) for anything but a detached COSE_Sign1
    with a supported alg and a 64-byte signature; the signature itself is not verified here.
    """
    try:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SUITTypeError(f"block must be bytes, got {type(data).__name__}", path="block")
        block = parse_sign1(bytes(data), "block", max_depth)
        if block.kind != "sign1":
            raise SUITCOSEError(
                "an uploaded block must be a COSE_Sign1: a COSE_Mac0 names no signer",
                path="block",
            )
        return block
    except SUITError:
        raise
    except Exception as exc:
        raise SUITInternalError(
            f"unexpected {type(exc).__name__} parsing block", path="block"
        ) from exc
