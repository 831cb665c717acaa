"""MCUboot image signature verification against a bootloader key, as MCUboot's bootutil does it.

A device of the ``image`` delivery profile installs exactly the bytes it downloaded; its only
protection is the signature its bootloader checks. This is that check, as a pure function (no
Django, no clock, no I/O), so the device simulator and any server-side pre-flight run the same
code. Keys are what ``imgtool keygen`` makes and ``imgtool getpub --encoding pem`` prints:
ECDSA P-256 and Ed25519 (the ones Zephyr's MCUboot builds use on small parts).

What is signed, following ``imgtool`` and ``bootutil/src/image_validate.c``:

* the *hash region* is header + body + protected TLV area, and its digest is the hash TLV
  (SHA-256, or SHA-384/512); a digest that does not match refuses the image before any signature
  is looked at;
* ECDSA (TLV 0x22, DER, possibly zero-padded by old imgtool): ECDSA over the hash region with the
  image's hash algorithm, i.e. over the image hash;
* Ed25519 (TLV 0x24): Ed25519 over the image hash (32 or 64 bytes) — or, when the image carries a
  SIG_PURE TLV (``imgtool sign --pure``), over the hash region itself;
* a KEYHASH TLV (hash of the signer's DER SubjectPublicKeyInfo with the image's hash algorithm)
  tells the bootloader which of its keys signed; one that names another key is refused the way
  MCUboot refuses it (no key of its own matches, so no signature counts). A PUBKEY TLV (``imgtool
  --public-key-format full``) must likewise be this key.

Invariants: the image must parse strictly (:func:`~manifests.images.mcuboot.parse_image`); the
hash TLV must match; at least one signature TLV of the key's type must verify under the key; a
signature in the protected area does not count (it would be part of what it signs).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from manifests.images.mcuboot import (
    TLV_HEADER_SIZE,
    ImageError,
    ImageHashMismatchError,
    ImageInfo,
    TlvType,
    parse_image,
)

__all__ = [
    "BadImageSignatureError",
    "BootloaderKey",
    "ImageSignatureError",
    "KeyMismatchError",
    "UnsignedImageError",
    "UnsupportedKeyError",
    "load_bootloader_key",
    "verify_image_signature",
]

BootloaderKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


class ImageSignatureError(ImageError):
    """The image is not signed by the bootloader key, so MCUboot would not boot it."""

    code = "image.signature_invalid"


class UnsupportedKeyError(ImageSignatureError):
    """The bootloader key is not an ECDSA P-256 or Ed25519 public key."""

    code = "image.unsupported_key"


class UnsignedImageError(ImageSignatureError):
    """The image has no signature TLV of the bootloader key's type."""

    code = "image.unsigned"


class KeyMismatchError(ImageSignatureError):
    """The image's KEYHASH / PUBKEY TLV names another key than the bootloader's."""

    code = "image.key_mismatch"


class BadImageSignatureError(ImageSignatureError):
    """No signature TLV of the key's type verifies under the bootloader key."""

    code = "image.bad_signature"


def load_bootloader_key(pem: bytes | str) -> BootloaderKey:
    """A public key PEM (``imgtool getpub -e pem``) as a key object; refuses other key types."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise UnsupportedKeyError(f"not a public key PEM: {exc}") from None
    return _check_key(key)


def _check_key(key: object) -> BootloaderKey:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise UnsupportedKeyError(f"{type(key).__name__} is not an ECDSA P-256 or Ed25519 public key")


def _spki(key: BootloaderKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_image_signature(
    image: bytes | bytearray | memoryview, public_key: BootloaderKey | bytes | str
) -> ImageInfo:
    """Return the parsed image if its hash TLV matches and a signature verifies under the key.

    ``public_key`` is a key object or its PEM. Raises an :class:`ImageError` subclass otherwise:
    the parser's errors for a malformed image, :class:`ImageHashMismatchError` for a body or
    protected TLV that changed, and an :class:`ImageSignatureError` subclass for the signature.
    """
    key = (
        load_bootloader_key(public_key)
        if isinstance(public_key, bytes | str)
        else _check_key(public_key)
    )
    data = bytes(image)
    info = parse_image(data)
    if not info.hash_ok or info.computed_hash is None or info.hash_algorithm is None:
        raise ImageHashMismatchError(
            "the image hash TLV does not match header, body and protected TLVs"
        )
    digest, algorithm = info.computed_hash, info.hash_algorithm
    hash_region = data[: (info.hdr_size or 0) + (info.img_size or 0) + (info.protect_tlv_size or 0)]
    spki = _spki(key)
    sig_type = TlvType.ED25519 if isinstance(key, ed25519.Ed25519PublicKey) else TlvType.ECDSA_SIG
    pure = False
    signatures: list[bytes] = []
    for entry in info.tlvs:
        value = data[entry.offset + TLV_HEADER_SIZE : entry.offset + TLV_HEADER_SIZE + entry.length]
        if entry.protected:
            continue
        if entry.type == TlvType.KEYHASH:
            if not hmac.compare_digest(value, hashlib.new(algorithm, spki).digest()):
                raise KeyMismatchError("the image's KEYHASH names another signing key")
        elif entry.type == TlvType.PUBKEY:
            if not hmac.compare_digest(value, spki):
                raise KeyMismatchError("the image's PUBKEY is another signing key")
        elif entry.type == TlvType.SIG_PURE:
            pure = True
        elif entry.type == sig_type:
            signatures.append(value)
    if not signatures:
        raise UnsignedImageError(f"no {sig_type.name} signature TLV in the image")
    for signature in signatures:
        if _verifies(
            key, signature, digest=digest, algorithm=algorithm, region=hash_region, pure=pure
        ):
            return info
    raise BadImageSignatureError(
        f"{len(signatures)} {sig_type.name} signature(s), none verifies under the bootloader key"
    )


def _verifies(
    key: BootloaderKey,
    signature: bytes,
    *,
    digest: bytes,
    algorithm: str,
    region: bytes,
    pure: bool,
) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, region if pure else digest)
        else:
            # Old imgtool padded DER signatures with zeros to a fixed length; DER says how long.
            if len(signature) >= 2 and signature[1] < 0x80:
                signature = signature[: signature[1] + 2]
            key.verify(signature, digest, ec.ECDSA(utils.Prehashed(_HASHES[algorithm])))
    except InvalidSignature:
        return False
    return True
