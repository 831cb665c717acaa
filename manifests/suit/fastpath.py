"""Exact-layout fast path of :func:`decode_envelope` for the envelopes this product builds.

The general decoder (:mod:`.decode`) handles any SUIT envelope: ~13 bstr-wrapped CBOR items,
each decoded by cbor2, re-encoded to prove canonical form, then every command and parameter
checked in Python. That costs more than the signature check itself. Almost every envelope the
product decodes, though, is one :func:`.build.create_envelope` wrote, and those have a single
byte layout (see ``docs/suit.md``, "Wire format")::

    d8 6b a2 02 <bstr auth> 03 <bstr manifest>
    auth     = 8N 58 24 [82 2f 58 20 <32>] (58 6e <COSE_Sign1, 110 bytes>){N-1}
    manifest = a8 01 01 02 <uint> 03 <bstr common> 06 <bstr set-version>
               07 43 82 03 0f 09 43 82 17 02 14 <bstr install> 17 <bstr text>
    install  = one of the four forms of the two profiles, with or without a URI
    text     = {"en": {[component]: {8: current-version}}}

:func:`decode_fast` matches everything up to the install head with one regular expression
(constant bytes literally; integers and string heads only in preferred form; fixed-size fields
by length), cuts install and text by the lengths their heads declare, matches each against its
few possible forms, checks every length a head declares against what was found, and builds
exactly the :class:`Envelope` the general decoder would. It answers ``None`` (the caller then
runs the general decoder, which names the problem) for anything else: another layout (also the
product's own older one), a severed member, other text, any non-preferred head, trailing bytes,
a digest mismatch, a depth limit below what the layout needs.

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
from .constants import (
    ALG_ED25519,
    ALG_EDDSA,
    ALG_ES256,
    ALG_ESP256,
    ALG_SHA256,
    VERSION_COMPARISONS,
)
from .model import Envelope, Manifest, SignatureBlock, format_version, full_version
from .model import build_frozen as _frozen
from .model import build_lazy as _lazy

# The deepest layout accepted here decodes with the general decoder at max_depth=7 (a test
# proves it); below that the general decoder must run to refuse it.
FAST_MIN_DEPTH = 7

_sha256 = hashlib.sha256
_UTC = dt.UTC
_EMPTY: MappingProxyType[Any, Any] = MappingProxyType({})  # read-only; safe to share
# protected {1: alg, ...}: -7 / -8 / -9 / -19
_ALGS = {0x26: ALG_ES256, 0x27: ALG_EDDSA, 0x28: ALG_ESP256, 0x32: ALG_ED25519}
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
    #   18([<< {1: -7|-8|-9|-19, 4: kid} >>, {}, nil, signature])
    rb"((?:\x58\x6e\xd2\x84\x58\x26\xa2\x01[\x26\x27\x28\x32]\x04\x58\x20.{32}\xa0\xf6\x58\x40.{64})*))"
    rb"\x03(" + _BHEAD + rb")("
    # manifest {1: 1, 2: seq, 3: << common >>, 6: << set-version >>, 7: << [3, 15] >>,
    #           9: << [23, 2] >>, 20: << install >>, 23: << text >>}
    rb"\xa8\x01\x01\x02(" + _UINT + rb")"
    rb"\x03(" + _BHEAD + rb")(\xa2\x02\x81([\x80-\x97])((?:" + _SMALL_BSTR + rb")*)"
    rb"\x04(" + _BHEAD + rb")("
    # shared [20, {1: vendor, 2: class, 3: << [-16, digest] >>, 4?: use-before, 14: size,
    #              28?: << [cmp, [version]] >>},
    #         1, 15, 2, 15, (4, 15)?, (28, 15)?]
    rb"([\x86\x88\x8a])\x14([\xa4-\xa6])\x01\x50(.{16})\x02\x50(.{16})"
    rb"\x03\x58\x24\x82\x2f\x58\x20(.{32})"
    rb"(?:\x04(" + _UINT + rb"))?"
    rb"\x0e(" + _UINT + rb")"
    rb"(?:\x18\x1c(" + _BHEAD + rb")\x82([\x01-\x05])([\x81-\x83](?:" + _UINT + rb")+))?"
    rb"\x01\x0f\x02\x0f(\x04\x0f)?(\x18\x1c\x0f)?))"
    rb"\x06(" + _BHEAD + rb")([\x81-\x83](?:" + _UINT + rb")+)"
    rb"\x07\x43\x82\x03\x0f\x09\x43\x82\x17\x02\x14(" + _BHEAD + rb")"
    # install and text, split by the install head's length (see _install, _text)
    rb"(.*))",
    re.DOTALL,
)
_MATCH = _ENVELOPE.fullmatch
_FMT = rb"(\x63raw|\x67mcuboot)"
# install, extended: [20, {21?: uri, -257: counter, -258: format}, -257, 15, -258, 15,
#                     (21, 2)?, 3, 15]; the URI (when there) is cut out by its head first
_EXT_TAIL = re.compile(
    rb"\x39\x01\x00(" + _UINT + rb")\x39\x01\x01" + _FMT + rb"\x39\x01\x00\x0f\x39\x01\x01\x0f",
    re.DOTALL,
).fullmatch
_STD_NO_URI = b"\x82\x03\x0f"  # install, standard, no URI: [3, 15]
_FETCH_TAIL = b"\x15\x02\x03\x0f"  # 21, 2, 3, 15
_THEAD_AT = re.compile(_THEAD, re.DOTALL).match
_VALIDATE_SEQ = ((3, 15),)
_INVOKE_SEQ = ((23, 2),)
_CUSTOM_CONDITIONS = (-257, -258)


class _Miss(Exception):
    """Not the product layout: let the general decoder decide."""


def _arg(head: bytes) -> int:
    """Argument of a preferred-form head the pattern matched (1, 2, 3, 5 or 9 bytes)."""
    if len(head) == 1:
        return head[0] & 0x1F
    return int.from_bytes(head[1:], "big")


# The argument of every preferred-form uint, bstr and tstr head of up to 2 bytes and of byte
# string heads up to 4 KiB (a dictionary lookup instead of a call on the hot path; ``_HEAD_ARG
# .get(h) or _arg(h)`` for any head).
_HEAD_ARG: dict[bytes, int] = {}
for _major in (0x00, 0x40, 0x60):
    for _n in range(256):
        _h = bytes((_major | _n,)) if _n < 24 else bytes((_major | 24, _n))
        _HEAD_ARG[_h] = _n
for _n in range(256, 4096):
    _HEAD_ARG[b"\x59" + _n.to_bytes(2, "big")] = _n
_HA = _HEAD_ARG.get


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
                "kind": "sign1",
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


_EXT = rb"\x39\x01\x00(" + _UINT + rb")\x39\x01\x01" + _FMT + rb"\x39\x01\x00\x0f\x39\x01\x01\x0f"
# The four forms in one pattern (groups: extended no URI 1-2; extended with URI 3-6; standard
# with URI 7-8). A URI is taken up to the last place the rest fits; when that is not the length
# its head declares (a URI holding the bytes of what follows it), _install_cut decides.
_INSTALL_FORMS = re.compile(
    rb"\x82\x03\x0f"
    rb"|\x88\x14\xa2" + _EXT + rb"\x03\x0f"
    rb"|\x8a\x14\xa3\x15(" + _THEAD + rb")(.*)" + _EXT + rb"\x15\x02\x03\x0f"
    rb"|\x86\x14\xa1\x15(" + _THEAD + rb")(.*)\x15\x02\x03\x0f",
    re.DOTALL,
).fullmatch


def _install(install: bytes) -> tuple[str | None, int | None, str | None] | None:
    """(uri, security counter, payload format) of an install sequence the builder writes, or
    None for any other bytes."""
    form = _INSTALL_FORMS(install)
    if form is None:
        return None
    counter, fmt, thead, uri, counter_u, fmt_u, thead_s, uri_s = form.groups()
    if counter is not None:
        return None, _arg(counter), "raw" if len(fmt) == 4 else "mcuboot"
    if thead is not None:
        if (_HA(thead) or _arg(thead)) != len(uri):
            return _install_cut(install)
        return uri.decode("utf-8"), _arg(counter_u), "raw" if len(fmt_u) == 4 else "mcuboot"
    if thead_s is not None:
        if _arg(thead_s) != len(uri_s):
            return _install_cut(install)
        return uri_s.decode("utf-8"), None, None
    return None, None, None


def _install_cut(install: bytes) -> tuple[str | None, int | None, str | None] | None:
    """:func:`_install` cutting the URI by its head's length first (any URI)."""
    if install == _STD_NO_URI:
        return None, None, None
    head = install[:3]
    if head == b"\x88\x14\xa2":  # extended, no URI
        body = install[3:]
        uri = None
        if not body.endswith(b"\x03\x0f"):
            return None
        body = body[:-2]
    elif head in (b"\x8a\x14\xa3", b"\x86\x14\xa1"):  # extended / standard, with a URI
        if install[3:4] != b"\x15" or not install.endswith(_FETCH_TAIL):
            return None
        thead = _THEAD_AT(install, 4)
        if thead is None:
            return None
        start = thead.end()
        end = start + _arg(thead.group())
        uri = install[start:end].decode("utf-8")  # UnicodeDecodeError: the caller's miss
        body = install[end:-4]
        if head == b"\x86\x14\xa1":
            return (uri, None, None) if not body else None
    else:
        return None
    tail = _EXT_TAIL(body)
    if tail is None:
        return None
    counter, fmt = tail.groups()
    return uri, _arg(counter), "raw" if len(fmt) == 4 else "mcuboot"


