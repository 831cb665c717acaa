"""MCUboot encrypted images: which key an image is encrypted for, and decryption as MCUboot does
it during the swap (pure; keys are parameters).

An encrypted image (imgtool ``sign --encrypt``) has its body (``hdr_size`` .. ``hdr_size +
img_size``) in AES-CTR with a zero counter block under a random AES-128/256 key (header flag
ENCRYPTED_AES128/256); that key travels in one unprotected TLV:

* ``ENC_KW`` (0x31): AES Key Wrap (RFC 3394) under a 16/32-byte key-encryption key;
* ``ENC_EC256`` (0x32) / ``ENC_X25519`` (0x33, 0x34 with SHA-512): ECIES, i.e. ephemeral public
  key || HMAC tag || AES-CTR(zero counter) of the key, with AES and HMAC keys from
  HKDF(SHA-256/512, no salt, info ``MCUBoot_ECIES_v1``) over the ECDH shared secret;
* ``ENC_RSA2048`` (0x30): RSA-OAEP (SHA-256) of the key.

The image hash and signature TLVs cover the *plaintext* (imgtool hashes before encrypting), so a
device decrypts first and then checks hash and signature, as MCUboot does. Invariants: the body
is decrypted only when the key unwraps (the ECIES tag verifies, AES-KW's integrity check passes);
every failure is a specific :class:`ImageDecryptionError`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

from .mcuboot import ImageError, ImageFlag, ImageInfo, TlvType, parse_image

ENCRYPTION_TLVS = {
    TlvType.ENC_RSA2048: "rsa-2048",
    TlvType.ENC_KW: "aes-kw",
    TlvType.ENC_EC256: "ecies-p256",
    TlvType.ENC_X25519: "ecies-x25519",
    TlvType.ENC_X25519_SHA512: "ecies-x25519-sha512",
}
_ECIES_INFO = b"MCUBoot_ECIES_v1"
_ZERO_COUNTER = bytes(16)


class ImageDecryptionError(ImageError):
    """An encrypted image cannot be decrypted (base of the decryption errors)."""

    code = "image.decryption"


class NoEncryptionTlvError(ImageDecryptionError):
    """The image is flagged encrypted but carries no encryption TLV, or several."""

    code = "image.no_encryption_tlv"


class ImageKeyKindError(ImageDecryptionError):
    """The device's key is not of the kind the image's encryption TLV needs."""

    code = "image.encryption_key_kind"


class ImageKeyUnwrapError(ImageDecryptionError):
    """The image's AES key does not unwrap under this key (wrong key, or the TLV was altered)."""

    code = "image.key_unwrap"


@dataclass(frozen=True)
class ImageEncryption:
    """What an encrypted image says about its encryption (recorded at ingestion)."""

    tlv: str  # the TLV name, e.g. "ENC_EC256"
    key_kind: str  # "aes-kw" | "ecies-p256" | "ecies-x25519" | ...
    aes_bits: int

    def to_json_dict(self) -> dict[str, Any]:
        return {"tlv": self.tlv, "key_kind": self.key_kind, "aes_bits": self.aes_bits}


def _enc_entry(info: ImageInfo) -> Any:
    entries = [t for t in info.tlvs if t.type in ENCRYPTION_TLVS and not t.protected]
    if len(entries) != 1:
        raise NoEncryptionTlvError(
            f"an encrypted image carries exactly one encryption TLV, this one {len(entries)}"
        )
    return entries[0]


def image_encryption(info: ImageInfo) -> ImageEncryption | None:
    """None for a plaintext image; else the TLV and key kind the image is encrypted for."""
    if not info.is_encrypted:
        return None
    entry = _enc_entry(info)
    bits = 256 if (info.flags or 0) & ImageFlag.ENCRYPTED_AES256 else 128
    return ImageEncryption(
        tlv=TlvType(entry.type).name, key_kind=ENCRYPTION_TLVS[entry.type], aes_bits=bits
    )


