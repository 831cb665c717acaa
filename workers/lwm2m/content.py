"""LwM2M paths, resource types and the content formats the gateway reads and writes.

Decoded content is always a flat ``{path: value}`` mapping with full paths (``(5, 0, 3)`` or
``(5, 0, 8, 1)`` for a resource instance), whatever format carried it, so callers never care
which of text/plain, opaque, TLV, SenML JSON or SenML CBOR the device chose.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from workers.lwm2m.errors import ContentFormatError, PathError

MAX_ID = 65535

# CoAP Content-Format numbers (IANA registry; LwM2M 1.0 used 1542/1543 for TLV/JSON).
CT_TEXT = 0
CT_LINK_FORMAT = 40
CT_OPAQUE = 42
CT_CBOR = 60
CT_SENML_JSON = 110
CT_SENML_CBOR = 112
CT_TLV = 11542
CT_LWM2M_JSON = 11543
CT_TLV_OLD = 1542

Path = tuple[int, ...]


@dataclass(frozen=True)
class ObjLink:
    """An LwM2M Objlnk value (object id, instance id)."""

    object_id: int
    instance_id: int

    def __str__(self) -> str:
        return f"{self.object_id}:{self.instance_id}"


Value = int | float | bool | str | bytes | ObjLink


class ResourceType(enum.Enum):
    STRING = "string"
    INTEGER = "integer"
    UNSIGNED = "unsigned"
    FLOAT = "float"
    BOOLEAN = "boolean"
    OPAQUE = "opaque"
    TIME = "time"
    OBJLNK = "objlnk"
    NONE = "none"


# Resource types of the objects the gateway reads: Device (3) and Firmware Update (5).
# Others decode as opaque bytes in TLV (TLV carries no type), and as what SenML says in SenML.
RESOURCE_TYPES: dict[tuple[int, int], ResourceType] = {
    (3, 0): ResourceType.STRING,  # Manufacturer
    (3, 1): ResourceType.STRING,  # Model Number
    (3, 2): ResourceType.STRING,  # Serial Number
    (3, 3): ResourceType.STRING,  # Firmware Version
    (3, 4): ResourceType.NONE,  # Reboot (E)
    (3, 9): ResourceType.INTEGER,  # Battery Level
    (3, 11): ResourceType.INTEGER,  # Error Code
    (3, 13): ResourceType.TIME,  # Current Time
    (3, 14): ResourceType.STRING,  # UTC Offset
    (3, 16): ResourceType.STRING,  # Supported Binding and Modes
    (3, 17): ResourceType.STRING,  # Device Type
    (3, 19): ResourceType.STRING,  # Software Version
    (5, 0): ResourceType.OPAQUE,  # Package
    (5, 1): ResourceType.STRING,  # Package URI
    (5, 2): ResourceType.NONE,  # Update (E)
    (5, 3): ResourceType.INTEGER,  # State
    (5, 5): ResourceType.INTEGER,  # Update Result
    (5, 6): ResourceType.STRING,  # PkgName
    (5, 7): ResourceType.STRING,  # PkgVersion
    (5, 8): ResourceType.INTEGER,  # Firmware Update Protocol Support (multiple)
    (5, 9): ResourceType.INTEGER,  # Firmware Update Delivery Method
    (5, 10): ResourceType.NONE,  # Cancel (E, 1.1)
    # The SUIT report object (docs/lwm2m.md, "SUIT reports"), in the private range.
    (26241, 0): ResourceType.OPAQUE,  # Report Nonce (W)
    (26241, 1): ResourceType.OPAQUE,  # Report (R): COSE_Sign1 SUIT report of the last attempt
}


def resource_type(path: Path) -> ResourceType | None:
    if len(path) < 3:
        return None
    return RESOURCE_TYPES.get((path[0], path[2]))


def parse_path(text: str) -> Path:
    """'/5/0/1' -> (5, 0, 1); 1 to 4 numeric segments, each 0..65535."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise PathError(f"path {str(text)[:40]!r} must start with '/'")
    body = text[1:].rstrip("/") if text != "/" else ""
    if not body:
        return ()
    parts = body.split("/")
    if len(parts) > 4:
        raise PathError(f"path {text[:40]!r} has more than 4 segments")
    out: list[int] = []
    for part in parts:
        if not part.isascii() or not part.isdigit() or len(part) > 5:
            raise PathError(f"path segment {part[:10]!r} is not a number")
        value = int(part)
        if value > MAX_ID:
            raise PathError(f"path segment {value} exceeds {MAX_ID}")
        out.append(value)
    return tuple(out)


