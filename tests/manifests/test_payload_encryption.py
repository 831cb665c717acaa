"""Encrypted payloads, server side: class key-encryption keys at rest and their rotation, the
encryption of a stored image, what manifest_import accepts, what /fw serves, and that no key
material reaches the audit log or an error message."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.management import call_command
from django.db import IntegrityError, transaction

from audit.models import AuditEvent
from manifests import payload_keys, services, suit
from manifests.errors import (
    EncryptionRequiredError,
    PayloadEncryptionError,
    PayloadURIError,
    PermissionDeniedError,
    UnknownEncryptionInfoError,
)
from manifests.images import imgtool
from manifests.images.encryption import decrypt_image
from manifests.models import EncryptedPayload, FirmwareImage, PayloadEncryptionKey
from tests.helpers.imgtool import build_mcuboot_image
from workers.lwm2m.fwserver import DjangoFirmwareSource

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
MARKER = b"CONFIDENTIAL-FIRMWARE-MARKER"


@pytest.fixture
def author(author: Any, catalog_admin: Any) -> Any:
    services.role_grant(
        user=author.user, role="author", actor=catalog_admin, now=NOW - dt.timedelta(days=30)
    )
    services.signing_key_register(
        owner=author.user, public_key_pem=author.public_pem, valid_from=NOW - dt.timedelta(days=1)
    )
    return author


@pytest.fixture
def suit_class(vendor: Any, catalog_admin: Any) -> Any:
    return services.device_class_create(
        vendor=vendor, name="vault-v1", delivery="suit", actor=catalog_admin
    )


@pytest.fixture
def image(tmp_path: Path, author: Any) -> FirmwareImage:
    data = build_mcuboot_image(
        tmp_path, payload=MARKER * 150, version="1.4.0+7", security_counter=3
    )
    return services.image_upload(data=data, filename="app.bin", actor=author.user)


def _kek(row: PayloadEncryptionKey) -> bytes:
    return payload_keys.decrypt_kek(bytes(row.key_encrypted), secret=services.payload_key_secret())


def _envelope(author: Any, device_class: Any, image: FirmwareImage, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "vendor_id": device_class.vendor.uuid,
        "class_id": device_class.uuid,
        "sequence_number": 10,
        "version": "1.4.0+7",
        "security_counter": 3,
        "image_digest": bytes.fromhex(image.sha256),
        "image_size": image.size,
        "uri": f"/fw/i/{image.sha256}",
        "component_id": device_class.component_id_bytes,
        "payload_format": "mcuboot",
    }
    fields.update(changes)
    return suit.create_envelope(suit.ManifestParams(**fields), keys=[author.private_key])


def test_class_key_is_encrypted_at_rest_and_rotation_retires_the_old_one(
    suit_class: Any, admin: Any
) -> None:
    first = services.payload_key_rotate(device_class=suit_class, actor=admin)
    kek = _kek(first)
    assert len(kek) == 16 and kek not in bytes(first.key_encrypted)
    second = services.payload_key_rotate(device_class=suit_class, actor=admin)
    first.refresh_from_db()
    assert (first.status, second.status) == ("retired", "active")
    assert services.active_payload_key(suit_class) == second
    with pytest.raises(IntegrityError), transaction.atomic():
        PayloadEncryptionKey.objects.filter(pk=first.pk).update(status="active")


def test_stored_key_does_not_decrypt_under_another_secret(suit_class: Any, admin: Any) -> None:
    row = services.payload_key_rotate(device_class=suit_class, actor=admin)
    with pytest.raises(payload_keys.PayloadKeyError, match="does not decrypt"):
        payload_keys.decrypt_kek(bytes(row.key_encrypted), secret="another deployment secret")


def test_key_rotation_by_an_author_is_refused(suit_class: Any, author: Any) -> None:
    with pytest.raises(PermissionDeniedError):
        services.payload_key_rotate(device_class=suit_class, actor=author.user)
    assert not PayloadEncryptionKey.objects.exists()


def test_key_from_a_file_of_the_wrong_size_is_refused_and_changes_nothing(
    suit_class: Any, admin: Any
) -> None:
    with pytest.raises(PayloadEncryptionError, match="16 or 32"):
        services.payload_key_rotate(device_class=suit_class, actor=admin, key=b"x" * 20)
    assert not PayloadEncryptionKey.objects.exists()
    assert payload_keys.read_kek_file(b"00" * 16 + b"\n") == bytes(16)


def test_encrypted_release_imports_decrypts_independently_and_fw_never_serves_plaintext(
    suit_class: Any, admin: Any, author: Any, image: FirmwareImage
) -> None:
    key_row = services.payload_key_rotate(device_class=suit_class, actor=admin)
    device_key = ec.generate_private_key(ec.SECP256R1())
    device_pem = (
        device_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    row = services.payload_encrypt(
        image=image,
        device_class=suit_class,
        actor=author.user,
        device_keys=[(b"dev-1".hex(), device_pem)],
    )
    assert row.recipient_kids == [key_row.kid, b"dev-1".hex()]
    store = services.image_storage()
    ciphertext = store.read(row.ciphertext_sha256)
    plaintext = store.read(image.sha256)
    assert MARKER in plaintext and MARKER not in ciphertext
    # Both recipients decrypt it with the draft's structures, outside the product's server code.
    info = bytes(row.encryption_info)
    for kid, key in ((bytes.fromhex(key_row.kid), _kek(key_row)), (b"dev-1", device_key)):
        assert suit.decrypt_payload(ciphertext, info, kid=kid, key=key) == plaintext
    envelope = _envelope(
        author, suit_class, image, uri=f"/fw/i/{row.ciphertext_sha256}", encryption_info=info
    )
    manifest = services.manifest_import(envelope=envelope, created_by=author.user, now=NOW)
    assert manifest.uri == f"/fw/i/{row.ciphertext_sha256}"
    # Everything /fw serves for this release: envelope, ciphertext; the plaintext is refused.
    source = DjangoFirmwareSource()
    served = [source.envelope(manifest.manifest_digest), source.image(row.ciphertext_sha256)]
    assert served[1] == ciphertext
    assert source.image(image.sha256) is None
    assert all(data is not None and MARKER not in data for data in served)


def test_plaintext_manifest_for_a_class_with_a_payload_key_is_refused(
    suit_class: Any, admin: Any, author: Any, image: FirmwareImage
) -> None:
    services.payload_key_rotate(device_class=suit_class, actor=admin)
    with pytest.raises(EncryptionRequiredError):
        services.manifest_import(
            envelope=_envelope(author, suit_class, image), created_by=author.user, now=NOW
        )


def test_encryption_info_not_produced_here_is_refused(
    suit_class: Any, admin: Any, author: Any, image: FirmwareImage
) -> None:
    services.payload_key_rotate(device_class=suit_class, actor=admin)
    services.payload_encrypt(image=image, device_class=suit_class, actor=author.user)
    forged = suit.encrypt_payload(
        services.image_storage().read(image.sha256), [suit.KEKRecipient(b"k", bytes(16))]
    )
    envelope = _envelope(
        author,
        suit_class,
        image,
        uri=f"/fw/i/{hashlib.sha256(forged.ciphertext).hexdigest()}",
        encryption_info=forged.encryption_info,
    )
    with pytest.raises(UnknownEncryptionInfoError):
        services.manifest_import(envelope=envelope, created_by=author.user, now=NOW)


def test_encrypted_manifest_naming_the_plaintext_uri_is_refused(
    suit_class: Any, admin: Any, author: Any, image: FirmwareImage
) -> None:
    services.payload_key_rotate(device_class=suit_class, actor=admin)
    row = services.payload_encrypt(image=image, device_class=suit_class, actor=author.user)
    envelope = _envelope(author, suit_class, image, encryption_info=bytes(row.encryption_info))
    with pytest.raises(PayloadURIError):
        services.manifest_import(envelope=envelope, created_by=author.user, now=NOW)


def test_encrypting_without_any_key_is_refused(
    suit_class: Any, author: Any, image: FirmwareImage
) -> None:
    with pytest.raises(PayloadEncryptionError, match="no payload key"):
        services.payload_encrypt(image=image, device_class=suit_class, actor=author.user)
    assert not EncryptedPayload.objects.exists()


def test_no_key_material_in_the_audit_log_or_the_cli_output(
    suit_class: Any, admin: Any, author: Any, image: FirmwareImage, tmp_path: Path, capsys: Any
) -> None:
    key_file = tmp_path / "kek.hex"
    secret = bytes(range(100, 116))
    key_file.write_text(secret.hex())
    call_command(
        "payload",
        "key-rotate",
        "--class",
        f"{suit_class.vendor.domain}/{suit_class.name}",
        "--key-file",
        str(key_file),
        "--user",
        admin.get_username(),
    )
    row = services.active_payload_key(suit_class)
    assert row is not None and _kek(row) == secret
    info_path = tmp_path / "info.cbor"
    call_command(
        "payload",
        "encrypt",
        "--class",
        f"{suit_class.vendor.domain}/{suit_class.name}",
        "--image",
        image.sha256,
        "--out",
        str(info_path),
        "--user",
        author.user.get_username(),
    )
    out = capsys.readouterr().out
    info = info_path.read_bytes()
    cek = suit.unwrap_content_key(info, kid=bytes.fromhex(row.kid), key=secret)
    assert cbor2.loads(info).tag == 96
    logged = json.dumps([e.details for e in AuditEvent.objects.all()]) + out
    for material in (secret, cek):
        assert material.hex() not in logged and material.hex().upper() not in logged
    assert {"payload_key.rotate", "payload.encrypt"} <= set(
        AuditEvent.objects.values_list("action", flat=True)
    )


# --- MCUboot images encrypted for a class's image key ----------------------------------------


@pytest.fixture
def image_class(vendor: Any, catalog_admin: Any) -> Any:
    return services.device_class_create(vendor=vendor, name="lock-v1", actor=catalog_admin)


def test_server_builds_an_image_encrypted_for_the_class_and_import_records_the_key(
    image_class: Any, admin: Any, author: Any, tmp_path: Path
) -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        device_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    key = services.image_encryption_key_set(
        device_class=image_class, public_key_pem=pem, actor=admin
    )
    assert (
        services.image_encryption_key_set(device_class=image_class, public_key_pem=pem, actor=admin)
        == key
    )
    signing = imgtool.keygen(tmp_path / "boot.pem")
    built = services.image_build_encrypted(
        device_class=image_class,
        payload=MARKER * 100,
        version="1.4.0+7",
        security_counter=3,
        signing_key_path=signing,
    )
    assert MARKER not in built
    assert MARKER in decrypt_image(built, device_key)
    uploaded = services.image_upload(data=built, filename="enc.bin", actor=author.user)
    assert uploaded.info["encryption"] == {"tlvs": ["ENC_EC256"], "aes_bits": 128}
    manifest = services.manifest_import(
        envelope=_envelope(author, image_class, uploaded), created_by=author.user, now=NOW
    )
    event = AuditEvent.objects.get(action="manifest.import", object_id=manifest.manifest_digest)
    assert event.details["image_encrypted_for"] == key.kid
    # A plaintext image is refused for this class; an encrypted one for a class without a key too.
    plain = services.image_upload(
        data=imgtool.build_image(
            MARKER * 90, version="1.4.0+7", security_counter=3, key_path=signing
        ),
        actor=author.user,
    )
    with pytest.raises(EncryptionRequiredError, match="ENC_EC256"):
        services.manifest_import(
            envelope=_envelope(author, image_class, plain, sequence_number=11),
            created_by=author.user,
            now=NOW,
        )
    other = services.device_class_create(vendor=image_class.vendor, name="lock-v2", actor=admin)
    stray = services.image_upload(
        data=imgtool.build_image(
            MARKER * 80,
            version="1.4.0+7",
            security_counter=3,
            key_path=signing,
            encrypt_key_pem=pem.encode(),
        ),
        actor=author.user,
    )
    with pytest.raises(UnknownEncryptionInfoError, match="no image encryption key"):
        services.manifest_import(
            envelope=_envelope(author, other, stray), created_by=author.user, now=NOW
        )


def test_image_key_that_is_not_p256_or_x25519_is_refused(image_class: Any, admin: Any) -> None:
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(PayloadEncryptionError, match="P-256 or X25519"):
        services.image_encryption_key_set(device_class=image_class, public_key_pem=pem, actor=admin)
    assert services.active_image_key(image_class) is None
