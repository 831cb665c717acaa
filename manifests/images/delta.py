"""Delta (differential) images: a detools patch from one exact image to another, framed with the
digests of both ends. Pure Python, no Django, no clock.

A delta is only safe on the image it was computed from: applied to any other base, detools
writes garbage that a device would then try to boot. So every delta carries a small header
naming the SHA-256 of its precursor (the source image) and of its result, and
:func:`apply_delta` refuses, before touching a byte, a base that is not that precursor
(:class:`WrongPrecursorError`), and refuses a result whose SHA-256 is not the one named
(:class:`DeltaResultMismatchError`). The header itself is not signed: the signed manifest (SUIT
image digest, or the MCUboot image's own hash and signature) stays the authority over the
result, and the device checks it after applying (``manifests.device_rules.apply_delta_update``).

Invariants: ``create_delta(a, b)`` is deterministic for a pinned detools version (the server
computes one delta per pair and stores it by its own digest); ``apply_delta(a, create_delta(a,
b)) == b``; a header with an unknown magic, version, patch type or truncated digests is a
:class:`DeltaFormatError`.

Wire format (all integers big-endian)::

    magic "FWD1" | patch type (1 byte: 0 sequential, 1 in-place) | source SHA-256 (32)
    | result SHA-256 (32) | result size (uint32) | detools patch
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import io
import struct
from dataclasses import dataclass

import detools

__all__ = [
    "ALREADY_INSTALLED",
    "COMPRESSIONS",
    "DELTA_NOT_SMALLER",
    "INSTALLED_IMAGE_UNKNOWN",
    "NO_DELTA_SUPPORT",
    "PRECURSOR_NOT_SIGNED",
    "DeltaError",
    "DeltaFormatError",
    "DeltaHeader",
    "DeltaPatchError",
    "DeltaResultMismatchError",
    "PatchType",
    "WrongPrecursorError",
    "apply_delta",
    "create_delta",
    "delta_refusal",
    "read_header",
]

MAGIC = b"FWD1"
_HEADER = struct.Struct(">4sB32s32sI")
HEADER_SIZE = _HEADER.size
# What a small device can decompress: heatshrink needs a few hundred bytes of RAM (its window is
# 2^8 here), LZMA more but compresses better; both are detools' device-side decoders.
COMPRESSIONS = ("heatshrink", "lzma")
# In-place patches rewrite the one slot the image runs from, segment by segment; 4 KiB is a
# common flash erase-sector size of the MCUs this targets.
IN_PLACE_SEGMENT_SIZE = 4096
MAX_IMAGE_SIZE = 0xFFFFFFFF


class PatchType(enum.IntEnum):
    SEQUENTIAL = 0  # source slot read, result written to the other slot (MCUboot swap)
    IN_PLACE = 1  # one slot rewritten in place (no room for a second image)


class DeltaError(Exception):
    """A delta could not be built, read or applied; ``code`` is stable for the API and devices."""

    code = "delta.error"


class DeltaFormatError(DeltaError):
    """The bytes are not a delta this product writes (magic, version, type or length)."""

    code = "delta.format"


class WrongPrecursorError(DeltaError):
    """The delta was computed from another image than the one it is applied to."""

    code = "delta.wrong_precursor"


class DeltaPatchError(DeltaError):
    """detools could not apply the patch (corrupted or truncated patch data)."""

    code = "delta.patch_failed"


class DeltaResultMismatchError(DeltaError):
    """The image the patch produced does not hash to the result digest named for it."""

    code = "delta.result_mismatch"


@dataclass(frozen=True)
class DeltaHeader:
    patch_type: PatchType
    source_sha256: bytes
    result_sha256: bytes
    result_size: int


def create_delta(
    source: bytes,
    target: bytes,
    *,
    compression: str = "heatshrink",
    patch_type: PatchType = PatchType.SEQUENTIAL,
) -> bytes:
    """The framed delta turning ``source`` into ``target``."""
    if compression not in COMPRESSIONS:
        raise DeltaError(f"compression {compression!r} is not one of {COMPRESSIONS}")
    if len(target) > MAX_IMAGE_SIZE:
        raise DeltaError(f"target of {len(target)} bytes is too large for a delta")
    out = io.BytesIO()
    options: dict[str, object] = {"compression": compression}
    if patch_type is PatchType.IN_PLACE:
        memory = max(len(source), len(target))
        memory += -memory % IN_PLACE_SEGMENT_SIZE
        options.update(
            patch_type="in-place",
            memory_size=memory,
            segment_size=IN_PLACE_SEGMENT_SIZE,
        )
    detools.create_patch(io.BytesIO(source), io.BytesIO(target), out, **options)
    header = _HEADER.pack(
        MAGIC,
        int(patch_type),
        hashlib.sha256(source).digest(),
        hashlib.sha256(target).digest(),
        len(target),
    )
    return header + out.getvalue()


def read_header(delta: bytes) -> DeltaHeader:
    """The header of ``delta``, refusing anything that is not one of ours."""
    if len(delta) < HEADER_SIZE:
        raise DeltaFormatError(f"delta of {len(delta)} bytes is shorter than its header")
    magic, kind, source, result, size = _HEADER.unpack_from(delta)
    if magic != MAGIC:
        raise DeltaFormatError(f"magic {magic!r} is not {MAGIC!r}")
    try:
        patch_type = PatchType(kind)
    except ValueError:
        raise DeltaFormatError(f"unknown patch type {kind}") from None
    return DeltaHeader(
        patch_type=patch_type, source_sha256=source, result_sha256=result, result_size=size
    )


def apply_delta(installed: bytes, delta: bytes) -> bytes:
    """The image ``delta`` produces from ``installed``, checked against both header digests."""
    header = read_header(delta)
    if not hmac.compare_digest(hashlib.sha256(installed).digest(), header.source_sha256):
        raise WrongPrecursorError(
            f"delta is for precursor {header.source_sha256.hex()}, "
            f"the installed image is {hashlib.sha256(installed).hexdigest()}"
        )
    patch = io.BytesIO(delta[HEADER_SIZE:])
    try:
        if header.patch_type is PatchType.IN_PLACE:
            # patch_info: ("in-place", (patch size, compression, options, memory size, ...)).
            memory_size = detools.patch_info(io.BytesIO(delta[HEADER_SIZE:]))[1][3]
            # Our deltas use the larger image rounded up to a segment: anything larger is not
            # one of ours, and would make the device set aside memory the patch asks for.
            limit = max(len(installed), header.result_size) + IN_PLACE_SEGMENT_SIZE
            if not isinstance(memory_size, int) or not 0 < memory_size <= limit:
                raise DeltaFormatError(f"in-place memory size {memory_size} is not {limit} or less")
            memory = io.BytesIO(installed + b"\xff" * max(0, memory_size - len(installed)))
            size = detools.apply_patch_in_place(memory, patch)
            result = memory.getvalue()[:size]
        else:
            out = io.BytesIO()
            detools.apply_patch(io.BytesIO(installed), patch, out)
            result = out.getvalue()
    except DeltaFormatError:
        raise
    except Exception as exc:
        # detools raises its own Error for most damage, but damaged data also surfaces as the
        # decompressor's or the parser's own errors (ValueError, IndexError, OverflowError, ...);
        # all mean the same to a device: this patch cannot be applied.
        raise DeltaPatchError(f"patch could not be applied: {type(exc).__name__}: {exc}") from exc
    if len(result) != header.result_size or not hmac.compare_digest(
        hashlib.sha256(result).digest(), header.result_sha256
    ):
        raise DeltaResultMismatchError(
            f"patched image hashes to {hashlib.sha256(result).hexdigest()}, "
            f"the delta names {header.result_sha256.hex()}"
        )
    return result


# Why a device gets the full image rather than a delta (``delta_refusal``), as stable words.
NO_DELTA_SUPPORT = "class_has_no_delta_support"
INSTALLED_IMAGE_UNKNOWN = "installed_image_unknown"
ALREADY_INSTALLED = "already_installed"
PRECURSOR_NOT_SIGNED = "precursor_not_signed"
DELTA_NOT_SMALLER = "delta_not_smaller"


def delta_refusal(
    *,
    delta_updates: bool,
    signs_precursors: bool,
    installed_sha256: str,
    target_sha256: str,
    signed_precursors: tuple[bytes, ...],
) -> str | None:
    """None when a delta may be offered to a device, else the reason it gets the full image.

    A delta is only ever offered on an installed image the server knows exactly (its digest
    recorded when the device installed it through us), never on a version string. Where the
    device's authority is a SUIT manifest (``signs_precursors``), that manifest must also name
    the installed image as a precursor, or the device would refuse the delta anyway.
    """
    if not delta_updates:
        return NO_DELTA_SUPPORT
    if not installed_sha256:
        return INSTALLED_IMAGE_UNKNOWN
    if installed_sha256 == target_sha256:
        return ALREADY_INSTALLED
    if signs_precursors and bytes.fromhex(installed_sha256) not in signed_precursors:
        return PRECURSOR_NOT_SIGNED
    return None
