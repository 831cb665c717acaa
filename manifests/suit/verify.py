"""Signature verification over a decoded envelope.

Threshold counting is by *distinct key* (RFC 9679 kid of the key that verified), never by
signature block: two blocks from one key, or one key passed twice, count once. COSE_Mac0 blocks
(HMAC 256/256) count when a symmetric key is given (``mac_keys``); without one an envelope that
only a MAC could authenticate is refused as unsupported (``suit.unsupported``), not as malformed.
An envelope whose payload is encrypted (parameter 19) is refused as unsupported too: nothing here
can decrypt it, so nothing here may vouch for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .constants import EC_ALGS, ED_ALGS
from .cose import check_alg_for_key, check_mac_key, symmetric_kid, verify_mac, verify_raw
from .errors import (
    SUITError,
    SUITInternalError,
    SUITKeyMismatchError,
    SUITSignatureError,
    SUITUnsupportedError,
)
from .keys import KeyInfo, key_info
from .model import Envelope, SignatureBlock, VerificationResult, build_frozen


def verify_signature_block(envelope: Envelope, block: SignatureBlock, public_key: Any) -> bool:
    """True iff ``block`` is a valid signature by ``public_key`` over ``envelope``'s digest.

    False for a bad signature or a block whose kid names another key. Raises
    :class:`SUITKeyMismatchError` when the key type cannot produce ``block.alg`` (e.g. an Ed25519
    key for an ES256 block) and :class:`SUITKeyError` for unsupported keys.
    """
    try:
        if block.kind == "mac0":
            raise SUITUnsupportedError(
                f"signature[{block.index}] is a COSE_Mac0; verify it with a symmetric key "
                "(verify_envelope(..., mac_keys=...))"
            )
        info = key_info(public_key)
        check_alg_for_key(block.alg, info)
        if block.kid is not None and block.kid != info.kid:
            return False
        return verify_raw(block, envelope.digest_bstr, info)
    except SUITError:
        raise
    except Exception as exc:
        raise SUITInternalError(f"unexpected {type(exc).__name__} while verifying") from exc


def _family_ok(alg: int, info: KeyInfo) -> bool:
    return (alg in EC_ALGS and info.family == "ES256") or (
        alg in ED_ALGS and info.family == "Ed25519"
    )


def unsupported_features(envelope: Envelope, *, decrypting: bool = False) -> list[str]:
    """What in a valid envelope this product cannot enforce (empty when everything is).

    ``decrypting``: the caller holds a decryption key and decrypts the payload after this
    verification (``suit.decrypt_payload``), so an encrypted payload is enforceable."""
    out = []
    if envelope.manifest.encryption_info and not decrypting:
        out.append(
            "the payload is encrypted (suit-parameter-encryption-info); decryption is not "
            "supported here"
        )
    return out


def _mac_kids(mac_keys: Sequence[bytes]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key in mac_keys:
        check_mac_key(key)
        out.setdefault(symmetric_kid(key), key)
    return out


def verify_envelope(
    envelope: Envelope,
    public_keys: Sequence[Any],
    *,
    threshold: int = 1,
    mac_keys: Sequence[bytes] = (),
    decrypting: bool = False,
) -> VerificationResult:
    """Count distinct given keys with at least one valid block; ok iff count >= threshold.

    Raises :class:`SUITUnsupportedError` for an encrypted payload, and when the threshold is not
    met but COSE_Mac0 blocks are there and no symmetric key was given to check them.
    """
    if type(threshold) is not int or threshold < 1:
        raise SUITSignatureError(f"threshold must be an integer >= 1, got {threshold!r}")
    if envelope.manifest.encryption_info and not decrypting:
        raise SUITUnsupportedError("; ".join(unsupported_features(envelope)))
    try:
        macs = _mac_kids(mac_keys) if mac_keys else {}
        keys: dict[bytes, KeyInfo] = {}
        for key in public_keys:
            info = key_info(key)
            keys.setdefault(info.kid, info)
        valid: list[bytes] = []
        reasons: list[str] = []
        if not envelope.signatures:
            reasons.append("the envelope carries no signature")
        payload = envelope.digest_bstr
        unchecked_macs = 0
        for block in envelope.signatures:
            alg = block.alg
            if block.kind == "mac0":
                if not macs:
                    unchecked_macs += 1
                    reasons.append(f"signature[{block.index}]: COSE_Mac0 and no symmetric key")
                    continue
                if block.kid is None:
                    mac_candidates = list(macs.items())
                elif block.kid in macs:
                    mac_candidates = [(block.kid, macs[block.kid])]
                else:
                    mac_candidates = []
                for kid, secret in mac_candidates:
                    if kid not in valid and verify_mac(block, payload, secret):
                        valid.append(kid)
                        break
                else:
                    reasons.append(f"signature[{block.index}]: MAC does not verify")
                continue
            candidates: Sequence[KeyInfo]
            if block.kid is not None:
                named = keys.get(block.kid)
                if named is None:
                    reasons.append(
                        f"signature[{block.index}]: kid {block.kid.hex()[:16]}… is not among "
                        "the keys"
                    )
                    continue
                candidates = (named,)
            else:
                candidates = [i for i in keys.values() if _family_ok(alg, i)]
                if not candidates:
                    reasons.append(f"signature[{block.index}]: no key of the type alg {alg} needs")
                    continue
            tried = 0
            for info in candidates:
                if info.kid in valid:
                    continue  # this key already counts; a second block from it adds nothing
                if not _family_ok(alg, info):
                    try:
                        check_alg_for_key(alg, info)  # raises the specific mismatch
                    except SUITKeyMismatchError as exc:
                        reasons.append(f"signature[{block.index}]: {exc}")
                        continue
                tried += 1
                if verify_raw(block, payload, info):
                    valid.append(info.kid)
                    break
            else:
                if tried:
                    who = (
                        f"key {block.kid.hex()[:16]}…"
                        if block.kid is not None
                        else f"any of {tried} uncounted key(s)"
                    )
                    reasons.append(
                        f"signature[{block.index}]: signature does not verify with {who}"
                    )
        ok = len(valid) >= threshold
        if not ok and unchecked_macs:
            raise SUITUnsupportedError(
                f"{unchecked_macs} COSE_Mac0 authentication block(s) and no symmetric key "
                f"configured to verify them ({len(valid)} of {threshold} required keys verified)"
            )
        if not ok:
            reasons.append(f"{len(valid)} of {threshold} required distinct keys signed")
        return build_frozen(
            VerificationResult,
            {
                "ok": ok,
                "threshold": threshold,
                "valid_kids": tuple(valid),
                "reasons": tuple(reasons),
            },
        )
    except SUITError:
        raise
    except Exception as exc:
        raise SUITInternalError(f"unexpected {type(exc).__name__} while verifying") from exc
