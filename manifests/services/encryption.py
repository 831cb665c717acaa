"""Encrypted payloads, server side: class key-encryption keys (held encrypted at rest, rotated
per class) and the encryption of an image for a class. Each service checks the role first, runs
in one transaction and writes its audit event in it; no key bytes ever reach an audit event, an
error message or a log line (kids, sizes and digests only).

The author's part stays offline: ``payload_encrypt`` returns the encryption info (public), the
author puts it into the manifest (``suit create --encryption-info``) and signs; ``manifest_import``
accepts that manifest only when its encryption info is one produced here for that class and image.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from manifests import payload_keys, suit
from manifests.errors import PayloadEncryptionError, PayloadKeyStateError
from manifests.images import imgtool
from manifests.models import (
    DeviceClass,
    EncryptedPayload,
    FirmwareImage,
    ImageEncryptionKey,
    PayloadEncryptionKey,
    PayloadKeyStatus,
)
from manifests.services.access import CATALOG_WRITE, KEY_OFFICERS, require_role
from manifests.services.catalog import image_storage


def payload_key_secret() -> str:
    secret: str = settings.PAYLOAD_KEY_ENCRYPTION_KEY or settings.SECRET_KEY
    return secret


def encryption_info_digest(info: suit.EncryptionInfo) -> str:
    """SHA-256 (hex) of an encryption info's deterministic CBOR: the stored bytes and the
    decoder's CBORTag of the same info agree (how ``manifest_import`` matches them)."""
    return hashlib.sha256(suit.encode_encryption_info(info)).hexdigest()


def payload_key_rotate(
    *,
    device_class: DeviceClass,
    actor: AbstractBaseUser,
    key: bytes | None = None,
    replaces: str | None = None,
    now: dt.datetime | None = None,
) -> PayloadEncryptionKey:
    """A new active key-encryption key for the class (generated, or ``key`` as read from a file);
    the active one, if any, is retired. Releases encrypted afterwards wrap under the new key.
    ``replaces``: the kid the caller saw active; if another is active now (or none), nothing
    changes (``PayloadKeyStateError``), so two officers rotating at once make one new key."""
    now = now or timezone.now()
    require_role(actor, *KEY_OFFICERS, at=now)
    try:
        kek = payload_keys.new_kek() if key is None else payload_keys.check_kek(key)
        token = payload_keys.encrypt_kek(kek, secret=payload_key_secret())
    except payload_keys.PayloadKeyError as exc:
        raise PayloadEncryptionError(str(exc)) from None
    with transaction.atomic():
        locked = DeviceClass.objects.select_for_update().get(pk=device_class.pk)
        previous = PayloadEncryptionKey.objects.filter(
            device_class=locked, status=PayloadKeyStatus.ACTIVE
        ).first()
        if replaces is not None and (previous is None or previous.kid != replaces):
            raise PayloadKeyStateError(
                f"key {replaces} is not the active key of {locked} "
                f"(active: {previous.kid if previous is not None else 'none'})"
            )
        if previous is not None:
            PayloadEncryptionKey.objects.filter(pk=previous.pk).update(
                status=PayloadKeyStatus.RETIRED, retired_at=now
            )
        row = PayloadEncryptionKey.objects.create(
            device_class=locked,
            kid=payload_keys.new_kid(),
            key_encrypted=token,
            size=len(kek),
            created_by=actor,
            created_at=now,
        )
        audit_record(
            actor=actor,
            action="payload_key.rotate",
            object_type="device_class",
            object_id=locked.pk,
            details={
                "device_class": str(locked),
                "kid": row.kid,
                "size": row.size,
                "retired_kid": previous.kid if previous is not None else None,
                "source": "generated" if key is None else "file",
            },
        )
        return row


def active_payload_key(device_class: DeviceClass) -> PayloadEncryptionKey | None:
    return PayloadEncryptionKey.objects.filter(
        device_class=device_class, status=PayloadKeyStatus.ACTIVE
    ).first()


def _device_recipient(kid: str, pem: str) -> suit.ECDHRecipient:
    try:
        public = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        raise PayloadEncryptionError(f"device key {kid} is not a PEM public key") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise PayloadEncryptionError(f"device key {kid} is not a P-256 public key")
    return suit.ECDHRecipient(bytes.fromhex(kid), public)