def format_path(path: Path) -> str:
    return "/" + "/".join(str(p) for p in path)


def check_path(path: Path) -> Path:
    if not 1 <= len(path) <= 4 or any(not (0 <= p <= MAX_ID) for p in path):
        raise PathError(f"path {path!r} is not 1..4 ids in 0..{MAX_ID}")
    return path


# --- typed value <-> bytes (TLV and opaque) --------------------------------------------------


def int_to_bytes(value: int) -> bytes:
    for size in (1, 2, 4, 8):
        lo, hi = -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1
        if lo <= value <= hi:
            return value.to_bytes(size, "big", signed=True)
    raise ContentFormatError(f"integer {value} does not fit in 64 bits")


def bytes_to_int(data: bytes) -> int:
    if len(data) not in (1, 2, 4, 8):
        raise ContentFormatError(f"integer of {len(data)} bytes (must be 1, 2, 4 or 8)")
    return int.from_bytes(data, "big", signed=True)


def value_to_bytes(value: Value, rtype: ResourceType | None) -> bytes:
    """Binary (TLV) representation of a value; the resource type decides when known."""
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        if rtype is ResourceType.UNSIGNED and value < 0:
            raise ContentFormatError("negative value for an unsigned resource")
        return int_to_bytes(value)
    if isinstance(value, float):
        if math.isfinite(value) and struct.unpack(">f", struct.pack(">f", value))[0] == value:
            return struct.pack(">f", value)
        return struct.pack(">d", value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    if isinstance(value, ObjLink):
        return struct.pack(">HH", value.object_id, value.instance_id)
    raise ContentFormatError(f"unsupported value type {type(value).__name__}")


def bytes_to_value(data: bytes, rtype: ResourceType | None) -> Value:
    """Typed value from TLV bytes; unknown resources stay opaque bytes."""
    if rtype is None or rtype in (ResourceType.OPAQUE, ResourceType.NONE):
        return bytes(data)
    if rtype is ResourceType.STRING:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ContentFormatError("string resource is not UTF-8") from None
    if rtype in (ResourceType.INTEGER, ResourceType.TIME):
        return bytes_to_int(data)
    if rtype is ResourceType.UNSIGNED:
        if len(data) not in (1, 2, 4, 8):
            raise ContentFormatError(f"unsigned integer of {len(data)} bytes")
        return int.from_bytes(data, "big", signed=False)
    if rtype is ResourceType.FLOAT:
        if len(data) == 4:
            return float(struct.unpack(">f", data)[0])
        if len(data) == 8:
            return float(struct.unpack(">d", data)[0])
        raise ContentFormatError(f"float of {len(data)} bytes (must be 4 or 8)")
    if rtype is ResourceType.BOOLEAN:
        if data not in (b"\x00", b"\x01"):
            raise ContentFormatError("boolean must be one byte 0 or 1")
        return data == b"\x01"
    if rtype is ResourceType.OBJLNK:
        if len(data) != 4:
            raise ContentFormatError("objlnk must be 4 bytes")
        a, b = struct.unpack(">HH", data)
        return ObjLink(a, b)
    raise ContentFormatError(f"unsupported resource type {rtype}")  # pragma: no cover


def coerce(value: Value, rtype: ResourceType | None) -> Value:
    """Bring a SenML/text value to the resource's declared type, refusing mismatches."""
    if rtype is None:
        return value
    if rtype in (ResourceType.INTEGER, ResourceType.TIME, ResourceType.UNSIGNED):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ContentFormatError(f"expected a number, got {type(value).__name__}")
        if isinstance(value, float):
            if not value.is_integer():
                raise ContentFormatError(f"expected an integer, got {value}")
            value = int(value)
        if rtype is ResourceType.UNSIGNED and value < 0:
            raise ContentFormatError("negative value for an unsigned resource")
        if not -(1 << 63) <= value < (1 << 64):
            raise ContentFormatError("integer out of 64-bit range")
        return value
    if rtype is ResourceType.STRING:
        if not isinstance(value, str):
            raise ContentFormatError(f"expected a string, got {type(value).__name__}")
        return value
    if rtype is ResourceType.BOOLEAN:
        if not isinstance(value, bool):
            raise ContentFormatError(f"expected a boolean, got {type(value).__name__}")
        return value
    if rtype is ResourceType.FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ContentFormatError(f"expected a number, got {type(value).__name__}")
        return float(value)
    if rtype in (ResourceType.OPAQUE, ResourceType.NONE):
        if not isinstance(value, bytes):
            raise ContentFormatError(f"expected opaque data, got {type(value).__name__}")
        return value
    if rtype is ResourceType.OBJLNK:
        if not isinstance(value, ObjLink):
            raise ContentFormatError(f"expected an object link, got {type(value).__name__}")
        return value
    raise ContentFormatError(f"unsupported resource type {rtype}")  # pragma: no cover


# --- text/plain and opaque (single resource only) --------------------------------------------


def decode_text(payload: bytes, path: Path) -> dict[Path, Value]:
    if len(path) < 3:
        raise ContentFormatError("text/plain carries a single resource, not an object/instance")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ContentFormatError("text/plain payload is not UTF-8") from None
    rtype = resource_type(path)
    value: Value
    if rtype in (ResourceType.INTEGER, ResourceType.TIME, ResourceType.UNSIGNED):
        stripped = text.strip()
        body = stripped[1:] if stripped[:1] in "+-" else stripped
        if not body or not body.isascii() or not body.isdigit() or len(body) > 20:
            raise ContentFormatError(f"{text[:30]!r} is not an integer")
        value = coerce(int(stripped), rtype)
    elif rtype is ResourceType.FLOAT:
        try:
            value = float(text)
        except ValueError:
            raise ContentFormatError(f"{text[:30]!r} is not a float") from None
    elif rtype is ResourceType.BOOLEAN:
        if text not in ("0", "1"):
            raise ContentFormatError("boolean text must be 0 or 1")
        value = text == "1"
    elif rtype is ResourceType.OBJLNK:
        a, sep, b = text.partition(":")
        if not sep or not a.isdigit() or not b.isdigit() or int(a) > MAX_ID or int(b) > MAX_ID:
            raise ContentFormatError("objlnk text must be obj:inst")
        value = ObjLink(int(a), int(b))
    elif rtype in (ResourceType.OPAQUE, ResourceType.NONE):
        raise ContentFormatError("opaque resources are not carried as text/plain")
    else:
        value = text
    return {path: value}


def encode_text(value: Value) -> bytes:
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int | float | ObjLink):
        return str(value).encode()
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ContentFormatError("opaque values are not carried as text/plain")


