"""OMA LwM2M TLV (content format 11542).

Each element: a type byte (identifier kind in bits 7-6, 16-bit identifier flag in bit 5, length
kind in bits 4-3, short length in bits 2-0), the identifier, an optional 8/16/24-bit length, then
the value or nested elements. TLV carries no value types, so values are typed from the resource
table in :mod:`workers.lwm2m.content` (unknown resources decode as bytes).

Decoding is bounded (nesting depth 3, lengths checked against the buffer) and raises only
:class:`TLVError`/:class:`ContentFormatError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from workers.lwm2m.content import (
    Path,
    Value,
    bytes_to_value,
    resource_type,
    value_to_bytes,
)
from workers.lwm2m.errors import TLVError

OBJECT_INSTANCE = 0
RESOURCE_INSTANCE = 1
MULTIPLE_RESOURCE = 2
RESOURCE_VALUE = 3

MAX_LENGTH = (1 << 24) - 1


@dataclass
class Element:
    kind: int
    identifier: int
    value: bytes = b""
    children: list[Element] = field(default_factory=list)


def _parse(data: bytes, depth: int) -> list[Element]:
    if depth > 3:
        raise TLVError("TLV nested too deeply")
    out: list[Element] = []
    pos = 0
    n = len(data)
    while pos < n:
        t = data[pos]
        pos += 1
        kind = (t >> 6) & 0x3
        id_len = 2 if t & 0x20 else 1
        len_kind = (t >> 3) & 0x3
        if pos + id_len > n:
            raise TLVError("TLV truncated in identifier")
        identifier = int.from_bytes(data[pos : pos + id_len], "big")
        pos += id_len
        if len_kind == 0:
            length = t & 0x7
        else:
            if t & 0x7:
                raise TLVError("TLV short-length bits set with an explicit length field")
            if pos + len_kind > n:
                raise TLVError("TLV truncated in length")
            length = int.from_bytes(data[pos : pos + len_kind], "big")
            pos += len_kind
        if pos + length > n:
            raise TLVError(f"TLV value of {length} bytes overruns the payload")
        body = data[pos : pos + length]
        pos += length
        element = Element(kind=kind, identifier=identifier)
        if kind in (OBJECT_INSTANCE, MULTIPLE_RESOURCE):
            element.children = _parse(body, depth + 1)
            allowed = (
                (RESOURCE_VALUE, MULTIPLE_RESOURCE)
                if kind == OBJECT_INSTANCE
                else (RESOURCE_INSTANCE,)
            )
            for child in element.children:
                if child.kind not in allowed:
                    raise TLVError(f"TLV element kind {child.kind} not allowed inside kind {kind}")
        else:
            element.value = bytes(body)
        out.append(element)
    return out


def parse_elements(data: bytes) -> list[Element]:
    """Parse raw TLV into elements (no typing)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TLVError("TLV payload must be bytes")
    return _parse(bytes(data), 0)


def _add(out: dict[Path, Value], path: Path, raw: bytes) -> None:
    if path in out:
        raise TLVError(f"duplicate TLV element for {path}")
    out[path] = bytes_to_value(raw, resource_type(path))


def _flatten_resource(out: dict[Path, Value], prefix: Path, element: Element) -> None:
    path = (*prefix, element.identifier)
    if element.kind == RESOURCE_VALUE:
        _add(out, path, element.value)
    elif element.kind == MULTIPLE_RESOURCE:
        for child in element.children:
            _add(out, (*path, child.identifier), child.value)
    else:
        raise TLVError(f"expected a resource, got TLV kind {element.kind}")


