"""MCUboot signature verification against a bootloader key, on images signed by upstream imgtool.

Every valid image comes from ``imgtool sign``; every broken one is a signed image with bytes
changed afterwards, so the verifier is checked against what MCUboot's own tool produces.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from manifests.images import imgtool
from manifests.images.mcuboot import (
    BadMagicError,
    ImageHashMismatchError,
    TlvType,
    parse_image,
)
from manifests.images.signature import (
    BadImageSignatureError,
    KeyMismatchError,
    UnsignedImageError,
    UnsupportedKeyError,
    load_bootloader_key,
    verify_image_signature,
)
from tests.helpers.imgtool import build_mcuboot_image, generate_key

PAYLOAD = bytes(range(256)) * 16 + b"firmware-end"


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Shadow the Django-settings fixture from conftest: this module is pure."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imgsig")


@pytest.fixture(scope="module", params=["ecdsa-p256", "ed25519"])
def key_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def key_path(workdir: Path, key_type: str) -> Path:
    return generate_key(workdir, key_type=key_type, name=f"boot-{key_type}.pem")


@pytest.fixture(scope="module")
def public_pem(key_path: Path) -> bytes:
    return imgtool.public_key_pem(key_path)


@pytest.fixture(scope="module")
def signed(workdir: Path, key_path: Path) -> bytes:
    return build_mcuboot_image(
        workdir, payload=PAYLOAD, version="1.4.0+7", security_counter=3, key_pem_path=key_path
    )


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _tlv_value_offset(image: bytes, tlv_type: TlvType) -> int:
    entry = next(e for e in parse_image(image).tlvs if e.type == tlv_type)
    return entry.offset + 4


def test_imgtool_signed_image_verifies_under_its_key(signed: bytes, public_pem: bytes) -> None:
    info = verify_image_signature(signed, public_pem)
    assert info.version_tuple == (1, 4, 0, 7)
    assert info.security_counter == 3


def test_key_object_is_accepted_as_well_as_pem(signed: bytes, public_pem: bytes) -> None:
    assert verify_image_signature(signed, load_bootloader_key(public_pem)).kind == "mcuboot"


@pytest.mark.parametrize("extra", [["--public-key-format", "full"]], ids=["full-public-key-tlv"])
def test_image_carrying_the_full_public_key_verifies(
    workdir: Path, key_path: Path, public_pem: bytes, extra: list[str]
) -> None:
    image = build_mcuboot_image(
        workdir, payload=PAYLOAD, version="1.0.0", key_pem_path=key_path, extra_args=extra
    )
    assert verify_image_signature(image, public_pem).kind == "mcuboot"


def test_pure_ed25519_signature_over_the_hash_region_verifies(workdir: Path) -> None:
    key = generate_key(workdir, key_type="ed25519", name="pure.pem")
    image = build_mcuboot_image(
        workdir, payload=PAYLOAD, version="2.0.0", key_pem_path=key, extra_args=["--pure"]
    )
    assert TlvType.SIG_PURE in {e.type for e in parse_image(image).tlvs}
    assert verify_image_signature(image, imgtool.public_key_pem(key)).version == "2.0.0+0"


def test_tampered_body_is_refused_by_the_hash_check(signed: bytes, public_pem: bytes) -> None:
    tampered = _flip(signed, imgtool.DEFAULT_HEADER_SIZE + 100)
    with pytest.raises(ImageHashMismatchError):
        verify_image_signature(tampered, public_pem)


def test_tampered_security_counter_is_refused_by_the_hash_check(
    signed: bytes, public_pem: bytes
) -> None:
    tampered = _flip(signed, _tlv_value_offset(signed, TlvType.SEC_CNT))
    with pytest.raises(ImageHashMismatchError):
        verify_image_signature(tampered, public_pem)


def test_tampered_signature_is_refused(signed: bytes, public_pem: bytes, key_type: str) -> None:
    sig_tlv = TlvType.ED25519 if key_type == "ed25519" else TlvType.ECDSA_SIG
    # Inside the signature value (past the DER headers for ECDSA).
    tampered = _flip(signed, _tlv_value_offset(signed, sig_tlv) + 10)
    with pytest.raises(BadImageSignatureError):
        verify_image_signature(tampered, public_pem)


def test_image_signed_by_another_key_is_refused(
    workdir: Path, signed: bytes, key_type: str
) -> None:
    other = imgtool.public_key_pem(generate_key(workdir, key_type=key_type, name="other.pem"))
    with pytest.raises(KeyMismatchError):
        verify_image_signature(signed, other)


def test_rehashed_image_with_keyhash_of_the_device_key_but_foreign_signature_is_refused(
    workdir: Path, public_pem: bytes, key_type: str
) -> None:
    """An attacker's image that names the device's key (PUBKEY TLV) but is signed by theirs."""
    attacker = generate_key(workdir, key_type=key_type, name="attacker.pem")
    image = build_mcuboot_image(
        workdir,
        payload=PAYLOAD,
        version="9.0.0",
        key_pem_path=attacker,
        extra_args=["--public-key-format", "full"],
    )
    der = load_bootloader_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    start = _tlv_value_offset(image, TlvType.PUBKEY)
    forged = image[:start] + der + image[start + len(der) :]
    with pytest.raises(BadImageSignatureError):
        verify_image_signature(forged, public_pem)


def test_unsigned_image_is_refused(workdir: Path, public_pem: bytes) -> None:
    image = build_mcuboot_image(workdir, payload=PAYLOAD, version="1.0.0")
    with pytest.raises(UnsignedImageError):
        verify_image_signature(image, public_pem)


def test_image_signed_with_the_other_algorithm_is_unsigned_for_this_key(
    workdir: Path, public_pem: bytes, key_type: str
) -> None:
    other_type = "ed25519" if key_type == "ecdsa-p256" else "ecdsa-p256"
    other = generate_key(workdir, key_type=other_type, name=f"x-{other_type}.pem")
    image = build_mcuboot_image(workdir, payload=PAYLOAD, version="1.0.0", key_pem_path=other)
    with pytest.raises((UnsignedImageError, KeyMismatchError)):
        verify_image_signature(image, public_pem)


def test_non_mcuboot_bytes_are_refused_by_the_parser(public_pem: bytes) -> None:
    with pytest.raises(BadMagicError):
        verify_image_signature(b"\x84\xa2" + bytes(64), public_pem)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        lambda: ec.generate_private_key(ec.SECP384R1()).public_key(),
    ],
    ids=["rsa-2048", "ecdsa-p384"],
)
def test_unsupported_bootloader_key_type_is_refused(signed: bytes, make: object) -> None:
    key = make()  # type: ignore[operator]
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(UnsupportedKeyError):
        verify_image_signature(signed, pem)


def test_garbage_pem_is_an_unsupported_key(signed: bytes) -> None:
    with pytest.raises(UnsupportedKeyError):
        verify_image_signature(signed, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
