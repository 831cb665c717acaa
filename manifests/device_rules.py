"""What a device checks before installing an update, as pure functions (no Django, no clock).

These are the device half of DESIGN.md section 3 and of the threat table in section 4, the SUIT
rules a device applies to a release, so they live on the release side: the simulated devices run
them exactly as a SUIT processor on MCUboot would, and the campaign checks reuse them to predict
a device's answer before dispatch. Each refusal is a specific
:class:`DeviceCheckError` whose ``fw_result`` is the LwM2M Object 5 Update Result the device
reports for it (5 integrity, 6 unsupported package, 2 not enough flash).

Invariants enforced, in order: the envelope carries a signature that verifies against a trust
anchor (checked by the caller with the SUIT codec, reported here through
:func:`require_signature`); vendor and class IDs equal the device's; the manifest installs only
into the device's fixed component with its payload format; the sequence number is strictly above
the installed one; the security counter is not below the device's; the manifest has not expired
by the device's own clock; the payload fits the slot; an encrypted payload is taken only by a device
holding a decryption key, and decrypts (its refusals: no recipient, key unwrap, GCM tag); the
downloaded (decrypted) payload has the declared size and SHA-256 digest.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from manifests.images import delta as deltas

# The last part of the delta source component's id (the running slot of the one component), as
# the SUIT codec writes it (``manifests.suit.constants.SOURCE_SLOT``; no codec import here).
SOURCE_SLOT = b"running"


class FwResult(enum.IntEnum):
    """The LwM2M Object 5 Update Result (/5/0/5) values a refusal is reported with."""

    NOT_ENOUGH_FLASH = 2
    INTEGRITY_CHECK_FAILURE = 5
    UNSUPPORTED_PACKAGE_TYPE = 6


class DeviceCheckError(Exception):
    """The device refuses the update; ``fw_result`` is what it reports in /5/0/5."""

    code = "device.check_failed"
    fw_result = FwResult.UNSUPPORTED_PACKAGE_TYPE


class SignatureCheckError(DeviceCheckError):
    """No signature on the envelope verifies against the device's trust anchors."""

    code = "device.untrusted_manifest"
    fw_result = FwResult.INTEGRITY_CHECK_FAILURE


class VendorMismatchError(DeviceCheckError):
    """The manifest's vendor ID is not the device's."""

    code = "device.vendor_mismatch"


class ClassMismatchError(DeviceCheckError):
    """The manifest's class ID is not the device's."""

    code = "device.class_mismatch"


class ComponentMismatchError(DeviceCheckError):
    """The manifest targets another component (slot) or payload format than the device uses."""

    code = "device.component_mismatch"


class RollbackError(DeviceCheckError):
    """The sequence number is not above the installed one (rollback or replay)."""

    code = "device.rollback"


class SecurityCounterError(DeviceCheckError):
    """The security counter is below the device's (MCUboot would refuse to boot it)."""

    code = "device.security_counter"


class ExpiredManifestError(DeviceCheckError):
    """The manifest's use-before time has passed by the device's clock."""

    code = "device.manifest_expired"


class UnsupportedManifestError(DeviceCheckError):
    """Valid SUIT the device cannot enforce (an encrypted payload, a MAC it has no key for)."""

    code = "device.unsupported_manifest"


class DecryptionNoRecipientError(DeviceCheckError):
    """The encrypted payload's content key is wrapped for no key this device holds."""

    code = "device.decryption_no_recipient"
    fw_result = FwResult.INTEGRITY_CHECK_FAILURE


class DecryptionKeyUnwrapError(DeviceCheckError):
    """The content key does not unwrap under the device's key (wrong key or altered wrap)."""

    code = "device.decryption_key_unwrap"
    fw_result = FwResult.INTEGRITY_CHECK_FAILURE


class DecryptionTagError(DeviceCheckError):
    """The AES-GCM tag of the encrypted payload does not verify (ciphertext or tag altered)."""

    code = "device.decryption_tag"
    fw_result = FwResult.INTEGRITY_CHECK_FAILURE


class MissingFieldError(DeviceCheckError):
    """The manifest lacks a field the device needs (digest, size, sequence, counter)."""

    code = "device.manifest_incomplete"


class NoSpaceError(DeviceCheckError):
    """The payload does not fit the device's update slot."""

    code = "device.no_space"
    fw_result = FwResult.NOT_ENOUGH_FLASH


class ImageSizeMismatchError(DeviceCheckError):
    """The downloaded payload's size differs from the manifest's image size."""

    code = "device.image_size_mismatch"
    fw_result = FwResult.INTEGRITY_CHECK_FAILURE


class ImageDigestMismatchError(DeviceCheckError):
    """The downloaded payload's SHA-256 differs from the manifest's image digest."""

    code = "device.image_digest_mismatch"
    fw_result = FwResult.INTEGRITY_CHECK_FAILURE


