"""Strict CBOR decoding for SUIT: one well-formed, definite-length, deterministically encoded item.

Decoding is done by cbor2's C decoder (fast); strictness comes from two cheap checks around it:

* cbor2 is told to refuse indefinite lengths, duplicate keys and nesting beyond the budget, and
  to hand every tag back as a plain ``CBORTag`` (no silent conversion of bignums, dates, UUIDs or
  the self-describe tag), so the SUIT layer sees exactly what was on the wire;
* re-encoding the decoded item must give back the input bytes. That proves there are no trailing
  bytes and that every head is in preferred (shortest) form. Map key *order* is checked by the
  SUIT layer with :func:`check_map_order`, which is cheaper than a canonical re-encode.

Only when one of those fails does the slow path run: :func:`scan`, a small pure-Python walker of
CBOR heads, which names the precise problem (truncation, indefinite length, reserved value,
nesting, duplicate key, trailing bytes) and its byte offset. Error classes never depend on cbor2's
message texts except as the last resort for problems the walker cannot see.
"""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2

from .errors import (
    SUITDecodeError,
    SUITDuplicateKeyError,
    SUITIndefiniteLengthError,
    SUITMalformedCBORError,
    SUITNestingError,
    SUITNonCanonicalError,
    SUITTrailingBytesError,
    SUITTruncatedError,
)

CBORTag = cbor2.CBORTag
_loads = cbor2.loads
_dumps = cbor2.dumps
_CBORError = cbor2.CBORError


def _keep_tag(tag: int) -> Any:
    def hook(value: Any, immutable: bool) -> CBORTag:
        return CBORTag(tag, value)

    return hook


# Tags cbor2 6.x interprets itself (found by probing every tag < 65536; a test re-probes so an
# upgrade that adds one fails loudly). Overriding them keeps every tag visible to the SUIT layer.
SEMANTIC_TAGS: tuple[int, ...] = (
    0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 43000,
    55799,
)  # fmt: skip
# Tags SUIT uses are registered too: cbor2 decodes the content of an unregistered tag as
# immutable (tuples, frozendict), registered ones as plain lists and dicts.
_RAW_TAGS = {tag: _keep_tag(tag) for tag in (*SEMANTIC_TAGS, 16, 17, 18, 96, 107, 112)}


# Heads of byte strings shorter than 256 bytes (every digest, header and signature).
_SHORT_BSTR_HEADS = tuple(bytes((0x40 | n,)) if n < 24 else bytes((0x58, n)) for n in range(256))


def bstr_header(length: int) -> bytes:
    """The preferred-form CBOR head of a byte string of ``length`` bytes."""
    if length < 0x100:
        return _SHORT_BSTR_HEADS[length]
    if length < 0x10000:
        return b"\x59" + length.to_bytes(2, "big")
    if length < 0x100000000:
        return b"\x5a" + length.to_bytes(4, "big")
    return b"\x5b" + length.to_bytes(8, "big")


def encode_bstr(data: bytes) -> bytes:
    """``data`` as a CBOR byte string (head + content)."""
    return bstr_header(len(data)) + data


def dumps(obj: Any) -> bytes:
    """Deterministic (RFC 8949 4.2.1) encoding, as SUIT requires for everything it signs."""
    return _dumps(obj, canonical=True)


