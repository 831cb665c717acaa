"""Delta images on the server: computed once per (source image, target image, compression),
stored content-addressed in the image store beside the full images, and offered to a device only
where its class declares delta support and its installed image is known exactly
(``manifests.images.delta.delta_refusal``).

Computing a delta is a cache fill, not a decision: the same pair always gives the same bytes
(detools is pinned), so two processes racing on one pair store identical blobs and the unique
constraint keeps one row. The computation runs outside the transaction; the row and its audit
event are written in one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from audit.services import audit_record
from manifests.images import delta as deltas
from manifests.models import (
    DeliveryProfile,
    DeltaPatchType,
    DeviceClass,
    FirmwareDelta,
    FirmwareImage,
    Manifest,
)
from manifests.services.catalog import image_storage

__all__ = ["DeltaOffer", "delta_ensure", "delta_offer"]

_PATCH_TYPES = {
    DeltaPatchType.SEQUENTIAL: deltas.PatchType.SEQUENTIAL,
    DeltaPatchType.IN_PLACE: deltas.PatchType.IN_PLACE,
}


@dataclass(frozen=True)
class DeltaOffer:
    """What one device is offered: a delta (with the bytes it saves) or the full image and why."""

    delta: FirmwareDelta | None
    full_size: int
    reason: str = ""

    @property
    def wire_size(self) -> int:
        return self.delta.size if self.delta is not None else self.full_size

    @property
    def saved(self) -> int:
        return self.full_size - self.wire_size


def delta_ensure(
    *,
    source: FirmwareImage,
    target: FirmwareImage,
    compression: str,
    patch_type: str = DeltaPatchType.SEQUENTIAL,
) -> FirmwareDelta:
    """The stored delta from ``source`` to ``target``, computing and storing it the first time."""
    form = {"compression": compression, "patch_type": patch_type}
    found = FirmwareDelta.objects.filter(source=source, target=target, **form).first()
    if found is not None:
        return found
    storage = image_storage()
    blob = deltas.create_delta(
        storage.read(source.sha256),
        storage.read(target.sha256),
        compression=compression,
        patch_type=_PATCH_TYPES[patch_type],
    )
    digest = storage.put(blob)
    if digest != hashlib.sha256(blob).hexdigest():  # pragma: no cover - the store's contract
        raise deltas.DeltaError("image store returned another digest than the delta's")
    try:
        with transaction.atomic():
            row = FirmwareDelta.objects.create(
                source=source, target=target, sha256=digest, size=len(blob), **form
            )
            audit_record(
                actor=None,
                action="delta.create",
                object_type="firmware_delta",
                object_id=row.pk,
                details={
                    "source": source.sha256,
                    "target": target.sha256,
                    "compression": compression,
                    "patch_type": patch_type,
                    "sha256": digest,
                    "size": len(blob),
                },
            )
            return row
    except IntegrityError:
        # Another process stored the same pair first: its row names the same bytes.
        return FirmwareDelta.objects.get(source=source, target=target, **form)


def delta_offer(
    *,
    device_class: DeviceClass,
    manifest: Manifest,
    installed_image_digest: str,
    signed_precursors: tuple[bytes, ...],
) -> DeltaOffer:
    """A delta for a device of ``device_class`` running ``installed_image_digest``, computed on
    first use, or the full image with the reason. A delta no smaller than the image is not
    worth its risk: the full image is offered instead."""
    target = manifest.image
    reason = deltas.delta_refusal(
        delta_updates=device_class.delta_updates,
        signs_precursors=device_class.delivery != DeliveryProfile.IMAGE,
        installed_sha256=installed_image_digest,
        target_sha256=target.sha256,
        signed_precursors=signed_precursors,
    )
    if reason is not None:
        return DeltaOffer(None, target.size, reason)
    source = FirmwareImage.objects.filter(sha256=installed_image_digest).first()
    if source is None:
        return DeltaOffer(None, target.size, deltas.INSTALLED_IMAGE_UNKNOWN)
    delta = delta_ensure(
        source=source,
        target=target,
        compression=device_class.delta_compression,
        patch_type=device_class.delta_patch_type,
    )
    if delta.size >= target.size:
        return DeltaOffer(None, target.size, deltas.DELTA_NOT_SMALLER)
    return DeltaOffer(delta, target.size)