def _ecies(
    value: bytes, key: Any, *, point_size: int, digest: hashes.HashAlgorithm, key_len: int
) -> bytes:
    mac_len = digest.digest_size
    if len(value) != point_size + mac_len + key_len:
        raise ImageKeyUnwrapError(f"the ECIES TLV is {len(value)} bytes, not the expected size")
    point, tag, wrapped = (
        value[:point_size],
        value[point_size : point_size + mac_len],
        value[point_size + mac_len :],
    )
    try:
        if point_size == 65:
            shared = key.exchange(
                ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            )
        else:
            shared = key.exchange(x25519.X25519PublicKey.from_public_bytes(point))
    except ValueError:
        raise ImageKeyUnwrapError("the ephemeral public key is not a valid point") from None
    derived = HKDF(algorithm=digest, length=key_len + mac_len, salt=None, info=_ECIES_INFO).derive(
        shared
    )
    mac = crypto_hmac.HMAC(derived[key_len:], digest)
    mac.update(wrapped)
    if not hmac.compare_digest(mac.finalize(), tag):
        raise ImageKeyUnwrapError(
            "the ECIES tag does not verify (wrong key, or the encryption TLV was altered)"
        )
    decryptor = Cipher(algorithms.AES(derived[:key_len]), modes.CTR(_ZERO_COUNTER)).decryptor()
    return decryptor.update(wrapped) + decryptor.finalize()


def unwrap_image_key(data: bytes, info: ImageInfo, key: Any) -> bytes:
    """The image's AES key, unwrapped with the device's key for the image's TLV kind."""
    entry = _enc_entry(info)
    start = entry.offset + 4
    value = data[start : start + entry.length]
    key_len = 32 if (info.flags or 0) & ImageFlag.ENCRYPTED_AES256 else 16
    kind = ENCRYPTION_TLVS[entry.type]
    if kind == "aes-kw":
        if type(key) is not bytes or len(key) not in (16, 32):
            raise ImageKeyKindError("an ENC_KW image needs a 16- or 32-byte key-encryption key")
        try:
            plain = aes_key_unwrap(key, value)
        except (InvalidUnwrap, ValueError):
            raise ImageKeyUnwrapError(
                "the AES key does not unwrap (wrong key, or the encryption TLV was altered)"
            ) from None
    elif kind == "ecies-p256":
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ImageKeyKindError("an ENC_EC256 image needs a P-256 private key")
        plain = _ecies(value, key, point_size=65, digest=hashes.SHA256(), key_len=key_len)
    elif kind.startswith("ecies-x25519"):
        if not isinstance(key, x25519.X25519PrivateKey):
            raise ImageKeyKindError("an ENC_X25519 image needs an X25519 private key")
        digest: hashes.HashAlgorithm = hashes.SHA512() if kind.endswith("512") else hashes.SHA256()
        plain = _ecies(value, key, point_size=32, digest=digest, key_len=key_len)
    else:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ImageKeyKindError("an ENC_RSA2048 image needs an RSA private key")
        try:
            plain = key.decrypt(
                value,
                padding.OAEP(
                    mgf=padding.MGF1(algorithm=hashes.SHA256()),
                    algorithm=hashes.SHA256(),
                    label=None,
                ),
            )
        except ValueError:
            raise ImageKeyUnwrapError("the RSA-OAEP encrypted key does not decrypt") from None
    if len(plain) != key_len:
        raise ImageKeyUnwrapError(f"the unwrapped key is {len(plain)} bytes, not {key_len}")
    return plain


def decrypt_image(image: bytes, key: Any) -> bytes:
    """The image with its body decrypted (header and TLVs unchanged), as MCUboot writes it to
    the primary slot during the swap. Hash and signature are the caller's next step."""
    data = bytes(image)
    info = parse_image(data)
    if not info.is_encrypted:
        raise NoEncryptionTlvError("the image is not flagged encrypted")
    aes_key = unwrap_image_key(data, info, key)
    start = info.hdr_size or 0
    end = start + (info.img_size or 0)
    decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(_ZERO_COUNTER)).decryptor()
    return data[:start] + decryptor.update(data[start:end]) + decryptor.finalize() + data[end:]