def decode_item(data: bytes, where: str, max_depth: int, *, canonical: bool = True) -> Any:
    """Decode exactly one CBOR item from ``data`` or raise the specific SUITDecodeError.

    ``max_depth`` is the container nesting still allowed for this item (the caller subtracts
    what encloses the byte string). ``canonical`` additionally requires preferred serialization
    (SUIT structures); COSE structures, which SUIT does not constrain, pass ``False``.
    """
    if max_depth < 0:
        raise SUITNestingError("nesting limit reached before this item", path=where)
    try:
        obj = _loads(
            data,
            semantic_decoders=_RAW_TAGS,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
    except _CBORError as exc:
        scan(data, where, max_depth)
        raise _classify(exc, where) from None
    except RecursionError:
        raise SUITNestingError("nesting too deep to decode", path=where) from None
    try:
        same = _dumps(obj) == data
    except Exception:  # an object cbor2 cannot re-encode is simply "not the same bytes"
        same = False
    if not same:
        scan(data, where, max_depth)
        # The fast re-encode writes floats as float64; the canonical encoder picks the shortest
        # exact float as preferred serialization does, so ask it before calling this non-canonical.
        if canonical and not _same_canonical(obj, data):
            raise SUITNonCanonicalError(
                "not in preferred serialization (RFC 8949 4.2.1 deterministic encoding)",
                path=where,
            )
    return obj


def _same_canonical(obj: Any, data: bytes) -> bool:
    try:
        return bool(_dumps(obj, canonical=True) == data)
    except Exception:
        return False


def _classify(exc: Exception, where: str) -> SUITDecodeError:
    """Last resort for a cbor2 refusal the head walker found no reason for."""
    text = str(exc)
    lowered = text.lower()
    if "duplicate" in lowered:
        return SUITDuplicateKeyError(f"map has a duplicate key ({text})", path=where)
    if "depth" in lowered:
        return SUITNestingError(f"nesting too deep ({text})", path=where)
    if "indefinite" in lowered:
        return SUITIndefiniteLengthError(f"indefinite length ({text})", path=where)
    if "premature end" in lowered:
        return SUITTruncatedError(f"truncated ({text})", path=where)
    return SUITMalformedCBORError(f"malformed CBOR ({text})", path=where)


def scan(data: bytes, where: str, max_depth: int) -> None:
    """Walk the CBOR heads of ``data``; raise the specific error for the first problem found.

    Returns normally when ``data`` is exactly one well-formed item within ``max_depth``.
    Iterative, so hostile nesting cannot exhaust the Python stack.
    """
    n = len(data)
    pos = 0
    # Each open container: [items still expected, is_map, seen key encodings, start of key].
    stack: list[list[Any]] = []
    in_tag = False
    while True:
        if pos >= n:
            raise SUITTruncatedError(f"data ends at offset {pos} inside an item", path=where)
        if not in_tag and stack and stack[-1][1] and stack[-1][0] % 2 == 0:
            stack[-1][3] = pos
        head_at = pos
        initial = data[pos]
        major = initial >> 5
        info = initial & 0x1F
        pos += 1
        if info < 24:
            value = info
        elif info < 28:
            size = 1 << (info - 24)
            if pos + size > n:
                raise SUITTruncatedError(f"head at offset {head_at} is cut off", path=where)
            value = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        elif info < 31:
            raise SUITMalformedCBORError(
                f"reserved additional information {info} at offset {head_at}", path=where
            )
        else:
            if major in (2, 3, 4, 5):
                raise SUITIndefiniteLengthError(
                    f"indefinite-length item at offset {head_at}", path=where
                )
            raise SUITMalformedCBORError(
                f"unexpected break/indefinite at offset {head_at}", path=where
            )
        if major in (2, 3):
            if value > n - pos:
                raise SUITTruncatedError(
                    f"string at offset {head_at} declares {value} bytes, {n - pos} remain",
                    path=where,
                )
            if major == 3:
                try:
                    data[pos : pos + value].decode("utf-8")
                except UnicodeDecodeError:
                    raise SUITMalformedCBORError(
                        f"text string at offset {head_at} is not valid UTF-8", path=where
                    ) from None
            pos += value
        elif major in (4, 5):
            if len(stack) + 1 > max_depth:
                raise SUITNestingError(
                    f"container at offset {head_at} exceeds the nesting limit {max_depth}",
                    path=where,
                )
            count = value * 2 if major == 5 else value
            if count > n - pos:
                raise SUITTruncatedError(
                    f"container at offset {head_at} declares more items than bytes remain",
                    path=where,
                )
            if count:
                stack.append([count, major == 5, set(), pos])
                in_tag = False
                continue
        elif major == 6:
            in_tag = True
            continue
        elif major == 7 and info == 24 and value < 32:
            raise SUITMalformedCBORError(
                f"simple value {value} in two-byte form at offset {head_at}", path=where
            )
        in_tag = False
        # One item completed: account for it in the enclosing containers.
        while stack:
            top = stack[-1]
            if top[1] and top[0] % 2 == 0:
                key = data[top[3] : pos]
                if key in top[2]:
                    raise SUITDuplicateKeyError(
                        f"map key at offset {top[3]} repeats an earlier key", path=where
                    )
                top[2].add(key)
            top[0] -= 1
            if top[0]:
                break
            stack.pop()
        if not stack:
            break
    if pos != n:
        raise SUITTrailingBytesError(
            f"{n - pos} trailing byte(s) after the item, at offset {pos}", path=where
        )


def _int_order_ok(keys: list[int]) -> bool:
    # Deterministic order of integer keys: non-negative ascending, then negative by magnitude.
    split = len(keys)
    for i, k in enumerate(keys):
        if k < 0:
            split = i
            break
    pos, neg = keys[:split], keys[split:]
    if pos != sorted(set(pos)):
        return False
    return not neg or (max(neg) < 0 and neg == sorted(set(neg), reverse=True))


def check_map_order(mapping: dict[Any, Any], where: str) -> None:
    """Raise SUITNonCanonicalError unless the map's keys are in deterministic (bytewise) order."""
    if len(mapping) < 2:
        return
    keys = list(mapping)
    # Common case: non-negative integer keys, where numeric order is the bytewise order.
    with contextlib.suppress(TypeError):  # mixed key types do not sort; checked below
        if type(keys[0]) is int and keys[0] >= 0 and keys == sorted(keys):
            return
    if all(type(k) is int for k in keys):
        if _int_order_ok(keys):
            return
    else:
        try:
            encoded = [_dumps(k) for k in keys]
        except Exception:
            return  # an unencodable key is reported by the type checks
        if encoded == sorted(encoded):
            return
    raise SUITNonCanonicalError("map keys are not in deterministic order", path=where)
