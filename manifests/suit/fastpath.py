"""Exact-layout fast path of :func:`decode_envelope` for the envelopes this product builds.

The general decoder (:mod:`.decode`) handles any SUIT envelope: ~13 bstr-wrapped CBOR items,
each decoded by cbor2, re-encoded to prove canonical form, then every command and parameter
checked in Python. That costs more than the signature check itself. Almost every envelope the
product decodes, though, is one :func:`.build.create_envelope` wrote, and those have a single
byte layout (see ``docs/suit.md``, "Wire format")::

    d8 6b a2 02 <bstr auth> 03 <bstr manifest>
    auth     = 8N 58 24 [82 2f 58 20 <32>] (58 6e <COSE_Sign1, 110 bytes>){N-1}
    manifest = a7 01 01 02 <uint> 03 <bstr common> 06 <bstr set-version>
               07 43 82 03 0f 09 43 82 17 02 14 <bstr install>

:func:`decode_fast` matches that layout with one regular expression over the whole envelope
(constant bytes literally; integers and string heads only in preferred form; fixed-size fields
by length), checks every length a head declares against what the match found, and builds
exactly the :class:`Envelope` the general decoder would. It answers ``None`` (the caller then
runs the general decoder, which names the problem) for anything else: another layout, a
severed or text member, any non-preferred head, trailing bytes, a digest mismatch, a depth
limit below what the layout needs.

Soundness: everything accepted here is a subset of what the general decoder accepts, with an
identical result. Each field is definite-length, preferred-form, of the one type the layout
allows, so the checks of the general decoder (types, required keys, known commands and
parameters, no duplicate keys, canonical order, no trailing bytes, nesting) hold by
construction; the manifest digest is recomputed. ``tests/manifests/test_suit_fastpath.py``
checks the equivalence on generated envelopes and on every kind of mutation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from types import MappingProxyType
from typing import Any

from .cbor import bstr_header as _bh
from .constants import ALG_EDDSA, ALG_ES256, ALG_SHA256, VERSION_COMPARISONS
from .model import Envelope, Manifest, SignatureBlock
from .model import build_frozen as _frozen

# The deepest layout accepted here decodes with the general decoder at max_depth=7 (a test
# proves it); below that the general decoder must run to refuse it.
FAST_MIN_DEPTH = 7

_sha256 = hashlib.sha256
_UTC = dt.UTC
_EMPTY: MappingProxyType[Any, Any] = MappingProxyType({})  # read-only; safe to share
_ALGS = {0x26: ALG_ES256, 0x27: ALG_EDDSA}  # protected {1: alg, ...}: -7 / -8
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_set = object.__setattr__
_new = object.__new__

# Preferred-form (RFC 8949 4.2.1, shortest) heads: unsigned integer, byte/text string length.
_UINT = (
    rb"[\x00-\x17]|\x18[\x18-\xff]|\x19[\x01-\xff].|\x1a(?:[\x01-\xff].|\x00[\x01-\xff]).."
    rb"|\x1b(?:[\x01-\xff]...|\x00[\x01-\xff]..|\x00\x00[\x01-\xff].|\x00\x00\x00[\x01-\xff])...."
)
_BHEAD = rb"[\x40-\x57]|\x58[\x18-\xff]|\x59[\x01-\xff]."  # < 64 KiB
_THEAD = rb"[\x60-\x77]|\x78[\x18-\xff]|\x79[\x01-\xff]."
# A byte string of fewer than 24 bytes, whole (its head fixes its length).
_SMALL_BSTR = b"|".join(re.escape(bytes((0x40 + n,))) + b"." * n for n in range(24))

_ENVELOPE = re.compile(
    # 107({2: << [<< [-16, digest] >>, << COSE_Sign1 >>...] >>, 3: << manifest >>})
    rb"\xd8\x6b\xa2\x02(" + _BHEAD + rb")"
    rb"([\x81-\x97]\x58\x24(\x82\x2f\x58\x20(.{32}))"
    #   18([<< {1: -7|-8, 4: kid} >>, {}, nil, signature])
    rb"((?:\x58\x6e\xd2\x84\x58\x26\xa2\x01[\x26\x27]\x04\x58\x20.{32}\xa0\xf6\x58\x40.{64})*))"
    rb"\x03(" + _BHEAD + rb")("
    # manifest {1: 1, 2: seq, 3: << common >>, 6: << set-version >>, 7: << [3, 15] >>,
    #           9: << [23, 2] >>, 20: << install >>}
    rb"\xa7\x01\x01\x02(" + _UINT + rb")"
    rb"\x03(" + _BHEAD + rb")(\xa2\x02\x81([\x80-\x97])((?:" + _SMALL_BSTR + rb")*)"
    rb"\x04(" + _BHEAD + rb")("
    # shared [20, {1: vendor, 2: class, 3: << [-16, digest] >>, 4?: use-before, 14: size,
    #              28?: << [cmp, [version]] >>, -257: counter, -258: format},
    #         1, 15, 2, 15, (4, 15)?, (28, 15)?]
    rb"([\x86\x88\x8a])\x14([\xa6-\xa8])\x01\x50(.{16})\x02\x50(.{16})"
    rb"\x03\x58\x24\x82\x2f\x58\x20(.{32})"
    rb"(?:\x04(" + _UINT + rb"))?"
    rb"\x0e(" + _UINT + rb")"
    rb"(?:\x18\x1c(" + _BHEAD + rb")\x82([\x01-\x05])([\x81-\x97](?:" + _UINT + rb")+))?"
    rb"\x39\x01\x00(" + _UINT + rb")"
    rb"\x39\x01\x01(\x63raw|\x67mcuboot)"
    rb"\x01\x0f\x02\x0f(\x04\x0f)?(\x18\x1c\x0f)?))"
    rb"\x06(" + _BHEAD + rb")([\x81-\x97](?:" + _UINT + rb")+)"
    rb"\x07\x43\x82\x03\x0f\x09\x43\x82\x17\x02\x14(" + _BHEAD + rb")("
    # install [-257, 15, -258, 15, (20, {21: uri}, 21, 2)?, 3, 15]
    rb"\x86\x39\x01\x00\x0f\x39\x01\x01\x0f\x03\x0f"
    rb"|\x8a\x39\x01\x00\x0f\x39\x01\x01\x0f\x14\xa1\x15(" + _THEAD + rb")(.*)\x15\x02\x03\x0f"
    rb"))",
    re.DOTALL,
)
_MATCH = _ENVELOPE.fullmatch
_VALIDATE_SEQ = ((3, 15),)
_INVOKE_SEQ = ((23, 2),)
_INSTALL_SEQ = ((-257, 15), (-258, 15), (3, 15))
_CONDITIONS = {  # (use-before condition, version condition) -> every condition code used
    (False, False): frozenset({1, 2, 3, -257, -258}),
    (True, False): frozenset({1, 2, 3, 4, -257, -258}),
    (False, True): frozenset({1, 2, 3, 28, -257, -258}),
    (True, True): frozenset({1, 2, 3, 4, 28, -257, -258}),
}


class _Miss(Exception):
    """Not the product layout: let the general decoder decide."""


def _arg(head: bytes) -> int:
    """Argument of a preferred-form head the pattern matched (1, 2, 3, 5 or 9 bytes)."""
    if len(head) == 1:
        return head[0] & 0x1F
    return int.from_bytes(head[1:], "big")


def _uints(data: bytes) -> tuple[int, ...]:
    """The uints of ``8N uint{N}`` the pattern matched (a miss unless there are exactly N)."""
    count = data[0] - 0x80
    if len(data) == count + 1 and max(data[1:]) < 24:
        return tuple(data[1:])  # every value < 24: one byte each
    out = []
    pos = 1
    end = len(data)
    while pos < end:
        info = data[pos] & 0x1F
        if info < 24:
            out.append(info)
            pos += 1
        else:
            size = 1 << (info - 24)
            out.append(int.from_bytes(data[pos + 1 : pos + 1 + size], "big"))
            pos += 1 + size
    if len(out) != count:
        raise _Miss
    return tuple(out)


def _signatures(blob: bytes) -> tuple[SignatureBlock, ...]:
    # each: 58 6e | d2 84 58 26 [a2 01 alg 04 58 20 <kid 32>] a0 f6 58 40 <signature 64>
    out = []
    at = 0
    index = 0
    while at < len(blob):
        block = _new(SignatureBlock)
        block.__dict__.update(
            {
                "alg": _ALGS[blob[at + 8]],
                "kid": blob[at + 12 : at + 44],
                "raw": blob[at + 2 : at + 112],
                "protected": blob[at + 6 : at + 44],
                "signature": blob[at + 48 : at + 112],
                "unprotected": _EMPTY,
                "tagged": True,
                "kid_protected": True,
                "index": index,
            }
        )
        out.append(block)
        at += 112
        index += 1
    return tuple(out)


def _components(count: int, blob: bytes) -> tuple[bytes, ...]:
    if count == 1 and blob[0] - 0x3F == len(blob):
        return (blob[1:],)
    parts = []
    pos = 0
    while pos < len(blob):
        end = pos + 1 + blob[pos] - 0x40
        parts.append(blob[pos + 1 : end])
        pos = end
    if len(parts) != count:
        raise _Miss
    return tuple(parts)


def decode_fast(data: bytes, max_depth: int) -> Envelope | None:
    """The :class:`Envelope` of ``data`` if it has the product's exact layout, else ``None``.

    ``None`` says nothing about validity; the caller runs the general decoder then.
    """
    if max_depth < FAST_MIN_DEPTH:
        return None
    match = _MATCH(data)
    if match is None:
        return None
    (
        auth_head, auth, digest_bstr, digest, blocks, manifest_head, manifest_bytes,
        seq, common_head, common, n_parts, parts_blob, shared_head, shared,
        n_items, n_params, vendor, class_, image_digest, use_before, size,
        v_len, v_cmp, v_value, counter, fmt, c_use_before, c_version,
        set_version_head, set_version, install_head, install, uri_head, uri_bytes,
    ) = match.groups()  # fmt: skip
    has_ub = use_before is not None
    has_version = v_len is not None
    has_cub = c_use_before is not None
    has_cversion = c_version is not None
    # Every length a head declares must be the length the pattern found; every count the
    # number of items. (The manifest is the last member, so its length is implied.)
    if (
        _bh(len(auth)) != auth_head
        or len(auth) != 39 + 112 * (auth[0] - 0x81)
        or _bh(len(manifest_bytes)) != manifest_head
        or _bh(len(common)) != common_head
        or _bh(len(shared)) != shared_head
        or _bh(len(set_version)) != set_version_head
        or _bh(len(install)) != install_head
        or n_items[0] != 0x86 + 2 * (has_cub + has_cversion)
        or n_params[0] != 0xA6 + has_ub + has_version
        or (uri_head is not None and _arg(uri_head) != len(uri_bytes))
        or (has_version and _bh(2 + len(v_value)) != v_len)
    ):
        return None
    manifest_digest = _sha256(data[match.start(6) :]).digest()
    if manifest_digest != digest:
        return None  # the general decoder names the mismatch
    try:
        parts = _uints(set_version)
        component = _components(n_parts[0] - 0x80, parts_blob)
        uri = uri_bytes.decode("utf-8") if uri_bytes is not None else None
        use_before_at = None
        if has_ub:
            use_before_at = dt.datetime.fromtimestamp(_arg(use_before), tz=_UTC)
    except (_Miss, ValueError, OverflowError, OSError):
        return None  # bad UTF-8, use-before out of range: the general decoder reports it

    vendor_id = _new(uuid.UUID)  # uuid.UUID(bytes=...) without its argument juggling
    _set(vendor_id, "int", int.from_bytes(vendor, "big"))
    _set(vendor_id, "is_safe", _SAFE_UNKNOWN)
    class_id = _new(uuid.UUID)
    _set(class_id, "int", int.from_bytes(class_, "big"))
    _set(class_id, "is_safe", _SAFE_UNKNOWN)
    image_size = _arg(size)
    security_counter = _arg(counter)
    payload_format = "raw" if len(fmt) == 4 else "mcuboot"
    params: dict[int, Any] = {1: vendor_id, 2: class_id, 3: (ALG_SHA256, image_digest)}
    shared_seq: list[tuple[int, Any]] = [(20, None), (1, 15), (2, 15)]
    if has_ub:
        params[4] = use_before_at
        shared_seq.append((4, 15))
    params[14] = image_size
    comparison = None
    if has_version:
        cmp = v_cmp[0]
        try:
            params[28] = (cmp, _uints(v_value))
        except _Miss:
            return None
        comparison = VERSION_COMPARISONS[cmp]
    params[-257] = security_counter
    params[-258] = payload_format
    if has_cversion:
        shared_seq.append((28, 15))
    shared_seq[0] = (20, MappingProxyType(params))
    install_seq: tuple[tuple[int, Any], ...] = _INSTALL_SEQ
    if uri is not None:
        install_seq = (
            (-257, 15),
            (-258, 15),
            (20, MappingProxyType({21: uri})),
            (21, 2),
            (3, 15),
        )
    # the parts are non-negative here, so format_version reduces to these two forms
    if len(parts) == 4:
        firmware_version = f"{parts[0]}.{parts[1]}.{parts[2]}+{parts[3]}"
    else:
        firmware_version = ".".join(map(str, parts))
    manifest = _frozen(
        Manifest,
        {
            "manifest_version": 1,
            "sequence_number": _arg(seq),
            "components": (component,),
            "vendor_id": vendor_id,
            "class_id": class_id,
            "image_digest": image_digest,
            "image_digest_alg": ALG_SHA256,
            "image_size": image_size,
            "uri": uri,
            "firmware_version": firmware_version,
            "version_parts": parts,
            "version_comparison": comparison,
            "use_before": use_before_at,
            "security_counter": security_counter,
            "payload_format": payload_format,
            "text": _EMPTY,
            "reference_uri": None,
            "conditions": _CONDITIONS[has_cub, has_cversion],
            "sequences": MappingProxyType(
                {
                    "shared-sequence": tuple(shared_seq),
                    "validate": _VALIDATE_SEQ,
                    "invoke": _INVOKE_SEQ,
                    "install": install_seq,
                }
            ),
            "text_languages": _EMPTY,
            "raw": manifest_bytes,
        },
    )
    return _frozen(
        Envelope,
        {
            "raw": data,
            "manifest_bytes": manifest_bytes,
            "manifest_digest": manifest_digest,
            "digest_bstr": digest_bstr,
            "digest_alg": ALG_SHA256,
            "signatures": _signatures(blocks),
            "manifest": manifest,
            "severed": _EMPTY,
            "integrated_payloads": _EMPTY,
        },
    )