def decode(content_format: int | None, payload: bytes, path: Path) -> dict[Path, Value]:
    """Decode a read response or write request for ``path`` in any supported format."""
    from workers.lwm2m import senml, tlv

    if content_format in (CT_TLV, CT_TLV_OLD):
        return tlv.decode_tlv(payload, path)
    if content_format == CT_SENML_JSON:
        return senml.decode_senml_json(payload)
    if content_format == CT_SENML_CBOR:
        return senml.decode_senml_cbor(payload)
    if content_format in (CT_TEXT, None):
        return decode_text(payload, path)
    if content_format == CT_OPAQUE:
        if len(path) < 3:
            raise ContentFormatError("opaque carries a single resource")
        return {path: bytes(payload)}
    raise ContentFormatError(f"content format {content_format} is not supported")


def encode(content_format: int, values: Mapping[Path, Value], path: Path) -> bytes:
    """Encode values under ``path`` for a write or a read response."""
    from workers.lwm2m import senml, tlv

    if content_format in (CT_TLV, CT_TLV_OLD):
        return tlv.encode_tlv(values, path)
    if content_format == CT_SENML_JSON:
        return senml.encode_senml_json(values)
    if content_format == CT_SENML_CBOR:
        return senml.encode_senml_cbor(values)
    if content_format in (CT_TEXT, CT_OPAQUE):
        if len(values) != 1 or path not in values:
            raise ContentFormatError("text/plain and opaque carry exactly the requested resource")
        value = values[path]
        if content_format == CT_OPAQUE:
            if not isinstance(value, bytes):
                raise ContentFormatError("opaque needs bytes")
            return value
        return encode_text(value)
    raise ContentFormatError(f"content format {content_format} is not supported")
