"""Read-only MCUboot image inspection, so uploads are checked before a campaign ever ships them.

The server never boots these images; it parses them to (a) refuse files a device's bootloader
would reject anyway, before they reach a fleet, and (b) cross-check what a SUIT manifest claims
(version, security counter, vendor/class) against what the bootloader will actually enforce.

Layout (all little endian), as in MCUboot's ``bootutil/image.h``::

    header (ih_hdr_size bytes, first 32 significant) | body (ih_img_size bytes)
    | protected TLV area (ih_protect_tlv_size bytes, info magic 0x6908, optional)
    | TLV area (info magic 0x6907: hash, key hash, signatures)

The image hash covers header + body + protected TLV area.  Nothing here imports Django: the CLI,
the API and the tests all run the same parser.
"""

from __future__ import annotations

import enum
import hashlib
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "IMAGE_HEADER_SIZE",
    "IMAGE_MAGIC",
    "TLV_INFO_MAGIC",
    "TLV_PROT_INFO_MAGIC",
    "BadMagicError",
    "BadTlvInfoMagicError",
    "BodyOverrunError",
    "DuplicateTlvError",
    "EmptyImageError",
    "HeaderOverrunError",
    "ImageError",
    "ImageFlag",
    "ImageHashMismatchError",
    "ImageInfo",
    "InvalidHeaderSizeError",
    "MissingHashTlvError",
    "TlvAreaOverrunError",
    "TlvAreaSizeError",
    "TlvEntry",
    "TlvLengthError",
    "TlvOverrunError",
    "TlvType",
    "TruncatedHeaderError",
    "TruncatedTlvAreaError",
    "UnprotectedTlvError",
    "ingest_image",
    "looks_like_mcuboot",
    "parse_image",
]

IMAGE_MAGIC = 0x96F3B83D
IMAGE_MAGIC_V1 = 0x96F3B83C
IMAGE_HEADER_SIZE = 32
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
TLV_INFO_SIZE = 4
TLV_HEADER_SIZE = 4

# magic, load_addr, hdr_size, protect_tlv_size, img_size, flags, major, minor, revision, build, pad
_HEADER = struct.Struct("<IIHHIIBBHII")
_TLV_INFO = struct.Struct("<HH")
_TLV = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_MAGIC_BYTES = IMAGE_MAGIC.to_bytes(4, "little")
_MAGIC_BYTES_BE = IMAGE_MAGIC.to_bytes(4, "big")
_MAGIC_V1_BYTES = IMAGE_MAGIC_V1.to_bytes(4, "little")


class TlvType(enum.IntEnum):
    """TLV type numbers as defined by MCUboot ``bootutil/image.h`` (and imgtool's TLV_VALUES)."""

    KEYHASH = 0x01
    PUBKEY = 0x02
    SHA256 = 0x10
    SHA384 = 0x11
    SHA512 = 0x12
    RSA2048_PSS = 0x20
    ECDSA224 = 0x21
    ECDSA_SIG = 0x22
    RSA3072_PSS = 0x23
    ED25519 = 0x24
    SIG_PURE = 0x25
    ENC_RSA2048 = 0x30
    ENC_KW = 0x31
    ENC_EC256 = 0x32
    ENC_X25519 = 0x33
    ENC_X25519_SHA512 = 0x34
    DEPENDENCY = 0x40
    SEC_CNT = 0x50
    BOOT_RECORD = 0x60
    DECOMP_SIZE = 0x70
    DECOMP_SHA = 0x71
    DECOMP_SIGNATURE = 0x72
    COMP_DEC_SIZE = 0x73
    UUID_VID = 0x74
    UUID_CID = 0x75


