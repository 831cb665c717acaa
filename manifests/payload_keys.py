"""Payload key-encryption keys at rest, and key files (pure; the deployment secret is a parameter).

A class key-encryption key (KEK) wraps every release's content key for the devices of that class,
so the server must be able to recover it: it is encrypted, not hashed, as the DTLS PSKs are
(``campaigns.psk``): Fernet (AES-128-CBC + HMAC-SHA256) under a key derived with HKDF-SHA256 from
a deployment secret (``PAYLOAD_KEY_ENCRYPTION_KEY``, else ``SECRET_KEY``) with its own label, so
the two kinds of key never share a derived key. A database dump without the secret yields no KEK;
a tampered row does not decrypt. Nothing here logs or puts key bytes into a message.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"fwupd payload key-encryption key at rest v1"
KEK_SIZES = (16, 32)  # A128KW, A256KW
_HEX = re.compile(rb"\s*([0-9a-fA-F]{32}|[0-9a-fA-F]{64})\s*")


class PayloadKeyError(ValueError):
    """A key-encryption key is malformed, or a stored one does not decrypt under the configured
    deployment secret (wrong secret or tampered row)."""

    code = "manifest.payload_key"


def _fernet(secret: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        secret.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def new_kek() -> bytes:
    """A fresh 16-byte KEK (A128KW, what the draft's examples and MCUboot's AES-KW use)."""
    return secrets.token_bytes(16)


def new_kid() -> str:
    """A random key identifier (hex); derived from nothing secret."""
    return secrets.token_hex(8)


def check_kek(key: bytes) -> bytes:
    if type(key) is not bytes or len(key) not in KEK_SIZES:
        raise PayloadKeyError("a key-encryption key is 16 or 32 bytes (A128KW / A256KW)")
    return key


def read_kek_file(data: bytes) -> bytes:
    """A key file: the raw 16 or 32 bytes, or their hex (32 or 64 digits, whitespace around)."""
    match = _HEX.fullmatch(data)
    if match is not None:
        return binascii.unhexlify(match.group(1))
    return check_kek(bytes(data))


def encrypt_kek(key: bytes, *, secret: str) -> bytes:
    return _fernet(secret).encrypt(check_kek(key))


def decrypt_kek(token: bytes, *, secret: str) -> bytes:
    try:
        return check_kek(_fernet(secret).decrypt(bytes(token)))
    except InvalidToken:
        raise PayloadKeyError(
            "stored key-encryption key does not decrypt under the configured secret"
        ) from None
