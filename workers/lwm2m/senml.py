"""SenML JSON (110) and SenML CBOR (112) as LwM2M 1.1 uses them (RFC 8428).

A record's name is ``bn + n`` and must be an LwM2M path; base name carries over to later records
until replaced. Values: ``v`` (number), ``vs`` (string), ``vb`` (boolean), ``vd`` (data: base64url
text in JSON, a byte string in CBOR), ``vlo`` (object link ``"3:0"``, LwM2M's extension). Time
fields are accepted and ignored: the gateway reads current values, not series.

Decoding refuses anything else with :class:`SenMLError`, and values are coerced to the resource
type the gateway knows (a string where an integer belongs is an error, not a surprise later).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Mapping
from typing import Any

import cbor2

from workers.lwm2m.content import (
    MAX_ID,
    ObjLink,
    Path,
    Value,
    coerce,
    format_path,
    parse_path,
    resource_type,
)
from workers.lwm2m.errors import LwM2MError, SenMLError

MAX_RECORDS = 1024
MAX_PAYLOAD = 64 * 1024

# RFC 8428 CBOR labels.
CBOR_LABELS = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs", 0: "n", 1: "u"}
CBOR_LABELS |= {2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}
CBOR_KEYS = {name: label for label, name in CBOR_LABELS.items()}
_KNOWN = set(CBOR_LABELS.values()) | {"vlo"}
_VALUE_FIELDS = ("v", "vs", "vb", "vd", "vlo")


def _b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or not text.isascii():
        raise SenMLError("vd must be base64url text")
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise SenMLError("vd is not valid base64url") from None


def _objlnk(text: Any) -> ObjLink:
    if not isinstance(text, str):
        raise SenMLError("vlo must be a string 'obj:inst'")
    a, sep, b = text.partition(":")
    if not sep or not a.isascii() or not b.isascii() or not a.isdigit() or not b.isdigit():
        raise SenMLError(f"vlo {text[:20]!r} is not obj:inst")
    if len(a) > 5 or len(b) > 5 or int(a) > MAX_ID or int(b) > MAX_ID:
        raise SenMLError("vlo ids out of range")
    return ObjLink(int(a), int(b))


def _records_to_values(records: Any, *, binary_vd: bool) -> dict[Path, Value]:
    if not isinstance(records, list):
        raise SenMLError("SenML pack must be an array")
    if len(records) > MAX_RECORDS:
        raise SenMLError(f"more than {MAX_RECORDS} SenML records")
    out: dict[Path, Value] = {}
    base_name = ""
    for record in records:
        if not isinstance(record, dict):
            raise SenMLError("SenML record must be a map")
        unknown = set(record) - _KNOWN
        if unknown:
            raise SenMLError(f"unknown SenML fields {sorted(map(str, unknown))[:5]}")
        if "bn" in record:
            if not isinstance(record["bn"], str):
                raise SenMLError("bn must be a string")
            base_name = record["bn"]
        name = record.get("n", "")
        if not isinstance(name, str):
            raise SenMLError("n must be a string")
        for numeric in ("bt", "t", "ut", "bv", "bs", "s"):
            if numeric in record and (
                isinstance(record[numeric], bool) or not isinstance(record[numeric], int | float)
            ):
                raise SenMLError(f"{numeric} must be a number")
        present = [f for f in _VALUE_FIELDS if f in record]
        if len(present) > 1:
            raise SenMLError(f"record carries several values {present}")
        if not present:
            if "n" in record:
                raise SenMLError(f"record {name[:20]!r} carries no value")
            continue  # a base-only record
        full = base_name + name
        try:
            path = parse_path(full)
        except LwM2MError as exc:
            raise SenMLError(f"record name {full[:40]!r}: {exc}") from None
        if len(path) < 3:
            raise SenMLError(f"record name {full[:40]!r} is not a resource path")
        field = present[0]
        raw = record[field]
        value: Value
        if field == "v":
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise SenMLError("v must be a number")
            if isinstance(raw, float) and not math.isfinite(raw):
                raise SenMLError("v must be finite")
            value = raw
        elif field == "vs":
            if not isinstance(raw, str):
                raise SenMLError("vs must be a string")
            value = raw
        elif field == "vb":
            if not isinstance(raw, bool):
                raise SenMLError("vb must be a boolean")
            value = raw
        elif field == "vd":
            if binary_vd:
                if not isinstance(raw, bytes):
                    raise SenMLError("vd must be a byte string in SenML CBOR")
                value = bytes(raw)
            else:
                value = _b64url_decode(raw)
        else:
            value = _objlnk(raw)
        if path in out:
            raise SenMLError(f"duplicate record for {format_path(path)}")
        try:
            out[path] = coerce(value, resource_type(path))
        except LwM2MError as exc:
            raise SenMLError(f"{format_path(path)}: {exc}") from None
    return out


def decode_senml_json(payload: bytes) -> dict[Path, Value]:
    if len(payload) > MAX_PAYLOAD:
        raise SenMLError("SenML payload too large")
    try:
        records = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SenMLError("SenML JSON does not parse") from None
    return _records_to_values(records, binary_vd=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def decode_senml_cbor(payload: bytes) -> dict[Path, Value]:
    if len(payload) > MAX_PAYLOAD:
        raise SenMLError("SenML payload too large")
    stream = io.BytesIO(payload)
    try:
        records = cbor2.CBORDecoder(stream).decode()
    except Exception:  # cbor2 raises many exception types on hostile input
        raise SenMLError("SenML CBOR does not parse") from None
    if stream.tell() != len(payload):
        raise SenMLError("trailing bytes after the SenML CBOR pack")
    if not isinstance(records, list):
        raise SenMLError("SenML pack must be an array")
    translated: list[Any] = []
    for record in records:
        if not isinstance(record, dict):
            raise SenMLError("SenML record must be a map")
        item: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(key, bool):
                raise SenMLError("SenML CBOR label must be an integer or text")
            if isinstance(key, int):
                if key not in CBOR_LABELS:
                    raise SenMLError(f"unknown SenML CBOR label {key}")
                name = CBOR_LABELS[key]
            elif key == "vlo":
                name = key
            else:
                raise SenMLError(f"unknown SenML CBOR key {str(key)[:20]!r}")
            if name in item:
                raise SenMLError(f"SenML field {name} given twice")
            item[name] = value
        translated.append(item)
    return _records_to_values(translated, binary_vd=True)


def _records(values: Mapping[Path, Value], *, binary_vd: bool) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path, value in sorted(values.items()):
        record: dict[str, Any] = {"n": format_path(path)}
        if isinstance(value, bool):
            record["vb"] = value
        elif isinstance(value, int | float):
            record["v"] = value
        elif isinstance(value, str):
            record["vs"] = value
        elif isinstance(value, bytes):
            record["vd"] = (
                value if binary_vd else base64.urlsafe_b64encode(value).rstrip(b"=").decode()
            )
        elif isinstance(value, ObjLink):
            record["vlo"] = str(value)
        else:
            raise SenMLError(f"cannot encode {type(value).__name__}")
        records.append(record)
    return records


def encode_senml_json(values: Mapping[Path, Value]) -> bytes:
    return json.dumps(_records(values, binary_vd=False), separators=(",", ":")).encode()


def encode_senml_cbor(values: Mapping[Path, Value]) -> bytes:
    records = [
        {CBOR_KEYS.get(k, k): v for k, v in record.items()}
        for record in _records(values, binary_vd=True)
    ]
    return cbor2.dumps(records)
