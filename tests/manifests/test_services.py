"""Release-side services: image upload, key registration, manifest import and its refusals."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from manifests import services, suit
from manifests.errors import (
    DuplicateManifestError,
    ImageNotFoundError,
    ImageTooLargeError,
    ImmutableRecordError,
    InvalidImageError,
    InvalidKeyError,
    InvalidManifestError,
    KeyExistsError,
    ManifestComponentError,
    ManifestImageMismatchError,
    SequenceNumberConflictError,
    UnknownDeviceClassError,
    UnknownVendorError,
    UntrustedManifestError,
)
from manifests.models import FirmwareImage, KeyStatus, Manifest
from tests.helpers.imgtool import build_mcuboot_image

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def mcuboot_bytes(tmp_path: Path) -> bytes:
    return build_mcuboot_image(
        tmp_path, payload=b"\x5a" * 4096, version="1.4.0+7", security_counter=3
    )


@pytest.fixture
def image(mcuboot_bytes: bytes, author: Any) -> FirmwareImage:
    return services.image_upload(data=mcuboot_bytes, filename="app.bin", uploaded_by=author.user)


@pytest.fixture
def author_key(author: Any) -> Any:
    return services.signing_key_register(
        owner=author.user, public_key_pem=author.public_pem, valid_from=NOW - dt.timedelta(days=1)
    )


def params_for(device_class: Any, image: FirmwareImage, **overrides: Any) -> suit.ManifestParams:
    fields: dict[str, Any] = {
        "vendor_id": device_class.vendor.uuid,
        "class_id": device_class.uuid,
        "sequence_number": 10,
        "version": "1.4.0+7",
        "security_counter": 3,
        "image_digest": bytes.fromhex(image.sha256),
        "image_size": image.size,
        "uri": "coap://fw.example/app.bin",
        "use_before": NOW + dt.timedelta(days=30),
        "component_id": device_class.component_id_bytes,
        "payload_format": "mcuboot",
    }
    fields.update(overrides)
    return suit.ManifestParams(**fields)


def test_mcuboot_image_upload_parses_header_and_is_idempotent(mcuboot_bytes: bytes, author: Any):
    first = services.image_upload(data=mcuboot_bytes, filename="a.bin", uploaded_by=author.user)
    second = services.image_upload(data=mcuboot_bytes, filename="b.bin", uploaded_by=author.user)
    assert first.pk == second.pk
    assert first.kind == "mcuboot"
    assert first.version == "1.4.0+7"
    assert first.security_counter == 3
    assert first.sha256 == hashlib.sha256(mcuboot_bytes).hexdigest()
    assert services.image_storage().read(first.sha256) == mcuboot_bytes


def test_tampered_mcuboot_image_is_refused_and_not_stored(mcuboot_bytes: bytes, author: Any):
    tampered = bytearray(mcuboot_bytes)
    tampered[0x200 + 10] ^= 0xFF
    with pytest.raises(InvalidImageError, match="hash"):
        services.image_upload(data=bytes(tampered), uploaded_by=author.user)
    assert FirmwareImage.objects.count() == 0
    assert not services.image_storage().exists(hashlib.sha256(bytes(tampered)).hexdigest())


def test_oversized_image_is_refused(settings: Any, author: Any):
    settings.FIRMWARE_MAX_IMAGE_SIZE = 1024
    with pytest.raises(ImageTooLargeError):
        services.image_upload(data=b"\0" * 1025, uploaded_by=author.user)
    assert FirmwareImage.objects.count() == 0


def test_key_registration_derives_kid_and_refuses_duplicates(author: Any):
    key = services.signing_key_register(owner=author.user, public_key_pem=author.public_pem)
    assert key.kid == suit.kid_for_public_key(author.private_key.public_key()).hex()
    assert key.algorithm == "ES256"
    with pytest.raises(KeyExistsError):
        services.signing_key_register(owner=author.user, public_key_pem=author.public_pem)


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    ],
    ids=["garbage", "rsa"],
)
def test_unsupported_or_malformed_key_is_refused(author: Any, pem: str):
    with pytest.raises(InvalidKeyError):
        services.signing_key_register(owner=author.user, public_key_pem=pem)


def test_manifest_import_keeps_exact_bytes_and_indexes_fields(
    device_class: Any, image: FirmwareImage, author: Any, author_key: Any
):
    envelope = suit.create_envelope(params_for(device_class, image), keys=[author.private_key])
    manifest = services.manifest_import(envelope=envelope, created_by=author.user, now=NOW)
    stored = Manifest.objects.get(pk=manifest.pk)
    assert stored.envelope_bytes == envelope
    assert stored.version == "1.4.0+7"
    assert stored.version_parts == [1, 4, 0, 7]
    assert stored.sequence_number == 10
    assert stored.security_counter == 3
    assert stored.expires_at == NOW + dt.timedelta(days=30)
    assert stored.image == image
    assert stored.author_key == author_key
    assert stored.manifest_digest == suit.decode_envelope(envelope).manifest_digest.hex()


def test_stored_manifest_and_image_are_immutable(
    device_class: Any, image: FirmwareImage, author: Any, author_key: Any
):
    envelope = suit.create_envelope(params_for(device_class, image), keys=[author.private_key])
    manifest = services.manifest_import(envelope=envelope, created_by=author.user, now=NOW)
    manifest.sequence_number = 99
    with pytest.raises(ImmutableRecordError):
        manifest.save()
    with pytest.raises(ImmutableRecordError):
        manifest.delete()
    with pytest.raises(ImmutableRecordError):
        image.delete()
    assert Manifest.objects.get(pk=manifest.pk).sequence_number == 10


def _import(device_class: Any, image: FirmwareImage, signer: Any, created_by: Any, **kw: Any):
    envelope = suit.create_envelope(params_for(device_class, image, **kw), keys=[signer])
    return services.manifest_import(envelope=envelope, created_by=created_by, now=NOW)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"vendor_id": suit.vendor_id("other.example")}, UnknownVendorError),
        (
            {"class_id": suit.class_id(suit.vendor_id("acme.example"), "nope")},
            UnknownDeviceClassError,
        ),
        ({"component_id": (b"\x01",)}, ManifestComponentError),
        ({"payload_format": "raw"}, ManifestComponentError),
        ({"image_digest": b"\x11" * 32}, ImageNotFoundError),
        ({"image_size": 12}, ImageNotFoundError),
        ({"version": "1.4.1+7"}, ManifestImageMismatchError),
        ({"security_counter": 4}, ManifestImageMismatchError),
    ],
    ids=[
        "unknown-vendor",
        "unknown-class",
        "wrong-component",
        "wrong-payload-format",
        "unknown-image",
        "wrong-size",
        "version-differs-from-image",
        "counter-differs-from-image",
    ],
)
def test_mismatched_manifest_is_refused_and_nothing_written(
    device_class: Any,
    image: FirmwareImage,
    author: Any,
    author_key: Any,
    overrides: dict[str, Any],
    error: type[Exception],
):
    with pytest.raises(error):
        _import(device_class, image, author.private_key, author.user, **overrides)
    assert Manifest.objects.count() == 0


def test_image_stamped_for_another_class_is_refused(
    device_class: Any, author: Any, author_key: Any, tmp_path: Path
):
    other_class = suit.class_id(device_class.vendor.uuid, "other-board")
    stamped = build_mcuboot_image(
        tmp_path,
        payload=b"\x33" * 2048,
        version="1.4.0+7",
        security_counter=3,
        vendor_id=str(device_class.vendor.uuid),
        class_id=str(other_class),
    )
    image = services.image_upload(data=stamped, uploaded_by=author.user)
    with pytest.raises(ManifestImageMismatchError, match="class_uuid"):
        _import(device_class, image, author.private_key, author.user)
    assert Manifest.objects.count() == 0


def test_duplicate_and_reused_sequence_number_are_refused(
    device_class: Any, image: FirmwareImage, author: Any, author_key: Any
):
    envelope = suit.create_envelope(params_for(device_class, image), keys=[author.private_key])
    services.manifest_import(envelope=envelope, created_by=author.user, now=NOW)
    with pytest.raises(DuplicateManifestError):
        services.manifest_import(envelope=envelope, created_by=author.user, now=NOW)
    with pytest.raises(SequenceNumberConflictError):
        _import(
            device_class,
            image,
            author.private_key,
            author.user,
            use_before=NOW + dt.timedelta(days=2),
        )
    assert Manifest.objects.count() == 1


def test_manifest_signed_by_unregistered_key_is_untrusted(
    device_class: Any, image: FirmwareImage, author: Any, outsider: Any, author_key: Any
):
    with pytest.raises(UntrustedManifestError):
        _import(device_class, image, outsider.private_key, author.user)


def test_manifest_signed_with_someone_elses_key_is_untrusted(
    device_class: Any, image: FirmwareImage, author: Any, outsider: Any
):
    services.signing_key_register(owner=outsider.user, public_key_pem=outsider.public_pem)
    with pytest.raises(UntrustedManifestError):
        _import(device_class, image, outsider.private_key, author.user)


def test_manifest_signed_with_revoked_key_is_untrusted(
    device_class: Any, image: FirmwareImage, author: Any, author_key: Any
):
    author_key.status = KeyStatus.REVOKED
    author_key.revoked_at = NOW - dt.timedelta(minutes=1)
    author_key.save()
    with pytest.raises(UntrustedManifestError):
        _import(device_class, image, author.private_key, author.user)


def test_manifest_signed_with_expired_key_is_untrusted(
    device_class: Any, image: FirmwareImage, author: Any, author_key: Any
):
    author_key.valid_until = NOW - dt.timedelta(seconds=1)
    author_key.save()
    with pytest.raises(UntrustedManifestError):
        _import(device_class, image, author.private_key, author.user)


def test_forged_signature_is_untrusted(
    device_class: Any, image: FirmwareImage, author: Any, author_key: Any
):
    envelope = bytearray(
        suit.create_envelope(params_for(device_class, image), keys=[author.private_key])
    )
    env = suit.decode_envelope(bytes(envelope))
    sig = env.signatures[0].signature
    at = bytes(envelope).index(sig)
    envelope[at + 5] ^= 0x01
    with pytest.raises(UntrustedManifestError):
        services.manifest_import(envelope=bytes(envelope), created_by=author.user, now=NOW)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xd8\x6b", b"not cbor at all", b"\xa0"],
    ids=["empty", "tag-only", "text", "map"],
)
def test_malformed_envelope_is_refused_with_suit_code(author: Any, data: bytes):
    with pytest.raises(InvalidManifestError) as info:
        services.manifest_import(envelope=data, created_by=author.user, now=NOW)
    assert info.value.suit_code.startswith("suit.")


def test_oversized_envelope_is_refused(settings: Any, author: Any):
    settings.SUIT_MAX_ENVELOPE_SIZE = 1024
    with pytest.raises(InvalidManifestError):
        services.manifest_import(envelope=b"\0" * 2048, created_by=author.user, now=NOW)