def payload_encrypt(
    *,
    image: FirmwareImage,
    device_class: DeviceClass,
    actor: AbstractBaseUser,
    device_keys: Sequence[tuple[str, str]] = (),
    class_key: bool = True,
    content_alg: str = "A128GCM",
) -> EncryptedPayload:
    """Encrypt ``image`` under a fresh content key, wrapped for the class's active
    key-encryption key (``class_key``) and for each ``(kid hex, P-256 public PEM)`` in
    ``device_keys``. The ciphertext is stored content-addressed; the row holds the encryption
    info the author signs into the manifest. Each call is a new content key (one per release).
    ``content_alg="A128CTR"`` for devices that decrypt while streaming (docs/suit.md)."""
    require_role(actor, *CATALOG_WRITE)
    recipients: list[suit.KEKRecipient | suit.ECDHRecipient] = []
    kek_row = active_payload_key(device_class) if class_key else None
    if class_key and kek_row is None:
        raise PayloadEncryptionError(f"{device_class} has no payload key-encryption key")
    if kek_row is not None:
        try:
            kek = payload_keys.decrypt_kek(
                bytes(kek_row.key_encrypted), secret=payload_key_secret()
            )
        except payload_keys.PayloadKeyError as exc:
            raise PayloadEncryptionError(f"key {kek_row.kid}: {exc}") from None
        recipients.append(suit.KEKRecipient(bytes.fromhex(kek_row.kid), kek))
    recipients += [_device_recipient(kid, pem) for kid, pem in device_keys]
    if not recipients:
        raise PayloadEncryptionError("no recipient: neither a class key nor a device key")
    store = image_storage()
    try:
        sealed = suit.encrypt_payload(store.read(image.sha256), recipients, content_alg=content_alg)
    except suit.SUITEncryptionError as exc:
        raise PayloadEncryptionError(str(exc)) from None
    # Content first, row second (as image_upload): a crash leaves an unreferenced blob only.
    cipher_sha = store.put(sealed.ciphertext)
    with transaction.atomic():
        row = EncryptedPayload.objects.create(
            image=image,
            device_class=device_class,
            payload_key=kek_row,
            ciphertext_sha256=cipher_sha,
            ciphertext_size=len(sealed.ciphertext),
            encryption_info=sealed.encryption_info,
            encryption_info_sha256=encryption_info_digest(sealed.encryption_info),
            recipient_kids=[kid.hex() for kid in sealed.kids],
            created_by=actor,
        )
        audit_record(
            actor=actor,
            action="payload.encrypt",
            object_type="image",
            object_id=image.sha256,
            details={
                "device_class": str(device_class),
                "ciphertext": cipher_sha,
                "recipient_kids": row.recipient_kids,
                "content_alg": content_alg,
            },
        )
        return row


def _image_key_kind(pem: str) -> tuple[str, str]:
    """(kind, kid) of an MCUboot image encryption public key."""
    try:
        public = serialization.load_pem_public_key(pem.encode())
    except (ValueError, UnicodeError):
        raise PayloadEncryptionError("not a PEM public key") from None
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        kind = "ecies-p256"
    elif isinstance(public, x25519.X25519PublicKey):
        kind = "ecies-x25519"
    else:
        raise PayloadEncryptionError(
            "an MCUboot image encryption key is a P-256 or X25519 public key (imgtool --encrypt)"
        )
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return kind, hashlib.sha256(spki).hexdigest()[:16]


def image_encryption_key_set(
    *,
    device_class: DeviceClass,
    public_key_pem: str,
    actor: AbstractBaseUser,
    now: dt.datetime | None = None,
) -> ImageEncryptionKey:
    """The public key the class's MCUboot decrypts images with; the active one, if another, is
    retired. Setting the active key again changes nothing."""
    now = now or timezone.now()
    require_role(actor, *KEY_OFFICERS, at=now)
    kind, kid = _image_key_kind(public_key_pem)
    with transaction.atomic():
        locked = DeviceClass.objects.select_for_update().get(pk=device_class.pk)
        previous = ImageEncryptionKey.objects.filter(
            device_class=locked, status=PayloadKeyStatus.ACTIVE
        ).first()
        if previous is not None and previous.kid == kid:
            return previous
        if ImageEncryptionKey.objects.filter(kid=kid).exists():
            raise PayloadEncryptionError(f"image key {kid} was used before; use a new key")
        if previous is not None:
            ImageEncryptionKey.objects.filter(pk=previous.pk).update(
                status=PayloadKeyStatus.RETIRED, retired_at=now
            )
        row = ImageEncryptionKey.objects.create(
            device_class=locked,
            kind=kind,
            public_key_pem=public_key_pem,
            kid=kid,
            created_by=actor,
            created_at=now,
        )
        audit_record(
            actor=actor,
            action="image_key.set",
            object_type="device_class",
            object_id=locked.pk,
            details={
                "device_class": str(locked),
                "kid": kid,
                "kind": kind,
                "retired_kid": previous.kid if previous is not None else None,
            },
        )
        return row


def active_image_key(device_class: DeviceClass) -> ImageEncryptionKey | None:
    return ImageEncryptionKey.objects.filter(
        device_class=device_class, status=PayloadKeyStatus.ACTIVE
    ).first()


def image_build_encrypted(
    *,
    device_class: DeviceClass,
    payload: bytes,
    version: str,
    security_counter: int | None,
    signing_key_path: Path,
) -> bytes:
    """An MCUboot image of ``payload`` signed with the author's imgtool key and encrypted for the
    class's active image key (``imgtool sign --encrypt``, MCUboot's own tool), with the class's
    vendor/class UUID TLVs. Writes nothing: the author uploads the result like any image."""
    key = active_image_key(device_class)
    if key is None:
        raise PayloadEncryptionError(f"{device_class} has no image encryption key")
    try:
        return imgtool.build_image(
            payload,
            version=version,
            security_counter=security_counter,
            key_path=signing_key_path,
            vendor_id=str(device_class.vendor.uuid),
            class_id=str(device_class.uuid),
            encrypt_key_pem=key.public_key_pem.encode(),
        )
    except imgtool.ImgtoolError as exc:
        raise PayloadEncryptionError(str(exc)) from None
