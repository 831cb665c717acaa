"""Release-side services: the catalog (vendors, classes, images, manifests) and who may write it,
key registration, manifest import and its refusals."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from audit.models import AuditEvent
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
    PermissionDeniedError,
    SequenceNumberConflictError,
    UnknownDeviceClassError,
    UnknownVendorError,
    UntrustedManifestError,
)
from manifests.models import DeviceClass, FirmwareImage, KeyStatus, Manifest, Vendor
from manifests.suit.cbor import CBORTag, dumps, encode_bstr
from manifests.suit.constants import (
    ALG_SHA256,
    DIR_TRY_EACH,
    ENV_AUTH,
    ENV_MANIFEST,
    M_INSTALL,
    TAG_ENVELOPE,
)
from manifests.suit.cose import sign1
from tests.helpers.imgtool import build_mcuboot_image

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def author(author: Any, catalog_admin: Any) -> Any:
    """The shared persona, holding the author role (images and manifests need it)."""
    services.role_grant(
        user=author.user, role="author", actor=catalog_admin, now=NOW - dt.timedelta(days=30)
    )
    return author


@pytest.fixture
def mcuboot_bytes(tmp_path: Path) -> bytes:
    return build_mcuboot_image(
        tmp_path, payload=b"\x5a" * 4096, version="1.4.0+7", security_counter=3
    )


@pytest.fixture
def image(mcuboot_bytes: bytes, author: Any) -> FirmwareImage:
    return services.image_upload(data=mcuboot_bytes, filename="app.bin", actor=author.user)


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
    first = services.image_upload(data=mcuboot_bytes, filename="a.bin", actor=author.user)
    second = services.image_upload(data=mcuboot_bytes, filename="b.bin", actor=author.user)
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
        services.image_upload(data=bytes(tampered), actor=author.user)
    assert FirmwareImage.objects.count() == 0
    assert not services.image_storage().exists(hashlib.sha256(bytes(tampered)).hexdigest())


def test_oversized_image_is_refused(settings: Any, author: Any):
    settings.FIRMWARE_MAX_IMAGE_SIZE = 1024
    with pytest.raises(ImageTooLargeError):
        services.image_upload(data=b"\0" * 1025, actor=author.user)
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


def test_delta_manifest_with_an_unconditioned_source_component_is_refused_at_import(
    device_class: Any, image: FirmwareImage, author: Any, author_key: Any
):
    """The author's tool lost the source's image-match: the second component names no
    precursor, so the catalog refuses the manifest (and a device would refuse the delta)."""
    params = params_for(device_class, image, precursor_digests=(b"\xaa" * 32,))
    manifest = cbor2.loads(suit.build_manifest(params))
    install = cbor2.loads(manifest[M_INSTALL])
    at = next(i for i in range(0, len(install), 2) if install[i] == DIR_TRY_EACH)
    install[at + 1] = [
        dumps([c for i, c in enumerate(o) if i not in (4, 5)] if len(o) > 4 else o)
        for o in map(cbor2.loads, install[at + 1])
    ]
    manifest[M_INSTALL] = dumps(install)
    manifest_bytes = dumps(manifest)
    digest_bstr = dumps([ALG_SHA256, hashlib.sha256(encode_bstr(manifest_bytes)).digest()])
    auth = dumps([digest_bstr, sign1(digest_bstr, author.private_key)])
    envelope = dumps(CBORTag(TAG_ENVELOPE, {ENV_AUTH: auth, ENV_MANIFEST: manifest_bytes}))
    with pytest.raises(ManifestComponentError):
        services.manifest_import(envelope=envelope, created_by=author.user, now=NOW)
    assert Manifest.objects.count() == 0
    # the same manifest with its condition is taken
    conditioned = suit.create_envelope(params, keys=[author.private_key])
    row = services.manifest_import(envelope=conditioned, created_by=author.user, now=NOW)
    assert suit.decode_envelope(bytes(row.envelope)).manifest.precursor_digests == (b"\xaa" * 32,)


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
    image = services.image_upload(data=stamped, actor=author.user)
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


# --- who may write the catalog --------------------------------------------------------------
CATALOG_ROWS = (Vendor, DeviceClass, FirmwareImage, Manifest, AuditEvent)


def _rows() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in CATALOG_ROWS}


@pytest.fixture
def actor_named(request: pytest.FixtureRequest, catalog_admin: Any) -> Any:
    """A user by persona: ``outsider`` (no role), ``author``, ``qa``, ``operator``, ``inactive``
    (an admin who was deactivated) or ``nobody`` (no user at all)."""

    def named(persona: str) -> Any:
        if persona == "nobody":
            return None
        if persona == "inactive":
            user = request.getfixturevalue("django_user_model").objects.create_superuser(
                username="former-admin", password=None, is_active=False
            )
            return user
        fixture = {"qa": "approver_qa", "operator": "operator"}.get(persona, persona)
        user = request.getfixturevalue(fixture).user
        role = {"qa": "qa", "operator": "fleet_operator"}.get(persona)
        if role:
            services.role_grant(
                user=user, role=role, actor=catalog_admin, now=NOW - dt.timedelta(days=30)
            )
        return user

    return named


@pytest.mark.parametrize("persona", ["outsider", "author", "operator", "inactive", "nobody"])
def test_vendor_registration_by_a_non_admin_is_refused_and_writes_nothing(
    actor_named: Any, persona: str
):
    actor = actor_named(persona)
    before = _rows()
    with pytest.raises(PermissionDeniedError):
        services.vendor_create(name="Evil", domain="evil.example", actor=actor)
    assert _rows() == before


@pytest.mark.parametrize("persona", ["outsider", "author", "operator", "inactive", "nobody"])
def test_device_class_registration_by_a_non_admin_is_refused_and_writes_nothing(
    vendor: Any, actor_named: Any, persona: str
):
    actor = actor_named(persona)
    before = _rows()
    with pytest.raises(PermissionDeniedError):
        services.device_class_create(
            vendor=vendor, name="thermo-evil", payload_format="raw", actor=actor
        )
    assert _rows() == before


def test_an_admin_registers_vendors_and_classes_and_is_audited(catalog_admin: Any):
    vendor = services.vendor_create(name="Beta", domain="beta.example", actor=catalog_admin)
    services.device_class_create(vendor=vendor, name="probe", actor=catalog_admin)
    actors = set(
        AuditEvent.objects.filter(action__in=["vendor.create", "device_class.create"]).values_list(
            "actor", flat=True
        )
    )
    assert actors == {catalog_admin.username}


@pytest.mark.parametrize("persona", ["outsider", "qa", "operator", "inactive", "nobody"])
def test_image_upload_by_a_non_author_is_refused_and_stores_nothing(
    mcuboot_bytes: bytes, actor_named: Any, persona: str
):
    actor = actor_named(persona)
    before = _rows()
    with pytest.raises(PermissionDeniedError):
        services.image_upload(data=mcuboot_bytes, filename="evil.bin", actor=actor)
    assert _rows() == before
    assert not services.image_storage().exists(hashlib.sha256(mcuboot_bytes).hexdigest())


def test_reupload_of_stored_bytes_by_an_outsider_is_refused(
    image: FirmwareImage, mcuboot_bytes: bytes, outsider: Any
):
    """The idempotent path (same bytes, same row) does not skip the role check."""
    before = _rows()
    with pytest.raises(PermissionDeniedError):
        services.image_upload(data=mcuboot_bytes, actor=outsider.user)
    assert _rows() == before


@pytest.mark.parametrize("persona", ["outsider", "qa"])
def test_manifest_import_by_a_non_author_is_refused_even_with_their_own_valid_signature(
    device_class: Any, image: FirmwareImage, actor_named: Any, persona: str, request: Any
):
    actor = actor_named(persona)
    signer = request.getfixturevalue("approver_qa" if persona == "qa" else persona)
    services.signing_key_register(
        owner=actor, public_key_pem=signer.public_pem, valid_from=NOW - dt.timedelta(days=1)
    )
    before = _rows()
    with pytest.raises(PermissionDeniedError):
        _import(device_class, image, signer.private_key, actor)
    assert _rows() == before


def test_a_refusal_names_the_roles_it_needs_by_their_names(actor_named: Any):
    from manifests.models import Role
    from manifests.services.access import require_role

    actor = actor_named("outsider")
    with pytest.raises(PermissionDeniedError) as refused:
        require_role(actor, Role.QA, Role.ADMIN, "qa")
    assert str(refused.value) == (
        f"{actor.get_username()} needs one of the roles admin, qa for this action"
    )