class ImageFlag(enum.IntFlag):
    """Header ``ih_flags`` bits from MCUboot ``bootutil/image.h``."""

    PIC = 0x0000_0001
    ENCRYPTED_AES128 = 0x0000_0004
    ENCRYPTED_AES256 = 0x0000_0008
    NON_BOOTABLE = 0x0000_0010
    RAM_LOAD = 0x0000_0020
    ROM_FIXED = 0x0000_0100
    COMPRESSED_LZMA1 = 0x0000_0200
    COMPRESSED_LZMA2 = 0x0000_0400
    COMPRESSED_ARM_THUMB_FLT = 0x0000_0800


_ENCRYPTED = ImageFlag.ENCRYPTED_AES128 | ImageFlag.ENCRYPTED_AES256
_ENCRYPTION_TLVS = frozenset(
    {
        TlvType.ENC_RSA2048,
        TlvType.ENC_KW,
        TlvType.ENC_EC256,
        TlvType.ENC_X25519,
        TlvType.ENC_X25519_SHA512,
    }
)

_HASH_TLVS: dict[int, tuple[str, int]] = {
    TlvType.SHA256: ("sha256", 32),
    TlvType.SHA384: ("sha384", 48),
    TlvType.SHA512: ("sha512", 64),
}
_SIGNATURE_TLVS = frozenset(
    {
        TlvType.RSA2048_PSS,
        TlvType.ECDSA224,
        TlvType.ECDSA_SIG,
        TlvType.RSA3072_PSS,
        TlvType.ED25519,
    }
)
# Lengths MCUboot itself insists on; anything else is rejected by the bootloader too.
_FIXED_LENGTHS: dict[int, int] = {
    **{t: n for t, (_, n) in _HASH_TLVS.items()},
    TlvType.SEC_CNT: 4,
    TlvType.UUID_VID: 16,
    TlvType.UUID_CID: 16,
    TlvType.DEPENDENCY: 12,
}
# MCUboot looks these up in the protected area only, so a copy in the unprotected area is
# ignored by the bootloader; reporting it as the image's value would let anyone rewrite it.
_MUST_BE_PROTECTED = frozenset(
    {
        TlvType.SEC_CNT,
        TlvType.UUID_VID,
        TlvType.UUID_CID,
        TlvType.DEPENDENCY,
        TlvType.BOOT_RECORD,
    }
)
# At most one of each; a second one would make "the" value ambiguous.
_SINGLETONS = frozenset({TlvType.SEC_CNT, TlvType.UUID_VID, TlvType.UUID_CID})


def _tlv_name(tlv_type: int) -> str:
    try:
        return TlvType(tlv_type).name
    except ValueError:
        return f"0x{tlv_type:04x}"


# --------------------------------------------------------------------------- errors


class ImageError(Exception):
    """The bytes are not an image this server will accept; ``code`` is stable for API/CLI use."""

    code = "image.invalid"

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        if offset is not None:
            message = f"{message} (at offset 0x{offset:x})"
        super().__init__(message)
        self.offset = offset

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep ``offset`` across pickling (task queues) without appending it to the text twice.
        return (self.__class__, (str(self),), {"offset": self.offset})


class EmptyImageError(ImageError):
    """A zero-length upload is never a firmware image and would hash to a well-known digest."""

    code = "image.empty"


class TruncatedHeaderError(ImageError):
    """The file is shorter than the 32-byte MCUboot header."""

    code = "image.truncated_header"


class BadMagicError(ImageError):
    """The header magic is not little-endian 0x96f3b83d, so MCUboot would not boot it."""

    code = "image.bad_magic"


class InvalidHeaderSizeError(ImageError):
    """``ih_hdr_size`` is smaller than the 32-byte header structure itself."""

    code = "image.invalid_header_size"


class HeaderOverrunError(ImageError):
    """``ih_hdr_size`` claims more bytes than the file holds."""

    code = "image.header_overrun"


class BodyOverrunError(ImageError):
    """Header plus ``ih_img_size`` ends beyond the end of the file."""

    code = "image.body_overrun"


class TruncatedTlvAreaError(ImageError):
    """The file ends where a TLV info header (magic + total size) must start."""

    code = "image.truncated_tlv_area"


