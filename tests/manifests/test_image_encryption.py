"""MCUboot encrypted images: images imgtool encrypts (``sign --encrypt``, ECIES-P256 and
ECIES-X25519) are ingested with their encryption recorded, decrypt as MCUboot decrypts them, and
the decrypted image passes imgtool's own ``verify``; the ciphertext never holds the plaintext;
a wrong key, an altered key TLV and an altered body are each refused; an ENC_KW image (built
here as MCUboot's format defines it) unwraps with its key-encryption key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from manifests.images import imgtool, ingest_image, parse_image, verify_image_signature
from manifests.images.encryption import (
    ImageKeyKindError,
    ImageKeyUnwrapError,
    decrypt_image,
    image_encryption,
)
from manifests.images.mcuboot import ImageFlag, ImageHashMismatchError, TlvType

MARKER = b"MCUBOOT-PLAINTEXT-MARKER"
PAYLOAD = MARKER * 250


@dataclasses.dataclass(frozen=True)
class Keys:
    tmp: Path
    signing: Path
    public_pem: bytes
    p256: ec.EllipticCurvePrivateKey
    p256_pub: Path
    x25519: x25519.X25519PrivateKey
    x25519_pub: Path


def _pem(key: Any, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    tmp = tmp_path_factory.mktemp("enc")
    signing = imgtool.keygen(tmp / "sign.pem")
    p256 = ec.generate_private_key(ec.SECP256R1())
    x = x25519.X25519PrivateKey.generate()
    return Keys(
        tmp=tmp,
        signing=signing,
        public_pem=imgtool.public_key_pem(signing),
        p256=p256,
        p256_pub=_pem(p256, tmp / "enc-p256.pub.pem"),
        x25519=x,
        x25519_pub=_pem(x, tmp / "enc-x25519.pub.pem"),
    )


def _encrypted(keys: Keys, pub: Path) -> bytes:
    return imgtool.build_image(
        PAYLOAD,
        version="1.2.0",
        security_counter=3,
        key_path=keys.signing,
        extra_args=["--encrypt", str(pub)],
    )


@pytest.fixture(scope="module")
def ec256_image(keys: Keys) -> bytes:
    return _encrypted(keys, keys.p256_pub)


@pytest.fixture(scope="module")
def x25519_image(keys: Keys) -> bytes:
    # imgtool pairs X25519 encryption with an Ed25519 signing key.
    signing = imgtool.keygen(keys.tmp / "sign-ed.pem", key_type="ed25519")
    return imgtool.build_image(
        PAYLOAD,
        version="1.2.0",
        security_counter=3,
        key_path=signing,
        extra_args=["--encrypt", str(keys.x25519_pub)],
    )


def test_ingestion_accepts_an_encrypted_image_and_records_its_key_kind(
    ec256_image: bytes,
) -> None:
    info = ingest_image(ec256_image)
    assert info.is_encrypted and info.encryption_tlvs == ("ENC_EC256",)
    assert info.to_json_dict()["encryption"] == {"tlvs": ["ENC_EC256"], "aes_bits": 128}
    assert image_encryption(info) is not None
    assert image_encryption(info).key_kind == "ecies-p256"  # type: ignore[union-attr]
    assert MARKER not in ec256_image


def test_ec256_image_decrypts_and_passes_imgtool_verify(
    keys: Keys, ec256_image: bytes, tmp_path: Path
) -> None:
    plain = decrypt_image(ec256_image, keys.p256)
    assert MARKER in plain
    verify_image_signature(plain, keys.public_pem)
    out = tmp_path / "plain.bin"
    out.write_bytes(plain)
    assert "validated" in imgtool.run_imgtool("verify", "--key", keys.signing, out)


def test_x25519_image_decrypts(keys: Keys, x25519_image: bytes) -> None:
    info = parse_image(x25519_image)
    assert info.encryption_tlvs == ("ENC_X25519",)
    assert MARKER in decrypt_image(x25519_image, keys.x25519)


def test_wrong_key_is_refused(ec256_image: bytes) -> None:
    with pytest.raises(ImageKeyUnwrapError, match="tag does not verify"):
        decrypt_image(ec256_image, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ImageKeyKindError):
        decrypt_image(ec256_image, bytes(16))


def test_tampered_wrapped_key_is_refused(keys: Keys, ec256_image: bytes) -> None:
    info = parse_image(ec256_image)
    entry = next(t for t in info.tlvs if t.type == TlvType.ENC_EC256)
    at = entry.offset + 4 + 65 + 32 + 3  # inside the wrapped AES key
    tampered = ec256_image[:at] + bytes([ec256_image[at] ^ 1]) + ec256_image[at + 1 :]
    with pytest.raises(ImageKeyUnwrapError):
        decrypt_image(tampered, keys.p256)


def test_tampered_ciphertext_fails_the_plaintext_hash_check(keys: Keys, ec256_image: bytes) -> None:
    at = imgtool.DEFAULT_HEADER_SIZE + 40
    tampered = ec256_image[:at] + bytes([ec256_image[at] ^ 1]) + ec256_image[at + 1 :]
    with pytest.raises(ImageHashMismatchError):
        verify_image_signature(decrypt_image(tampered, keys.p256), keys.public_pem)


def test_aes_kw_image_unwraps_with_its_key_encryption_key(keys: Keys) -> None:
    """ENC_KW as MCUboot reads it (imgtool 2.5 writes no KW images): the plaintext image with
    the ENCRYPTED_AES128 flag, its body in AES-CTR (zero counter) and the key wrapped by AES-KW
    in an unprotected TLV after the signature."""
    flagged = imgtool.build_image(
        PAYLOAD, version="1.2.0", security_counter=3, key_path=keys.signing
    )
    info = parse_image(flagged)
    header = bytearray(flagged)
    kek, aes_key = bytes(range(16)), bytes(range(16, 32))
    start, end = info.hdr_size or 0, (info.hdr_size or 0) + (info.img_size or 0)
    encryptor = Cipher(algorithms.AES(aes_key), modes.CTR(bytes(16))).encryptor()
    body = encryptor.update(flagged[start:end]) + encryptor.finalize()
    flags = int.from_bytes(header[16:20], "little") | ImageFlag.ENCRYPTED_AES128
    header[16:20] = flags.to_bytes(4, "little")
    wrapped = aes_key_wrap(kek, aes_key)
    tlv_total = int.from_bytes(flagged[end + (info.protect_tlv_size or 0) + 2 :][:2], "little")
    tlv_start = end + (info.protect_tlv_size or 0)
    tlv_area = bytearray(flagged[tlv_start : tlv_start + tlv_total])
    tlv_area += bytes([TlvType.ENC_KW, 0]) + len(wrapped).to_bytes(2, "little") + wrapped
    tlv_area[2:4] = len(tlv_area).to_bytes(2, "little")
    image = bytes(header[:start]) + body + flagged[end:tlv_start] + bytes(tlv_area)
    assert parse_image(image).encryption_tlvs == ("ENC_KW",)
    plain = decrypt_image(image, kek)
    assert plain[start:end] == flagged[start:end]
    with pytest.raises(ImageKeyUnwrapError):
        decrypt_image(image, bytes(16))