def _text(rest: bytes, component_array: bytes) -> str | None:
    """The version of ``23: << {"en": {[component]: {8: version}}} >>``, the text member the
    builder writes, or None for anything else."""
    if rest[:1] != b"\x17":
        return None
    bhead = _BHEAD_AT(rest, 1)
    if bhead is None:
        return None
    text = rest[bhead.end() :]
    head = bhead.group()
    if (_HA(head) or _arg(head)) != len(text):
        return None
    prefix = b"\xa1\x62en\xa1" + component_array + b"\xa1\x08"
    if not text.startswith(prefix):
        return None
    thead = _THEAD_AT(text, len(prefix))
    if thead is None:
        return None
    head = thead.group()
    if (_HA(head) or _arg(head)) != len(text) - thead.end():
        return None
    return text[thead.end() :].decode("utf-8")  # UnicodeDecodeError: the caller's miss


_BHEAD_AT = re.compile(_BHEAD, re.DOTALL).match


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
        v_len, v_cmp, v_value, c_use_before, c_version,
        set_version_head, set_version, install_head, rest,
    ) = match.groups()  # fmt: skip
    has_ub = use_before is not None
    has_version = v_len is not None
    has_cub = c_use_before is not None
    has_cversion = c_version is not None
    # Every length a head declares must be the length the pattern found; every count the
    # number of items. (The manifest is the last member, so its length is implied.)
    if (
        (_HA(auth_head) or _arg(auth_head)) != len(auth)
        or len(auth) != 39 + 112 * (auth[0] - 0x81)
        or (_HA(manifest_head) or _arg(manifest_head)) != len(manifest_bytes)
        or (_HA(common_head) or _arg(common_head)) != len(common)
        or (_HA(shared_head) or _arg(shared_head)) != len(shared)
        or (_HA(set_version_head) or _arg(set_version_head)) != len(set_version)
        or n_items[0] != 0x86 + 2 * (has_cub + has_cversion)
        or n_params[0] != 0xA4 + has_ub + has_version
        or (has_version and _bh(2 + len(v_value)) != v_len)
    ):
        return None
    install_len = _HA(install_head) or _arg(install_head)
    install = rest[:install_len]
    if len(install) != install_len:
        return None
    manifest_digest = _sha256(data[match.start(6) :]).digest()
    if manifest_digest != digest:
        return None  # the general decoder names the mismatch
    try:
        parts = _uints(set_version)
        component = _components(n_parts[0] - 0x80, parts_blob)
        found = _install(install)
        if found is None:
            return None
        uri, security_counter, payload_format = found
        current = _text(rest[install_len:], n_parts + parts_blob)
        if current is None:
            return None
        use_before_at = None
        if has_ub:
            use_before_at = dt.datetime.fromtimestamp(_arg(use_before), tz=_UTC)
    except (_Miss, ValueError, OverflowError, OSError):
        return None  # bad UTF-8, use-before out of range: the general decoder reports it

    version_range = None
    if has_version:
        try:
            version_range = (v_cmp[0], _uints(v_value))
        except _Miss:
            return None

    def build() -> dict[str, Any]:
        return _manifest_fields(
            vendor, class_, image_digest, _arg(size), use_before_at, version_range,
            has_cversion, uri, security_counter, payload_format, current, parts, component,
            _arg(seq),
        )  # fmt: skip

    # Every check is done: what the manifest holds is built when it is first read (verifying
    # reads none of it). The fields the dataclass has class-level defaults for are set now.
    manifest = _lazy(
        Manifest,
        {
            "raw": manifest_bytes,
            "set_version": parts,
            "encryption_info": (),
            "manifest_component_id": None,
            "coswid": None,
            "precursor_digests": (),  # an install with -259 is not the fast path's shape
        },
        build,
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


def _manifest_fields(
    vendor: bytes,
    class_: bytes,
    image_digest: bytes,
    image_size: int,
    use_before_at: dt.datetime | None,
    version_range: tuple[int, tuple[int, ...]] | None,
    has_cversion: bool,
    uri: str | None,
    security_counter: int | None,
    payload_format: str | None,
    current: str,
    parts: tuple[int, ...],
    component: tuple[bytes, ...],
    sequence_number: int,
) -> dict[str, Any]:
    """The fields of a fast-path manifest beyond those :func:`decode_fast` sets at once, from
    the values it checked (nothing here can fail)."""
    vendor_id = _new(uuid.UUID)  # uuid.UUID(bytes=...) without its argument juggling
    _set(vendor_id, "int", int.from_bytes(vendor, "big"))
    _set(vendor_id, "is_safe", _SAFE_UNKNOWN)
    class_id = _new(uuid.UUID)
    _set(class_id, "int", int.from_bytes(class_, "big"))
    _set(class_id, "is_safe", _SAFE_UNKNOWN)
    params: dict[int, Any] = {1: vendor_id, 2: class_id, 3: (ALG_SHA256, image_digest)}
    shared_seq: list[tuple[int, Any]] = [(20, None), (1, 15), (2, 15)]
    conditions = [1, 2, 3]
    if use_before_at is not None:
        params[4] = use_before_at
        shared_seq.append((4, 15))
        conditions.append(4)
    params[14] = image_size
    comparison = None
    if version_range is not None:
        params[28] = version_range
        comparison = VERSION_COMPARISONS[version_range[0]]
    if has_cversion:
        shared_seq.append((28, 15))
        conditions.append(28)
    shared_seq[0] = (20, MappingProxyType(params))
    install_seq: list[tuple[int, Any]] = []
    install_params: dict[int, Any] = {}
    if uri is not None:
        install_params[21] = uri
    if security_counter is not None:
        install_params[-257] = security_counter
        install_params[-258] = payload_format
        install_seq += [(20, MappingProxyType(install_params)), (-257, 15), (-258, 15)]
        conditions += _CUSTOM_CONDITIONS
    elif uri is not None:
        install_seq.append((20, MappingProxyType(install_params)))
    if uri is not None:
        install_seq.append((21, 2))
    install_seq.append((3, 15))
    firmware_parts = full_version(current, parts) or parts
    entries = {8: current}
    text_languages = MappingProxyType(
        {"en": MappingProxyType({component: MappingProxyType(entries)})}
    )
    return {
        "manifest_version": 1,
        "sequence_number": sequence_number,
        "components": (component,),
        "vendor_id": vendor_id,
        "class_id": class_id,
        "image_digest": image_digest,
        "image_digest_alg": ALG_SHA256,
        "image_size": image_size,
        "uri": uri,
        "firmware_version": format_version(firmware_parts),
        "version_parts": firmware_parts,
        "version_comparison": comparison,
        "use_before": use_before_at,
        "security_counter": security_counter,
        "payload_format": payload_format,
        "text": MappingProxyType({"current-version": current}),
        "reference_uri": None,
        "conditions": frozenset(conditions),
        "sequences": MappingProxyType(
            {
                "shared-sequence": tuple(shared_seq),
                "validate": _VALIDATE_SEQ,
                "invoke": _INVOKE_SEQ,
                "install": tuple(install_seq),
            }
        ),
        "text_languages": text_languages,
    }