class BadTlvInfoMagicError(ImageError):
    """A TLV area does not start with 0x6908 (protected) / 0x6907 (unprotected) as required."""

    code = "image.bad_tlv_info_magic"


class TlvAreaSizeError(ImageError):
    """A TLV area's declared size disagrees with the header or cannot hold its own info header."""

    code = "image.tlv_area_size"


class TlvAreaOverrunError(ImageError):
    """A TLV area's declared total size runs past the end of the file."""

    code = "image.tlv_area_overrun"


class TlvOverrunError(ImageError):
    """A single TLV's header or value runs past the end of its TLV area."""

    code = "image.tlv_overrun"


class TlvLengthError(ImageError):
    """A TLV whose size MCUboot fixes (hash, security counter, UUID, dependency) has another."""

    code = "image.tlv_length"


class DuplicateTlvError(ImageError):
    """A TLV that must appear once (hash, security counter, vendor/class UUID) appears twice."""

    code = "image.duplicate_tlv"


class UnprotectedTlvError(ImageError):
    """A TLV the bootloader only honours when protected sits in the unprotected (unhashed) area."""

    code = "image.unprotected_tlv"


class MissingHashTlvError(ImageError):
    """No SHA256/384/512 TLV: MCUboot refuses to boot an image it cannot hash-check."""

    code = "image.missing_hash_tlv"


class ImageHashMismatchError(ImageError):
    """The image hash TLV does not match header+body+protected TLVs: corrupt or tampered."""

    code = "image.hash_mismatch"


# --------------------------------------------------------------------------- result types


