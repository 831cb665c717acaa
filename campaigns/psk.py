"""Encryption at rest of DTLS pre-shared keys (pure; the secret is a parameter).

PSKs must be recoverable (the DTLS handshake needs the key itself, not a hash), so they are
encrypted, not hashed: Fernet (AES-128-CBC + HMAC-SHA256, authenticated) under a key derived with
HKDF-SHA256 from a deployment secret (``LWM2M_PSK_ENCRYPTION_KEY``, else ``SECRET_KEY``). A stolen
database dump without the secret yields no keys; a tampered ciphertext fails to decrypt.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"fwupd lwm2m psk at rest v1"

# The DTLS transport (tinydtls as DTLSSocket 0.2.3 builds it: DTLS_PSK_MAX_KEY_LEN and
# DTLS_PSK_MAX_CLIENT_IDENTITY_LEN) copies a PSK into a 16-byte buffer and sends identities of
# at most 32 bytes; keys and identities beyond that are refused when provisioned.
MAX_PSK_BYTES = 16
MAX_IDENTITY_BYTES = 32


class PSKError(ValueError):
    """A PSK cannot be stored (too long for the DTLS transport) or a stored one cannot be
    decrypted (wrong deployment secret or tampered row)."""

    code = "lwm2m.psk"


def _fernet(secret: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        secret.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt_psk(key: bytes, *, secret: str) -> bytes:
    if not key or len(key) > 64:
        raise PSKError("a PSK is 1..64 bytes")
    return _fernet(secret).encrypt(key)


def decrypt_psk(token: bytes, *, secret: str) -> bytes:
    try:
        return _fernet(secret).decrypt(bytes(token))
    except InvalidToken:
        raise PSKError("stored PSK does not decrypt under the configured secret") from None