def decode_tlv(payload: bytes, path: Path) -> dict[Path, Value]:
    """Decode a TLV payload that answers a request on ``path`` into ``{full path: value}``."""
    elements = parse_elements(payload)
    out: dict[Path, Value] = {}
    if len(path) == 1:
        for element in elements:
            if element.kind != OBJECT_INSTANCE:
                raise TLVError("an object read must carry object instances")
            for child in element.children:
                _flatten_resource(out, (path[0], element.identifier), child)
    elif len(path) == 2:
        for element in elements:
            if element.kind == OBJECT_INSTANCE:
                if element.identifier != path[1]:
                    raise TLVError(f"instance {element.identifier} where {path[1]} was asked")
                for child in element.children:
                    _flatten_resource(out, path, child)
            else:
                _flatten_resource(out, path, element)
    elif len(path) == 3:
        if len(elements) != 1 or elements[0].identifier != path[2]:
            raise TLVError(f"expected exactly resource {path[2]}")
        _flatten_resource(out, path[:2], elements[0])
    elif len(path) == 4:
        if (
            len(elements) != 1
            or elements[0].kind != RESOURCE_INSTANCE
            or elements[0].identifier != path[3]
        ):
            raise TLVError(f"expected exactly resource instance {path[3]}")
        _add(out, path, elements[0].value)
    else:
        raise TLVError(f"cannot decode TLV for path {path!r}")
    return out


def _header(kind: int, identifier: int, length: int) -> bytes:
    if not 0 <= identifier <= 0xFFFF:
        raise TLVError(f"identifier {identifier} out of range")
    if length > MAX_LENGTH:
        raise TLVError("TLV value longer than 16 MiB")
    t = kind << 6
    ident = identifier.to_bytes(1, "big") if identifier <= 0xFF else identifier.to_bytes(2, "big")
    if identifier > 0xFF:
        t |= 0x20
    if length <= 7:
        t |= length
        extra = b""
    elif length <= 0xFF:
        t |= 1 << 3
        extra = length.to_bytes(1, "big")
    elif length <= 0xFFFF:
        t |= 2 << 3
        extra = length.to_bytes(2, "big")
    else:
        t |= 3 << 3
        extra = length.to_bytes(3, "big")
    return bytes([t]) + ident + extra


def element_bytes(kind: int, identifier: int, body: bytes) -> bytes:
    return _header(kind, identifier, len(body)) + body


def _encode_resources(values: Mapping[Path, Value], instance_prefix: Path) -> bytes:
    """Resources (with their instances) below one object instance, in id order."""
    singles: dict[int, bytes] = {}
    multis: dict[int, dict[int, bytes]] = {}
    for path, value in values.items():
        if path[:2] != instance_prefix or len(path) not in (3, 4):
            raise TLVError(f"value for {path} is not below {instance_prefix}")
        raw = value_to_bytes(value, resource_type(path))
        if len(path) == 3:
            singles[path[2]] = raw
        else:
            multis.setdefault(path[2], {})[path[3]] = raw
    out = bytearray()
    for rid in sorted(set(singles) | set(multis)):
        if rid in singles and rid in multis:
            raise TLVError(f"resource {rid} given as single and multiple")
        if rid in singles:
            out += element_bytes(RESOURCE_VALUE, rid, singles[rid])
        else:
            inner = b"".join(
                element_bytes(RESOURCE_INSTANCE, ri, raw) for ri, raw in sorted(multis[rid].items())
            )
            out += element_bytes(MULTIPLE_RESOURCE, rid, inner)
    return bytes(out)


def encode_tlv(values: Mapping[Path, Value], path: Path) -> bytes:
    """Encode ``{full path: value}`` as the TLV answer/write for ``path``."""
    if len(path) == 1:
        instances = sorted({p[1] for p in values})
        return b"".join(
            element_bytes(
                OBJECT_INSTANCE,
                iid,
                _encode_resources({p: v for p, v in values.items() if p[1] == iid}, (path[0], iid)),
            )
            for iid in instances
        )
    if len(path) in (2, 3):
        selected = {p: v for p, v in values.items() if p[: len(path)] == path}
        if len(selected) != len(values):
            raise TLVError(f"values outside {path} given")
        return _encode_resources(selected, path[:2])
    if len(path) == 4:
        if set(values) != {path}:
            raise TLVError("a resource-instance write carries exactly that instance")
        return element_bytes(
            RESOURCE_INSTANCE, path[3], value_to_bytes(values[path], resource_type(path))
        )
    raise TLVError(f"cannot encode TLV for path {path!r}")