@dataclass(frozen=True, slots=True)
class TlvEntry:
    """One TLV as found in the file; ``offset`` points at its 4-byte TLV header."""

    type: int
    length: int
    protected: bool
    offset: int

    @property
    def name(self) -> str:
        return _tlv_name(self.type)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "length": self.length,
            "protected": self.protected,
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the server knows about an uploaded image; MCUboot-only fields are None for raw.

    ``sha256`` is the hex digest of the *whole file*, because that is what a SUIT image-digest
    covers and what the content-addressed store is keyed by.  ``computed_hash``/``hash_tlv`` are
    MCUboot's own image hash (header+body+protected TLVs) and differ from it.
    """

    kind: Literal["mcuboot", "raw"]
    size: int
    sha256: str
    load_addr: int | None = None
    hdr_size: int | None = None
    protect_tlv_size: int | None = None
    img_size: int | None = None
    flags: int | None = None
    version: str | None = None
    version_tuple: tuple[int, int, int, int] | None = None
    security_counter: int | None = None
    hash_algorithm: str | None = None
    hash_tlv: bytes | None = None
    computed_hash: bytes | None = None
    # None for raw images: there is no embedded hash to agree or disagree with.
    hash_ok: bool | None = None
    vendor_uuid: uuid.UUID | None = None
    class_uuid: uuid.UUID | None = None
    key_hashes: tuple[bytes, ...] = ()
    signature_types: tuple[int, ...] = ()
    tlvs: tuple[TlvEntry, ...] = field(default=())
    # Bytes after the TLV area, e.g. the boot trailer imgtool --pad appends; not hashed by
    # MCUboot but covered by ``sha256``, so they cannot be swapped unnoticed.
    trailing_size: int = 0

    @property
    def key_hash(self) -> bytes | None:
        """The first KEYHASH TLV; images signed by several keys carry one per signature."""
        return self.key_hashes[0] if self.key_hashes else None

    @property
    def is_signed(self) -> bool:
        return bool(self.signature_types)

    @property
    def is_encrypted(self) -> bool:
        return bool(self.flags is not None and self.flags & _ENCRYPTED)

    @property
    def encryption_tlvs(self) -> tuple[str, ...]:
        """Names of the unprotected encryption TLVs (ENC_KW, ENC_EC256, ...): which kind of key
        the image's AES key is wrapped for (``manifests.images.encryption``)."""
        return tuple(t.name for t in self.tlvs if t.type in _ENCRYPTION_TLVS and not t.protected)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-safe view (hex for bytes, str for UUIDs) stored with the upload and shown by CLI."""
        data: dict[str, Any] = {"kind": self.kind, "size": self.size, "sha256": self.sha256}
        if self.kind != "mcuboot":
            return data
        flags = self.flags or 0
        data.update(
            {
                "load_addr": self.load_addr,
                "hdr_size": self.hdr_size,
                "protect_tlv_size": self.protect_tlv_size,
                "img_size": self.img_size,
                "flags": flags,
                "flag_names": [f.name for f in ImageFlag if f & flags],
                "version": self.version,
                "version_tuple": list(self.version_tuple) if self.version_tuple else None,
                "security_counter": self.security_counter,
                "hash_algorithm": self.hash_algorithm,
                "hash_tlv": self.hash_tlv.hex() if self.hash_tlv is not None else None,
                "computed_hash": (
                    self.computed_hash.hex() if self.computed_hash is not None else None
                ),
                "hash_ok": self.hash_ok,
                "vendor_uuid": str(self.vendor_uuid) if self.vendor_uuid else None,
                "class_uuid": str(self.class_uuid) if self.class_uuid else None,
                "key_hash": self.key_hash.hex() if self.key_hash is not None else None,
                "key_hashes": [k.hex() for k in self.key_hashes],
                "signature_types": [_tlv_name(t) for t in self.signature_types],
                "tlvs": [t.to_json_dict() for t in self.tlvs],
                "trailing_size": self.trailing_size,
            }
        )
        if self.is_encrypted:
            data["encryption"] = {
                "tlvs": list(self.encryption_tlvs),
                "aes_bits": 256 if flags & ImageFlag.ENCRYPTED_AES256 else 128,
            }
        return data


# --------------------------------------------------------------------------- parsing


def looks_like_mcuboot(data: bytes | bytearray | memoryview) -> bool:
    """True if the file *claims* to be MCUboot (any magic variant), so it must parse strictly.

    Legacy-v1 and big-endian magics count: silently filing such a file as a raw binary would
    ship something the target bootloader rejects.
    """
    head = bytes(data[:4])
    return head in (_MAGIC_BYTES, _MAGIC_BYTES_BE, _MAGIC_V1_BYTES)


def _walk_area(data: bytes, start: int, end: int, *, protected: bool, out: list[TlvEntry]) -> None:
    pos = start
    while pos < end:
        if end - pos < TLV_HEADER_SIZE:
            raise TlvOverrunError(
                f"TLV header needs {TLV_HEADER_SIZE} bytes but only {end - pos} remain "
                f"in the {'protected ' if protected else ''}TLV area",
                offset=pos,
            )
        tlv_type, length = _TLV.unpack_from(data, pos)
        value_end = pos + TLV_HEADER_SIZE + length
        if value_end > end:
            raise TlvOverrunError(
                f"TLV {_tlv_name(tlv_type)} of length {length} ends at 0x{value_end:x}, past "
                f"the end of its TLV area at 0x{end:x}",
                offset=pos,
            )
        out.append(TlvEntry(type=tlv_type, length=length, protected=protected, offset=pos))
        pos = value_end


def _read_info(data: bytes, offset: int, *, expected_magic: int, what: str) -> int:
    """Return the area's total size after checking magic and bounds."""
    if len(data) - offset < TLV_INFO_SIZE:
        raise TruncatedTlvAreaError(
            f"file ends before the {what} TLV info header ({len(data) - offset} of "
            f"{TLV_INFO_SIZE} bytes present)",
            offset=offset,
        )
    magic, total = _TLV_INFO.unpack_from(data, offset)
    if magic != expected_magic:
        raise BadTlvInfoMagicError(
            f"{what} TLV info magic is 0x{magic:04x}, expected 0x{expected_magic:04x}",
            offset=offset,
        )
    if total < TLV_INFO_SIZE:
        raise TlvAreaSizeError(
            f"{what} TLV area size {total} is smaller than its own {TLV_INFO_SIZE}-byte header",
            offset=offset,
        )
    if offset + total > len(data):
        raise TlvAreaOverrunError(
            f"{what} TLV area of {total} bytes ends at 0x{offset + total:x}, past the end of "
            f"the {len(data)}-byte file",
            offset=offset,
        )
    return int(total)


