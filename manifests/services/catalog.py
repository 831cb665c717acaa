"""Catalog services: vendors, device classes, images and manifests. Each checks the actor's role
first, runs in one transaction, writes its audit event in it, and writes nothing when it refuses.

Vendors and device classes are the identities every manifest and device is checked against
(UUIDs, the class's fixed component and payload format): admin only. Images and manifests are the
author's daily work: author or admin (``manifests.services.access``)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from manifests import delivery as delivery_rules
from manifests import suit
from manifests.errors import (
    DeliveryConflictError,
    DeliveryProfileError,
    DeltaSettingError,
    DeviceClassExistsError,
    DuplicateManifestError,
    EncryptionRequiredError,
    ImageNotFoundError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidManifestError,
    ManifestComponentError,
    ManifestImageMismatchError,
    ManifestProfileConflictError,
    ManifestProfileError,
    PayloadURIError,
    SequenceNumberConflictError,
    UnknownDeviceClassError,
    UnknownEncryptionInfoError,
    UnknownVendorError,
    UntrustedManifestError,
    VendorExistsError,
)
from manifests.images import ImageError, ImageStorage, ingest_image
from manifests.images.storage import FileSystemImageStorage
from manifests.models import (
    DeliveryMethod,
    DeliveryProfile,
    DeltaCompression,
    DeltaPatchType,
    DeviceClass,
    EncryptedPayload,
    FirmwareImage,
    ImageEncryptionKey,
    Manifest,
    ManifestProfile,
    PayloadEncryptionKey,
    PayloadFormat,
    PayloadKeyStatus,
    ReleaseStatus,
    SigningKey,
    Vendor,
)
from manifests.selectors import served_envelope
from manifests.services.access import CATALOG_ADMINS, CATALOG_WRITE, require_role
from manifests.services.facts import key_is_usable
from manifests.signals import device_class_created, vendor_created
from manifests.versions import format_version, parse_version

DEFAULT_COMPONENT_ID = ["00"]


@lru_cache(maxsize=1)
def _storage_for(root: str) -> ImageStorage:
    return FileSystemImageStorage(Path(root))


def image_storage() -> ImageStorage:
    """The content-addressed image store configured by FIRMWARE_STORAGE_ROOT."""
    return _storage_for(str(settings.FIRMWARE_STORAGE_ROOT))


def vendor_create(*, name: str, domain: str, actor: AbstractBaseUser) -> Vendor:
    require_role(actor, *CATALOG_ADMINS)
    domain = domain.strip().lower().rstrip(".")
    with transaction.atomic():
        if Vendor.objects.filter(domain=domain).exists():
            raise VendorExistsError(f"vendor with domain {domain!r} already exists")
        vendor = Vendor.objects.create(name=name, domain=domain, uuid=suit.vendor_id(domain))
        audit_record(
            actor=actor,
            action="vendor.create",
            object_type="vendor",
            object_id=vendor.pk,
            details={"domain": domain, "uuid": str(vendor.uuid)},
        )
        vendor_created.send(sender=Vendor, vendor=vendor)
        return vendor


def device_class_create(
    *,
    vendor: Vendor,
    name: str,
    component_id: Sequence[str] | None = None,
    payload_format: str = PayloadFormat.MCUBOOT,
    delivery: str = DeliveryProfile.IMAGE,
    delivery_method: str = DeliveryMethod.AUTO,
    manifest_profile: str = ManifestProfile.EXTENDED,
    description: str = "",
    actor: AbstractBaseUser,
) -> DeviceClass:
    require_role(actor, *CATALOG_ADMINS)
    if payload_format not in PayloadFormat.values:
        raise ManifestComponentError(
            f"payload format {payload_format!r} is not one of {PayloadFormat.values}"
        )
    _check_delivery(delivery, delivery_method)
    _check_profile(manifest_profile)
    component = list(component_id) if component_id else list(DEFAULT_COMPONENT_ID)
    try:
        for part in component:
            bytes.fromhex(part)
    except ValueError:
        raise ManifestComponentError(f"component id {component!r} is not a list of hex") from None
    with transaction.atomic():
        if DeviceClass.objects.filter(vendor=vendor, name=name).exists():
            raise DeviceClassExistsError(f"device class {name!r} already exists for {vendor}")
        device_class = DeviceClass.objects.create(
            vendor=vendor,
            name=name,
            uuid=suit.class_id(vendor.uuid, name),
            component_id=component,
            payload_format=payload_format,
            delivery=delivery,
            delivery_method=delivery_method,
            manifest_profile=manifest_profile,
            description=description,
        )
        audit_record(
            actor=actor,
            action="device_class.create",
            object_type="device_class",
            object_id=device_class.pk,
            details={
                "vendor": vendor.domain,
                "name": name,
                "uuid": str(device_class.uuid),
                "component_id": component,
                "payload_format": payload_format,
                "delivery": delivery,
                "delivery_method": delivery_method,
                "manifest_profile": manifest_profile,
            },
        )
        device_class_created.send(sender=DeviceClass, device_class=device_class)
        return device_class


def _check_delivery(profile: str, method: str | None) -> None:
    if profile not in DeliveryProfile.values:
        raise DeliveryProfileError(
            f"delivery profile {profile!r} is not one of {DeliveryProfile.values}"
        )
    if method is not None and method not in DeliveryMethod.values:
        raise DeliveryProfileError(
            f"delivery method {method!r} is not one of {DeliveryMethod.values}"
        )


def _check_profile(profile: str) -> None:
    if profile not in ManifestProfile.values:
        raise ManifestProfileError(
            f"manifest profile {profile!r} is not one of {ManifestProfile.values}"
        )


def device_class_set_manifest_profile(
    *, device_class: DeviceClass, manifest_profile: str, actor: AbstractBaseUser
) -> DeviceClass:
    """Change which SUIT envelopes the class takes (docs/suit.md, "Manifest profiles").

    Admin only, audited, idempotent (no change, no event). Refused, with nothing written, while
    the class has a live release (not revoked): its envelope, signed and immutable, was built for
    the old profile (an "extended" device refuses a manifest without a security counter)."""
    require_role(actor, *CATALOG_ADMINS)
    _check_profile(manifest_profile)
    with transaction.atomic():
        row = (
            DeviceClass.objects.select_for_update().select_related("vendor").get(pk=device_class.pk)
        )
        if row.manifest_profile == manifest_profile:
            return row
        live = (
            Manifest.objects.filter(device_class=row, release__isnull=False)
            .exclude(release__status=ReleaseStatus.REVOKED)
            .values_list("release__name", flat=True)
            .order_by("pk")
        )
        names = list(live[:3])
        if names:
            raise ManifestProfileConflictError(
                f"{row} cannot take manifest profile {manifest_profile!r} while it has live "
                f"releases ({', '.join(names)}…); revoke or replace them first"
            )
        before = row.manifest_profile
        row.manifest_profile = manifest_profile
        row.save(update_fields=["manifest_profile"])
        audit_record(
            actor=actor,
            action="device_class.set_manifest_profile",
            object_type="device_class",
            object_id=row.pk,
            details={"device_class": str(row), "before": before, "after": manifest_profile},
        )
        device_class.manifest_profile = manifest_profile
        return row


def device_class_update(
    *,
    device_class: DeviceClass,
    delivery: str | None = None,
    delivery_method: str | None = None,
    manifest_profile: str | None = None,
    delta_updates: bool | None = None,
    delta_compression: str | None = None,
    delta_patch_type: str | None = None,
    actor: AbstractBaseUser,
) -> DeviceClass:
    """The class's delivery (and forced method), manifest profile and/or delta setting, in one
    transaction: either every asked change is made or none is."""
    with transaction.atomic():
        row = device_class
        if delivery is not None or delivery_method is not None:
            row = device_class_set_delivery(
                device_class=row,
                delivery=delivery if delivery is not None else row.delivery,
                method=delivery_method,
                actor=actor,
            )
        if manifest_profile is not None:
            row = device_class_set_manifest_profile(
                device_class=row, manifest_profile=manifest_profile, actor=actor
            )
        if (
            delta_updates is not None
            or delta_compression is not None
            or delta_patch_type is not None
        ):
            row = device_class_set_delta(
                device_class=row,
                delta_updates=delta_updates,
                compression=delta_compression,
                patch_type=delta_patch_type,
                actor=actor,
            )
    # the caller's instance shows what was stored (as the single-purpose services do)
    device_class.delivery, device_class.delivery_method = row.delivery, row.delivery_method
    device_class.manifest_profile = row.manifest_profile
    device_class.delta_updates = row.delta_updates
    device_class.delta_compression = row.delta_compression
    device_class.delta_patch_type = row.delta_patch_type
    return row


def device_class_set_delta(
    *,
    device_class: DeviceClass,
    delta_updates: bool | None = None,
    compression: str | None = None,
    patch_type: str | None = None,
    actor: AbstractBaseUser,
) -> DeviceClass:
    """Declare whether the class's devices apply deltas, with which decompressor and how
    (sequential or in place; None keeps the current value). Admin only, audited, idempotent (no
    change, no event)."""
    require_role(actor, *CATALOG_ADMINS)
    if compression is not None and compression not in DeltaCompression.values:
        raise DeltaSettingError(
            f"delta compression {compression!r} is not one of {DeltaCompression.values}"
        )
    if patch_type is not None and patch_type not in DeltaPatchType.values:
        raise DeltaSettingError(
            f"delta patch type {patch_type!r} is not one of {DeltaPatchType.values}"
        )
    with transaction.atomic():
        row = (
            DeviceClass.objects.select_for_update().select_related("vendor").get(pk=device_class.pk)
        )
        after = {
            "delta_updates": row.delta_updates if delta_updates is None else bool(delta_updates),
            "delta_compression": row.delta_compression if compression is None else compression,
            "delta_patch_type": row.delta_patch_type if patch_type is None else patch_type,
        }
        before = {
            "delta_updates": row.delta_updates,
            "delta_compression": row.delta_compression,
            "delta_patch_type": row.delta_patch_type,
        }
        if before == after:
            return row
        row.delta_updates = after["delta_updates"]
        row.delta_compression = after["delta_compression"]
        row.delta_patch_type = after["delta_patch_type"]
        row.save(update_fields=["delta_updates", "delta_compression", "delta_patch_type"])
        audit_record(
            actor=actor,
            action="device_class.set_delta",
            object_type="device_class",
            object_id=row.pk,
            details={"device_class": str(row), "before": before, "after": after},
        )
        device_class.delta_updates = row.delta_updates
        device_class.delta_compression = row.delta_compression
        device_class.delta_patch_type = row.delta_patch_type
        return row


def served_origins() -> list[str]:
    """The public URIs the gateways are configured with: an absolute manifest URI must name one
    of them (``manifests.delivery.payload_uri_problem``)."""
    return [
        uri
        for uri in (settings.LWM2M_PUBLIC_URI, settings.LWM2M_DTLS_PUBLIC_URI)
        if isinstance(uri, str) and uri
    ]


def device_class_set_delivery(
    *,
    device_class: DeviceClass,
    delivery: str,
    method: str | None = None,
    actor: AbstractBaseUser,
) -> DeviceClass:
    """Change how the class's devices take firmware (``method`` None keeps the current one).

    Admin only, audited, idempotent (no change, no event). Refused, with nothing written, when a
    live release (not revoked) of the class names a payload URI the new profile could not serve:
    switching to or from ``suit-integrated`` changes what the URI must be, and manifests are
    immutable, so such a release must be revoked or replaced first."""
    require_role(actor, *CATALOG_ADMINS)
    _check_delivery(delivery, method)
    with transaction.atomic():
        locked = DeviceClass.objects.select_for_update().select_related("vendor")
        row = locked.get(pk=device_class.pk)
        new_method = method if method is not None else row.delivery_method
        if row.delivery == delivery and row.delivery_method == new_method:
            return row
        if row.delivery != delivery:
            origins = served_origins()
            live = (
                Manifest.objects.filter(device_class=row, release__isnull=False)
                .exclude(release__status=ReleaseStatus.REVOKED)
                .values_list("manifest_digest", "uri", "image_digest", "release__name")
                .order_by("pk")
            )
            conflicts = [
                (name, problem)
                for digest, uri, image_sha256, name in live
                if (
                    problem := delivery_uri_problem(
                        uri or None, profile=delivery, image_sha256=image_sha256, origins=origins
                    )
                )
            ]
            if conflicts:
                name, problem = conflicts[0]
                raise DeliveryConflictError(
                    f"{row} cannot take delivery {delivery!r}: {len(conflicts)} live release(s) "
                    f"could not be served, e.g. {name}: {problem}; revoke or replace them first"
                )
        before = {"delivery": row.delivery, "delivery_method": row.delivery_method}
        row.delivery, row.delivery_method = delivery, new_method
        row.save(update_fields=["delivery", "delivery_method"])
        audit_record(
            actor=actor,
            action="device_class.set_delivery",
            object_type="device_class",
            object_id=row.pk,
            details={
                "device_class": str(row),
                "before": before,
                "after": {"delivery": delivery, "delivery_method": new_method},
            },
        )
        device_class.delivery, device_class.delivery_method = delivery, new_method
        return row


def delivery_uri_problem(
    uri: str | None, *, profile: str, image_sha256: str, origins: list[str] | None = None
) -> str | None:
    return delivery_rules.payload_uri_problem(
        uri,
        profile=profile,
        image_sha256=image_sha256,
        served_origins=served_origins() if origins is None else origins,
    )


def integrated_envelope(manifest_digest: str) -> bytes | None:
    """The served envelope (the frozen released envelope when the release has one, else the
    author-signed one) with its payload integrated under the manifest's fragment URI
    (``suit.integrate_payload``), what the gateway serves to a ``suit-integrated`` device. None
    when no manifest has that digest, its URI is not a fragment reference, or its image is not
    in the store (the gateway answers 4.04, as for any missing file)."""
    row = (
        Manifest.objects.filter(manifest_digest=str(manifest_digest).lower())
        .only("uri", "image_digest")
        .first()
    )
    if row is None or not delivery_rules.is_fragment_reference(row.uri):
        return None
    envelope = served_envelope(row.manifest_digest)
    store = image_storage()
    if (
        envelope is None
        or not store.exists(row.image_digest)
        or image_is_confidential(row.image_digest)
    ):
        return None
    payload: bytes = store.read(row.image_digest)
    return suit.integrate_payload(envelope, payload, max_size=settings.SUIT_MAX_ENVELOPE_SIZE)


def image_is_confidential(sha256: str) -> bool:
    """The image is released encrypted for some class: its plaintext is never served."""
    return EncryptedPayload.objects.filter(image__sha256=sha256.lower()).exists()


def image_upload(*, data: bytes, actor: AbstractBaseUser, filename: str = "") -> FirmwareImage:
    """Parse, check and store an image; the same bytes uploaded twice give the same row. The
    role is checked before anything is read or stored, a duplicate upload included."""
    require_role(actor, *CATALOG_WRITE)
    if len(data) > settings.FIRMWARE_MAX_IMAGE_SIZE:
        raise ImageTooLargeError(
            f"image of {len(data)} bytes exceeds the limit of {settings.FIRMWARE_MAX_IMAGE_SIZE}"
        )
    try:
        info = ingest_image(data)
    except ImageError as exc:
        raise InvalidImageError(f"{exc} [{exc.code}]") from exc
    existing = FirmwareImage.objects.filter(sha256=info.sha256).first()
    if existing is not None:
        return existing
    # Content first, row second: a crash between the two leaves an unreferenced blob, never a
    # row pointing at missing content.
    image_storage().put(data)
    try:
        with transaction.atomic():
            image = FirmwareImage.objects.create(
                sha256=info.sha256,
                size=info.size,
                kind=info.kind,
                version=format_version(parse_version(info.version)) if info.version else "",
                security_counter=info.security_counter,
                info=info.to_json_dict(),
                filename=filename[:255],
                uploaded_by=actor,
            )
            audit_record(
                actor=actor,
                action="image.upload",
                object_type="image",
                object_id=image.sha256,
                details={"kind": image.kind, "size": image.size, "version": image.version},
            )
            return image
    except IntegrityError:
        # A concurrent upload of the same bytes won the race.
        return FirmwareImage.objects.get(sha256=info.sha256)


def manifest_import(
    *, envelope: bytes, created_by: AbstractBaseUser, now: dt.datetime | None = None
) -> Manifest:
    """Store an author-signed envelope after every cross-check; the bytes are kept exactly.

    Refuses (and writes nothing) when ``created_by`` is not an author or admin, the envelope is
    malformed, names an unknown vendor/class, targets a component or format the class does not
    use, installs an image we do not hold or whose MCUboot version/security counter disagree,
    names a payload URI the class's delivery profile could not serve (``PayloadURIError``),
    reuses a sequence number, or carries no signature from an active key registered to
    ``created_by``.
    """
    now = now or timezone.now()
    require_role(created_by, *CATALOG_WRITE, at=now)
    try:
        env = suit.decode_envelope(envelope, max_size=settings.SUIT_MAX_ENVELOPE_SIZE)
    except suit.SUITError as exc:
        raise InvalidManifestError(str(exc), suit_code=exc.code) from exc
    m = env.manifest
    vendor = Vendor.objects.filter(uuid=m.vendor_id).first() if m.vendor_id else None
    if vendor is None:
        raise UnknownVendorError(f"manifest vendor-id {m.vendor_id} is not a registered vendor")
    device_class = (
        DeviceClass.objects.filter(uuid=m.class_id, vendor=vendor).first() if m.class_id else None
    )
    if device_class is None:
        raise UnknownDeviceClassError(
            f"manifest class-id {m.class_id} is not a device class of {vendor.domain}"
        )
    _check_component(env, device_class)
    if m.image_digest is None or m.image_size is None:
        raise InvalidManifestError(
            "manifest carries no image digest/size", suit_code="suit.missing_key"
        )
    if m.profile != device_class.manifest_profile:
        raise ManifestProfileError(
            f"the envelope is of manifest profile {m.profile!r} but {device_class} takes "
            f'{device_class.manifest_profile!r} (docs/suit.md, "Manifest profiles")'
        )
    if m.sequence_number is None or m.firmware_version is None:
        raise InvalidManifestError(
            "manifest needs sequence number and version", suit_code="suit.missing_key"
        )
    if m.profile == ManifestProfile.EXTENDED and m.security_counter is None:
        raise InvalidManifestError(
            "an extended-profile manifest needs a security counter", suit_code="suit.missing_key"
        )
    image = FirmwareImage.objects.filter(sha256=m.image_digest.hex()).first()
    if image is None or image.size != m.image_size:
        raise ImageNotFoundError(
            f"no stored image with digest {m.image_digest.hex()} and size {m.image_size}"
        )
    _check_image_agrees(env, image, device_class)
    image_key = _check_image_encryption(image, device_class)
    # A standard-profile manifest carries no security counter; the release's is the image's own
    # (MCUboot's security-counter TLV, which its bootloader enforces), else 0.
    security_counter = (
        m.security_counter if m.security_counter is not None else (image.security_counter or 0)
    )
    encrypted = _encrypted_payload(env, image, device_class)
    problem = delivery_uri_problem(
        m.uri,
        profile=device_class.delivery,
        image_sha256=encrypted.ciphertext_sha256 if encrypted is not None else image.sha256,
    )
    if problem is not None:
        raise PayloadURIError(f"{device_class} takes delivery {device_class.delivery!r}: {problem}")
    author_key = _author_key(env, owner=created_by, now=now)
    with transaction.atomic():
        if Manifest.objects.filter(manifest_digest=env.manifest_digest.hex()).exists():
            raise DuplicateManifestError(f"manifest {env.manifest_digest.hex()} already stored")
        if Manifest.objects.filter(
            device_class=device_class, sequence_number=m.sequence_number
        ).exists():
            raise SequenceNumberConflictError(
                f"{device_class} already has a manifest with sequence number {m.sequence_number}"
            )
        manifest = Manifest.objects.create(
            envelope=bytes(envelope),
            manifest_digest=env.manifest_digest.hex(),
            vendor=vendor,
            device_class=device_class,
            image=image,
            version=m.firmware_version,
            version_parts=list(parse_version(m.firmware_version)),
            sequence_number=m.sequence_number,
            security_counter=security_counter,
            expires_at=m.use_before,
            image_digest=m.image_digest.hex(),
            image_size=m.image_size,
            uri=m.uri or "",
            author_key=author_key,
            created_by=created_by,
        )
        audit_record(
            actor=created_by,
            action="manifest.import",
            object_type="manifest",
            object_id=manifest.manifest_digest,
            details={
                "device_class": str(device_class),
                "version": manifest.version,
                "sequence_number": manifest.sequence_number,
                "security_counter": manifest.security_counter,
                "image": image.sha256,
                "author_kid": author_key.kid,
                "ciphertext": encrypted.ciphertext_sha256 if encrypted is not None else None,
                "image_encrypted_for": image_key,
            },
        )
        return manifest


_IMAGE_KEY_TLVS = {"ecies-p256": "ENC_EC256", "ecies-x25519": "ENC_X25519"}


def _check_image_encryption(image: FirmwareImage, device_class: DeviceClass) -> str | None:
    """A class with an MCUboot image encryption key takes images encrypted for that kind of key
    only; an MCUboot-encrypted image needs a class whose devices have such a key. (Which public
    key an ECIES-wrapped image is for cannot be checked without the device's private key: the
    TLV kind is checked, and the import records the class's active key.)"""
    key = ImageEncryptionKey.objects.filter(
        device_class=device_class, status=PayloadKeyStatus.ACTIVE
    ).first()
    tlvs = (image.info.get("encryption") or {}).get("tlvs") or []
    if key is None:
        if tlvs:
            raise UnknownEncryptionInfoError(
                f"the image is MCUboot-encrypted ({', '.join(tlvs)}) but {device_class} has no "
                "image encryption key (manage.py payload image-key)"
            )
        return None
    wanted = _IMAGE_KEY_TLVS[key.kind]
    if wanted not in tlvs:
        raise EncryptionRequiredError(
            f"{device_class} takes MCUboot images encrypted for its {key.kind} key {key.kid} "
            f"({wanted}); this image has {tlvs or 'no encryption TLV'}"
        )
    return key.kid


def _encrypted_payload(
    env: suit.Envelope, image: FirmwareImage, device_class: DeviceClass
) -> EncryptedPayload | None:
    """The stored encryption the manifest names (None for a plaintext manifest). A class with a
    payload key-encryption key takes encrypted manifests only; an encrypted manifest must carry
    an encryption info produced here for this class and image (else its ciphertext is not the
    one served, or no key here could have wrapped its content key)."""
    infos = env.manifest.encryption_info
    if not infos:
        if PayloadEncryptionKey.objects.filter(
            device_class=device_class, status=PayloadKeyStatus.ACTIVE
        ).exists():
            raise EncryptionRequiredError(
                f"{device_class} has a payload key-encryption key: it takes encrypted payloads "
                "only (manage.py payload encrypt, then suit create --encryption-info)"
            )
        return None
    if device_class.delivery != DeliveryProfile.SUIT or len(infos) != 1:
        raise UnknownEncryptionInfoError(
            f"encrypted payloads are served detached to {DeliveryProfile.SUIT!r} classes, one "
            f"per manifest; {device_class} takes {device_class.delivery!r}"
        )
    try:
        digest = hashlib.sha256(suit.encode_encryption_info(infos[0])).hexdigest()
    except suit.SUITEncryptionError as exc:
        raise InvalidManifestError(str(exc), suit_code=exc.code) from exc
    row = EncryptedPayload.objects.filter(
        encryption_info_sha256=digest, device_class=device_class, image=image
    ).first()
    if row is None:
        raise UnknownEncryptionInfoError(
            f"the manifest's encryption info was not produced here for {device_class} and image "
            f"{image.sha256[:12]}"
        )
    return row


def _check_component(env: suit.Envelope, device_class: DeviceClass) -> None:
    components = [tuple(c) for c in env.manifest.components]
    expected = device_class.component_id_bytes
    # plus the delta source component (the running slot) when the manifest names precursors
    with_source = [expected, suit.source_component_id(expected)]
    if components != [expected] and not (
        env.manifest.precursor_digests and components == with_source
    ):
        raise ManifestComponentError(
            f"manifest components {[[p.hex() for p in c] for c in components]} differ from "
            f"{device_class}'s fixed component {device_class.component_id}"
        )
    declared = env.manifest.payload_format
    # a standard-profile manifest declares no format: the class's one applies
    if declared is not None and declared != device_class.payload_format:
        raise ManifestComponentError(
            f"manifest payload format {env.manifest.payload_format!r} is not "
            f"{device_class.payload_format!r}, the only format {device_class} installs"
        )


def _check_image_agrees(
    env: suit.Envelope, image: FirmwareImage, device_class: DeviceClass
) -> None:
    m = env.manifest
    if image.kind != device_class.payload_format:
        raise ManifestImageMismatchError(
            f"image is {image.kind!r} but {device_class} installs {device_class.payload_format!r}"
        )
    for field, expected in (
        ("vendor_uuid", device_class.vendor.uuid),
        ("class_uuid", device_class.uuid),
    ):
        stamped = image.info.get(field)
        if stamped and stamped != str(expected):
            raise ManifestImageMismatchError(
                f"the image's MCUboot {field} TLV {stamped} is not {device_class}'s {expected}"
            )
    if image.kind == PayloadFormat.MCUBOOT and m.firmware_version is not None:
        if parse_version(image.version) != parse_version(m.firmware_version):
            raise ManifestImageMismatchError(
                f"manifest version {m.firmware_version} differs from the image header's "
                f"{image.version}"
            )
        if (
            image.security_counter is not None
            and m.security_counter is not None
            and image.security_counter != m.security_counter
        ):
            raise ManifestImageMismatchError(
                f"manifest security counter {m.security_counter} differs from the image's "
                f"security-counter TLV {image.security_counter}"
            )


def _author_key(env: suit.Envelope, *, owner: AbstractBaseUser, now: dt.datetime) -> SigningKey:
    kids = [sig.kid.hex() for sig in env.signatures if sig.kid]
    candidates = SigningKey.objects.filter(kid__in=kids, owner=owner).order_by("pk")
    for key in candidates:
        if not key_is_usable(key, at=now):
            continue
        public = suit.load_public_key_pem(key.public_key_pem.encode())
        for sig in env.signatures:
            if (
                sig.kind == "sign1"
                and sig.kid
                and sig.kid.hex() == key.kid
                and suit.verify_signature_block(env, sig, public)
            ):
                return key
    raise UntrustedManifestError(
        "no signature on the envelope verifies with an active key registered to "
        f"{owner}; signer kids: {[k[:16] for k in kids] or 'none'}"
    )