class WrongPrecursorError(DeviceCheckError):
    """A delta whose base (precursor) is not the image the device has installed: applied, it
    would write garbage into the slot (RFC 9124's precursor image digest condition)."""

    code = "device.wrong_precursor"


class DeltaFailedError(DeviceCheckError):
    """A delta that is not one of ours or whose patch data could not be applied."""

    code = "device.delta_failed"
    fw_result = FwResult.INTEGRITY_CHECK_FAILURE


@dataclass(frozen=True)
class DeviceIdentity:
    vendor_id: uuid.UUID
    class_id: uuid.UUID
    component_id: tuple[bytes, ...] = (b"00",)
    payload_format: str = "mcuboot"
    slot_size: int = 0x100000
    # "extended": the manifest must carry the custom security counter and payload format;
    # "standard": they may be absent (the sequence number is then the anti-rollback floor and
    # the class's payload format applies); present, they are checked all the same.
    manifest_profile: str = "extended"
    # The device holds a payload decryption key (a class key-encryption key or its own P-256
    # key): it takes encrypted payloads, decrypts them after verifying the manifest, then
    # checks the plaintext's size and digest (check_payload).
    can_decrypt: bool = False
    # The kids of the keys it decrypts with: an encrypted manifest none of whose recipients
    # names one of them is refused before the download (DecryptionNoRecipientError). None: not
    # known here (the server checks the recipients per device itself).
    decryption_kids: frozenset[bytes] | None = frozenset()


@dataclass(frozen=True)
class InstalledFirmware:
    version: str
    sequence_number: int
    security_counter: int


@dataclass(frozen=True)
class ManifestFacts:
    """The manifest fields a device acts on (decoded from the signed envelope)."""

    vendor_id: uuid.UUID | None
    class_id: uuid.UUID | None
    sequence_number: int | None
    security_counter: int | None
    firmware_version: str | None
    use_before: dt.datetime | None
    image_digest: bytes | None
    image_size: int | None
    components: tuple[tuple[bytes, ...], ...]
    payload_format: str | None
    uri: str | None
    encrypted: bool = False  # the payload is encrypted (firmware-encryption parameter 19)
    recipient_kids: tuple[bytes, ...] = ()  # the kid of every recipient of its content key
    # SHA-256 digests of the images a delta to this manifest's image may be applied to (the
    # precursor image digest condition); empty: the manifest authorises full images only.
    precursor_digests: tuple[bytes, ...] = ()


def facts_from_manifest(manifest: Any) -> ManifestFacts:
    """Adapter from the SUIT codec's decoded ``Manifest`` (duck-typed: no codec import here)."""
    return ManifestFacts(
        vendor_id=manifest.vendor_id,
        class_id=manifest.class_id,
        sequence_number=manifest.sequence_number,
        security_counter=manifest.security_counter,
        firmware_version=manifest.firmware_version,
        use_before=manifest.use_before,
        image_digest=manifest.image_digest,
        image_size=manifest.image_size,
        components=tuple(tuple(c) for c in manifest.components),
        payload_format=manifest.payload_format,
        uri=manifest.uri,
        encrypted=bool(getattr(manifest, "encryption_info", ())),
        recipient_kids=recipient_kids(getattr(manifest, "encryption_info", ())),
        precursor_digests=tuple(getattr(manifest, "precursor_digests", ()) or ()),
    )


def recipient_kids(encryption_info: Sequence[Any]) -> tuple[bytes, ...]:
    """The kids of the recipients of decoded COSE_Encrypt structures (``[protected,
    unprotected, ciphertext, recipients]``; a recipient's kid is unprotected label 4)."""
    kids = []
    for info in encryption_info:
        body = getattr(info, "value", None)
        if not isinstance(body, list | tuple) or len(body) != 4:
            continue
        for recipient in body[3] if isinstance(body[3], list | tuple) else ():
            if isinstance(recipient, list | tuple) and len(recipient) == 3:
                header = recipient[1]
                kid = header.get(4) if hasattr(header, "get") else None
                if type(kid) is bytes:
                    kids.append(kid)
    return tuple(kids)


def require_signature(valid_kids: Sequence[bytes], *, threshold: int = 1) -> None:
    """Refuse unless at least ``threshold`` distinct trust anchors verified the envelope."""
    if len(set(valid_kids)) < threshold:
        raise SignatureCheckError(
            f"{len(set(valid_kids))} of the required {threshold} trust-anchor signatures verify"
        )