def parse_image(data: bytes | bytearray | memoryview) -> ImageInfo:
    """Parse an image that must be MCUboot; a hash mismatch is reported, not raised.

    Reporting (``hash_ok=False``) rather than raising lets ``image info`` show what is wrong
    with a broken build; ``ingest_image`` is the gate that refuses it.
    """
    data = bytes(data)
    size = len(data)
    if size < IMAGE_HEADER_SIZE:
        raise TruncatedHeaderError(
            f"file has {size} bytes, an MCUboot header needs {IMAGE_HEADER_SIZE}", offset=0
        )
    (
        magic,
        load_addr,
        hdr_size,
        protect_tlv_size,
        img_size,
        flags,
        major,
        minor,
        revision,
        build,
        _pad,
    ) = _HEADER.unpack_from(data, 0)
    if magic != IMAGE_MAGIC:
        if data[:4] == _MAGIC_BYTES_BE:
            detail = "big-endian MCUboot images are not supported"
        elif magic == IMAGE_MAGIC_V1:
            detail = "legacy v1 MCUboot images are not supported"
        else:
            detail = f"magic is 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x}"
        raise BadMagicError(detail, offset=0)
    if hdr_size < IMAGE_HEADER_SIZE:
        raise InvalidHeaderSizeError(
            f"ih_hdr_size {hdr_size} is smaller than the {IMAGE_HEADER_SIZE}-byte header",
            offset=8,
        )
    if hdr_size > size:
        raise HeaderOverrunError(f"ih_hdr_size {hdr_size} exceeds the {size}-byte file", offset=8)
    body_end = hdr_size + img_size
    if body_end > size:
        raise BodyOverrunError(
            f"ih_img_size {img_size} puts the end of the body at 0x{body_end:x}, past the end "
            f"of the {size}-byte file",
            offset=12,
        )

    entries: list[TlvEntry] = []
    offset = body_end
    if protect_tlv_size:
        if protect_tlv_size < TLV_INFO_SIZE:
            raise TlvAreaSizeError(
                f"ih_protect_tlv_size {protect_tlv_size} cannot hold a TLV info header",
                offset=10,
            )
        total = _read_info(data, offset, expected_magic=TLV_PROT_INFO_MAGIC, what="protected")
        if total != protect_tlv_size:
            raise TlvAreaSizeError(
                f"protected TLV area declares {total} bytes but ih_protect_tlv_size is "
                f"{protect_tlv_size}",
                offset=offset,
            )
        _walk_area(data, offset + TLV_INFO_SIZE, offset + total, protected=True, out=entries)
        offset += total
    elif size - offset >= 2 and data[offset : offset + 2] == TLV_PROT_INFO_MAGIC.to_bytes(
        2, "little"
    ):
        raise TlvAreaSizeError(
            "a protected TLV area is present but ih_protect_tlv_size is 0", offset=offset
        )
    total = _read_info(data, offset, expected_magic=TLV_INFO_MAGIC, what="unprotected")
    _walk_area(data, offset + TLV_INFO_SIZE, offset + total, protected=False, out=entries)
    tlv_end = offset + total

    security_counter: int | None = None
    vendor_uuid: uuid.UUID | None = None
    class_uuid: uuid.UUID | None = None
    hash_entry: TlvEntry | None = None
    key_hashes: list[bytes] = []
    signature_types: list[int] = []
    seen: set[int] = set()
    for entry in entries:
        value = data[entry.offset + TLV_HEADER_SIZE : entry.offset + TLV_HEADER_SIZE + entry.length]
        want = _FIXED_LENGTHS.get(entry.type)
        if want is not None and entry.length != want:
            raise TlvLengthError(
                f"{entry.name} TLV has length {entry.length}, expected {want}",
                offset=entry.offset,
            )
        if entry.type in _MUST_BE_PROTECTED and not entry.protected:
            raise UnprotectedTlvError(
                f"{entry.name} TLV is in the unprotected TLV area; MCUboot only honours it "
                "when protected",
                offset=entry.offset,
            )
        if entry.type in _SINGLETONS:
            if entry.type in seen:
                raise DuplicateTlvError(f"second {entry.name} TLV", offset=entry.offset)
            seen.add(entry.type)
        if entry.type in _HASH_TLVS:
            if hash_entry is not None:
                raise DuplicateTlvError(
                    f"second image hash TLV ({entry.name}, first was {hash_entry.name})",
                    offset=entry.offset,
                )
            hash_entry = entry
        elif entry.type == TlvType.SEC_CNT:
            security_counter = _U32.unpack(value)[0]
        elif entry.type == TlvType.UUID_VID:
            vendor_uuid = uuid.UUID(bytes=value)
        elif entry.type == TlvType.UUID_CID:
            class_uuid = uuid.UUID(bytes=value)
        elif entry.type == TlvType.KEYHASH:
            key_hashes.append(value)
        elif entry.type in _SIGNATURE_TLVS and entry.type not in signature_types:
            signature_types.append(entry.type)

    if hash_entry is None:
        raise MissingHashTlvError("no SHA256/SHA384/SHA512 TLV in the TLV area", offset=offset)
    algorithm, _ = _HASH_TLVS[hash_entry.type]
    start = hash_entry.offset + TLV_HEADER_SIZE
    hash_tlv = data[start : start + hash_entry.length]
    computed = hashlib.new(algorithm, data[: body_end + protect_tlv_size]).digest()

    return ImageInfo(
        kind="mcuboot",
        size=size,
        sha256=hashlib.sha256(data).hexdigest(),
        load_addr=load_addr,
        hdr_size=hdr_size,
        protect_tlv_size=protect_tlv_size,
        img_size=img_size,
        flags=flags,
        version=f"{major}.{minor}.{revision}+{build}",
        version_tuple=(major, minor, revision, build),
        security_counter=security_counter,
        hash_algorithm=algorithm,
        hash_tlv=hash_tlv,
        computed_hash=computed,
        hash_ok=computed == hash_tlv,
        vendor_uuid=vendor_uuid,
        class_uuid=class_uuid,
        key_hashes=tuple(key_hashes),
        signature_types=tuple(signature_types),
        tlvs=tuple(entries),
        trailing_size=size - tlv_end,
    )


