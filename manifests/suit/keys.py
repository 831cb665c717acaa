"""Signing keys: loading, generation, PEM export and the RFC 9679 key id.

Only ECDSA P-256 (ES256) and Ed25519 keys are accepted anywhere in the codec; anything else is a
:class:`SUITKeyError` at the point it enters, so signature code never meets a surprising key type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import SUITKeyError

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
AnyKey: TypeAlias = PrivateKey | PublicKey
KeyFamily = Literal["ES256", "Ed25519"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the codec needs of a key, computed once per key object."""

    public: PublicKey
    kid: bytes
    family: KeyFamily


def _check_ec(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise SUITKeyError(f"ECDSA curve {key.curve.name} is not supported (only P-256)")


def _public_of(key: Any) -> tuple[PublicKey, KeyFamily]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key(), "Ed25519"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, "Ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _check_ec(key)
        return key.public_key(), "ES256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        _check_ec(key)
        return key, "ES256"
    raise SUITKeyError(f"unsupported key type {type(key).__name__} (only P-256 and Ed25519)")


def _thumbprint(public: PublicKey) -> bytes:
    # RFC 9679: SHA-256 over the deterministic CBOR of the required COSE_Key members only.
    if isinstance(public, ec.EllipticCurvePublicKey):
        numbers = public.public_numbers()
        x = numbers.x.to_bytes(32, "big")
        y = numbers.y.to_bytes(32, "big")
        # {1: 2 (EC2), -1: 1 (P-256), -2: x, -3: y}
        encoded = b"\xa4\x01\x02\x20\x01\x21\x58\x20" + x + b"\x22\x58\x20" + y
    else:
        # {1: 1 (OKP), -1: 6 (Ed25519), -2: x}
        encoded = b"\xa3\x01\x01\x20\x06\x21\x58\x20" + public.public_bytes_raw()
    return hashlib.sha256(encoded).digest()


# Keyed by id(); the entry holds the key object itself, so the id cannot be reused while cached.
_INFO_CACHE: dict[int, tuple[Any, KeyInfo]] = {}
_INFO_CACHE_MAX = 4096


def key_info(key: Any) -> KeyInfo:
    """Public key, kid and family of a private or public key (cached per key object)."""
    hit = _INFO_CACHE.get(id(key))
    if hit is not None and hit[0] is key:
        return hit[1]
    public, family = _public_of(key)
    info = KeyInfo(public=public, kid=_thumbprint(public), family=family)
    if len(_INFO_CACHE) >= _INFO_CACHE_MAX:
        _INFO_CACHE.clear()
    _INFO_CACHE[id(key)] = (key, info)
    return info


def kid_for_public_key(key: Any) -> bytes:
    """RFC 9679 COSE Key Thumbprint (SHA-256) of the key; private keys give their public kid."""
    return key_info(key).kid


def key_algorithm(key: Any) -> KeyFamily:
    """``"ES256"`` for a P-256 key, ``"Ed25519"`` for an Ed25519 key."""
    return key_info(key).family


def generate_private_key(alg: str) -> PrivateKey:
    """A fresh private key for ``"ES256"`` (P-256) or ``"Ed25519"`` (``"EdDSA"`` accepted)."""
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg in ("Ed25519", "EdDSA"):
        return ed25519.Ed25519PrivateKey.generate()
    raise SUITKeyError(f"unsupported algorithm {alg!r} (use 'ES256' or 'Ed25519')")


def load_private_key_pem(data: bytes, password: bytes | None = None) -> PrivateKey:
    """A P-256 or Ed25519 private key from PEM; SUITKeyError for anything else."""
    try:
        key = serialization.load_pem_private_key(bytes(data), password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SUITKeyError(f"not a readable private key PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise SUITKeyError(f"unsupported private key type {type(key).__name__}")
    _public_of(key)
    return key


def load_public_key_pem(data: bytes) -> PublicKey:
    """A P-256 or Ed25519 public key from PEM (SubjectPublicKeyInfo); SUITKeyError otherwise."""
    try:
        key = serialization.load_pem_public_key(bytes(data))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SUITKeyError(f"not a readable public key PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise SUITKeyError(f"unsupported public key type {type(key).__name__}")
    _public_of(key)
    return key


def private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of a private key (callers protect the file)."""
    _public_of(key)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise SUITKeyError("a private key is required")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: AnyKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half of ``key``."""
    public = key_info(key).public
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