def check_manifest(
    facts: ManifestFacts,
    *,
    device: DeviceIdentity,
    installed: InstalledFirmware,
    now: dt.datetime,
) -> None:
    """Every pre-download check; raises the first failing one."""
    if facts.vendor_id != device.vendor_id:
        raise VendorMismatchError(f"vendor {facts.vendor_id} is not {device.vendor_id}")
    if facts.class_id != device.class_id:
        raise ClassMismatchError(f"class {facts.class_id} is not {device.class_id}")
    # Its one component, plus the delta source (its running slot, only ever read: a delta is
    # then refused unless the manifest conditioned that source, ``apply_delta_update``).
    one = [tuple(device.component_id)]
    if [tuple(c) for c in facts.components] not in (one, [*one, (*one[0], SOURCE_SLOT)]):
        raise ComponentMismatchError(
            f"components {[[p.hex() for p in c] for c in facts.components]} are not "
            f"[{[p.hex() for p in device.component_id]}]"
        )
    if facts.encrypted and not device.can_decrypt:
        raise UnsupportedManifestError("the payload is encrypted; this device cannot decrypt it")
    if (
        facts.encrypted
        and device.decryption_kids is not None
        and not device.decryption_kids.intersection(facts.recipient_kids)
    ):
        raise DecryptionNoRecipientError(
            "the payload's content key is wrapped for none of this device's keys"
        )
    standard = device.manifest_profile == "standard"
    if facts.payload_format != device.payload_format and not (
        standard and facts.payload_format is None
    ):
        raise ComponentMismatchError(
            f"payload format {facts.payload_format!r} is not {device.payload_format!r}"
        )
    if facts.sequence_number is None:
        raise MissingFieldError("manifest has no sequence number")
    if facts.security_counter is None and not standard:
        raise MissingFieldError("manifest has no security counter")
    if facts.image_digest is None or facts.image_size is None:
        raise MissingFieldError("manifest has no image digest or size")
    if facts.sequence_number <= installed.sequence_number:
        raise RollbackError(
            f"sequence {facts.sequence_number} is not above installed {installed.sequence_number}"
        )
    if facts.security_counter is not None and facts.security_counter < installed.security_counter:
        raise SecurityCounterError(
            f"security counter {facts.security_counter} is below the device's "
            f"{installed.security_counter}"
        )
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if facts.use_before is not None and now >= facts.use_before:
        raise ExpiredManifestError(f"manifest expired at {facts.use_before.isoformat()}")
    if facts.image_size > device.slot_size:
        raise NoSpaceError(f"image of {facts.image_size} bytes exceeds slot {device.slot_size}")


def check_payload(payload: bytes, facts: ManifestFacts) -> None:
    """Size then SHA-256 of the downloaded payload against the signed manifest."""
    if facts.image_digest is None or facts.image_size is None:
        raise MissingFieldError("manifest has no image digest or size")
    if len(payload) != facts.image_size:
        raise ImageSizeMismatchError(
            f"payload is {len(payload)} bytes, manifest says {facts.image_size}"
        )
    if not hmac.compare_digest(hashlib.sha256(payload).digest(), facts.image_digest):
        raise ImageDigestMismatchError("payload SHA-256 differs from the manifest's image digest")


def apply_delta_update(
    installed_image: bytes,
    delta: bytes,
    *,
    result_digest: bytes,
    signed_precursors: Sequence[bytes] | None,
) -> bytes:
    """The full image a downloaded delta makes of the installed one, checked before any swap.

    ``result_digest`` is the SHA-256 the signed authority names for the new image (the SUIT
    manifest's image digest; for an MCUboot image the caller then also checks the image's own
    hash and signature). ``signed_precursors`` are the precursors the signed SUIT manifest
    names (``precursor_digests``): the installed image must be one of them; None for an
    MCUboot image, whose signature over the result stands in. The delta's own header is never
    trusted on its own: it only lets a wrong base be refused before anything is written.
    Order: format, precursor (before a byte is patched), the result digest the delta claims,
    then the bytes actually produced.
    """
    try:
        header = deltas.read_header(delta)
    except deltas.DeltaFormatError as exc:
        raise DeltaFailedError(str(exc)) from exc
    installed = hashlib.sha256(installed_image).digest()
    if signed_precursors is not None and not any(
        hmac.compare_digest(installed, p) for p in signed_precursors
    ):
        raise WrongPrecursorError(
            f"the signed manifest names no precursor {installed.hex()[:16]} for a delta"
        )
    if not hmac.compare_digest(header.source_sha256, installed):
        raise WrongPrecursorError(
            f"delta is for precursor {header.source_sha256.hex()[:16]}, "
            f"installed is {installed.hex()[:16]}"
        )
    if not hmac.compare_digest(header.result_sha256, result_digest):
        raise ImageDigestMismatchError(
            f"delta produces {header.result_sha256.hex()[:16]}, "
            f"the signed digest is {result_digest.hex()[:16]}"
        )
    try:
        result = deltas.apply_delta(installed_image, delta)
    except deltas.WrongPrecursorError as exc:  # pragma: no cover - checked just above
        raise WrongPrecursorError(str(exc)) from exc
    except deltas.DeltaResultMismatchError as exc:
        raise ImageDigestMismatchError(str(exc)) from exc
    except deltas.DeltaError as exc:
        raise DeltaFailedError(str(exc)) from exc
    if not hmac.compare_digest(hashlib.sha256(result).digest(), result_digest):
        raise ImageDigestMismatchError("patched image differs from the signed digest")
    return result