def ingest_image(
    data: bytes | bytearray | memoryview, *, require_valid_hash: bool = True
) -> ImageInfo:
    """Classify an upload: anything claiming MCUboot magic must parse strictly, else it is raw.

    With ``require_valid_hash`` (the upload path) a corrupt MCUboot image is refused here, since
    every device would reject it after downloading it.  An encrypted image (flag set and exactly
    one encryption TLV) is accepted with its encryption recorded: its hash covers the plaintext,
    which the server cannot check, so the device checks it after decrypting; one flagged
    encrypted without its TLV is refused.
    """
    data = bytes(data)
    if not data:
        raise EmptyImageError("image is empty", offset=0)
    if not looks_like_mcuboot(data):
        return ImageInfo(kind="raw", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    info = parse_image(data)
    if require_valid_hash and not info.hash_ok:
        if info.is_encrypted and len(info.encryption_tlvs) == 1:
            return info
        if info.is_encrypted:
            raise ImageHashMismatchError(
                "image is encrypted; its hash TLV covers the plaintext and cannot be verified here"
            )
        raise ImageHashMismatchError(
            f"{info.hash_algorithm} TLV {(info.hash_tlv or b'').hex()} does not match the "
            f"computed {(info.computed_hash or b'').hex()} over header, body and protected TLVs"
        )
    return info
