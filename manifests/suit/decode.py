"""Strict decoding of SUIT envelopes (draft-ietf-suit-manifest-37 + update-management-14).

Invariants enforced by :func:`decode_envelope` before it returns an :class:`Envelope`:

* the input is at most ``max_size`` bytes and is exactly one deterministically encoded,
  definite-length CBOR item, tagged 107; so is every bstr-wrapped SUIT structure inside it
  (COSE blocks: exactly one well-formed item, any encoding);
* container nesting, counted across bstr wrapping, stays within ``max_depth``;
* the authentication wrapper is the first member, its SUIT_Digest is SHA-256 and equals the
  digest of the manifest bstr *including its CBOR head*;
* every authentication block is a structurally valid detached COSE_Sign1 with a supported alg;
* the manifest is version 1, carries a sequence number and common block, and every command,
  condition, directive and parameter in every sequence is known and well typed (unknown ones
  may be critical, so they are refused, never skipped);
* each severable member is either inline in the manifest or held there by digest; a severed
  member present in the envelope matches its digest; the envelope carries no unauthenticated
  member.

Signatures are *not* checked here (that needs trust anchors): see :mod:`.verify`.

Envelopes in the exact byte layout :mod:`.build` writes are matched by :mod:`.fastpath` first
(same invariants, same result, several times faster); everything else is decoded here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from .cbor import CBORTag, bstr_header, check_map_order, decode_item
from .constants import (
    ALG_SHA256,
    C_COMPONENTS,
    C_SHARED_SEQUENCE,
    COND_IMAGE_MATCH,
    CONDITIONS,
    CUSTOM_CONDITIONS,
    DIGEST_ALGS,
    DIR_COPY,
    DIR_COPY_PARAMS,
    DIR_FETCH,
    DIR_OVERRIDE_MULTIPLE,
    DIR_OVERRIDE_PARAMETERS,
    DIR_RUN_SEQUENCE,
    DIR_SET_COMPONENT_INDEX,
    DIR_TRY_EACH,
    DIRECTIVES,
    ENV_AUTH,
    ENV_MANIFEST,
    M_COMMON,
    M_COSWID,
    M_MANIFEST_COMPONENT_ID,
    M_REFERENCE_URI,
    M_SEQUENCE,
    M_SET_VERSION,
    M_TEXT,
    M_VERSION,
    MANIFEST_KEY_NAMES,
    P_CLASS_ID,
    P_ENCRYPTION_INFO,
    P_IMAGE_DIGEST,
    P_IMAGE_SIZE,
    P_PAYLOAD_FORMAT,
    P_PRECURSOR_DIGESTS,
    P_SECURITY_COUNTER,
    P_SOURCE_COMPONENT,
    P_URI,
    P_USE_BEFORE,
    P_VENDOR_ID,
    P_VERSION,
    PARAMETERS,
    PAYLOAD_FORMATS,
    SEVERABLE,
    SHARED_DIRECTIVES,
    TAG_COSE_ENCRYPT,
    TAG_ENVELOPE,
    TEXT_COMPONENT_KEYS,
    TEXT_KEYS,
    UNSEVERABLE_SEQUENCES,
    VERSION_COMPARISONS,
)
from .cose import parse_sign1
from .errors import (
    SUITCommandNotAllowedError,
    SUITDigestAlgorithmError,
    SUITDigestMismatchError,
    SUITError,
    SUITInputError,
    SUITInternalError,
    SUITManifestVersionError,
    SUITMemberOrderError,
    SUITMissingKeyError,
    SUITNestingError,
    SUITSeverableError,
    SUITSizeError,
    SUITTagError,
    SUITTypeError,
    SUITUnknownCommandError,
    SUITUnknownKeyError,
    SUITUnknownParameterError,
    SUITValueError,
)
from .fastpath import decode_fast
from .model import (
    Envelope,
    Manifest,
    SeveredMember,
    SignatureBlock,
    format_version,
    full_version,
)

DEFAULT_MAX_SIZE = 1 << 20  # 1 MiB: a manifest is small; payloads travel separately
DEFAULT_MAX_DEPTH = 16  # containers, counted across bstr wrapping; real manifests use <= 8

_sha256 = hashlib.sha256
# Lookup order of parameters for the Manifest facts.
_FACT_ORDER = ("shared-sequence", "payload-fetch", "install", "validate", "load", "invoke")
_LANGUAGE_TAG = re.compile(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*")


# --- small typed checks ---------------------------------------------------------------------------


def _type_error(value: Any, where: str, message: str) -> SUITError:
    """A tag where a plain value belongs is a tag error; anything else a type error."""
    if type(value) is CBORTag:
        return SUITTagError(f"unexpected tag {value.tag}: {message}", path=where)
    return SUITTypeError(f"{message}, got {_kind(value)}", path=where)


def _want_bytes(value: Any, where: str, what: str = "value") -> bytes:
    if type(value) is not bytes:
        raise _type_error(value, where, f"{what} must be a byte string")
    return value


def _want_uint(value: Any, where: str, what: str = "value") -> int:
    if type(value) is not int:
        raise _type_error(value, where, f"{what} must be an unsigned integer")
    if value < 0:
        raise SUITValueError(f"{what} must not be negative ({value})", path=where)
    return value


def _want_map(value: Any, where: str, what: str = "value") -> dict[Any, Any]:
    if type(value) is not dict:
        raise _type_error(value, where, f"{what} must be a map")
    check_map_order(value, where)
    return value


def _want_list(value: Any, where: str, what: str = "value") -> list[Any]:
    if type(value) is not list:
        raise _type_error(value, where, f"{what} must be an array")
    return value


def _kind(value: Any) -> str:
    if type(value) is CBORTag:
        return f"tag {value.tag}"
    return {
        bytes: "byte string",
        str: "text string",
        int: "integer",
        bool: "boolean",
        list: "array",
        dict: "map",
        float: "float",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _reject_tag(value: Any, where: str) -> None:
    if type(value) is CBORTag:
        raise SUITTagError(f"unexpected tag {value.tag}", path=where)


def parse_digest(obj: Any, where: str) -> tuple[int, bytes]:
    """A SUIT_Digest ``[alg, bytes]``; the algorithm must be one this codec can compute."""
    _reject_tag(obj, where)
    digest = _want_list(obj, where, "SUIT_Digest")
    if len(digest) != 2:
        raise SUITValueError(f"SUIT_Digest must have 2 items, has {len(digest)}", path=where)
    alg, value = digest
    if type(alg) is not int:
        raise SUITTypeError(f"digest algorithm must be an integer, got {_kind(alg)}", path=where)
    spec = DIGEST_ALGS.get(alg)
    if spec is None:
        raise SUITDigestAlgorithmError(f"unsupported digest algorithm {alg}", path=where)
    _want_bytes(value, where, "digest")
    if len(value) != spec[1]:
        raise SUITValueError(
            f"{spec[0]} digest must be {spec[1]} bytes, is {len(value)}", path=where
        )
    return alg, value


def _digest_of(alg: int, data: bytes) -> bytes:
    return hashlib.new(DIGEST_ALGS[alg][0], data).digest()


# --- decoding context -----------------------------------------------------------------------------


class _Ctx:
    __slots__ = ("bucket", "conditions", "encryption", "max_depth", "params")

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.conditions: set[int] = set()
        self.encryption: list[Any] = []  # every encryption-info value, in order
        self.params: dict[str, dict[int, Any]] = {}  # sequence name -> first value per parameter
        self.bucket: dict[int, Any] = {}

    def enter(self, sequence: str) -> None:
        self.bucket = self.params.setdefault(sequence, {})


# --- parameters -----------------------------------------------------------------------------------
# Each check gets the parameter map's path and the key, and builds the full path only on error
# (this is the hot path of decoding).


def _pp(where: str, key: int) -> str:
    return f"{where}/{PARAMETERS[key]}"


def _p_vendor(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    if type(v) is CBORTag and v.tag == 112:  # cbor-pen (vendor id as a private enterprise number)
        _want_bytes(v.value, _pp(where, key), "cbor-pen")
        return v
    return _p_uuid(v, where, key, ctx, depth)


def _p_uuid(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    if type(v) is not bytes or len(v) != 16:
        _want_bytes(v, _pp(where, key))
        raise SUITValueError(f"UUID must be 16 bytes, is {len(v)}", path=_pp(where, key))
    return uuid.UUID(bytes=v)


def _p_digest(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    path = _pp(where, key)
    _want_bytes(v, path, "image-digest")
    return parse_digest(decode_item(v, path, ctx.max_depth - depth), path)


def _p_uint(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    if type(v) is int and v >= 0:
        return v
    return _want_uint(v, _pp(where, key))


def _p_int(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    if type(v) is not int:
        raise _type_error(v, _pp(where, key), "value must be an integer")
    return v


def _p_bool(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    if type(v) is not bool:
        raise _type_error(v, _pp(where, key), "value must be a boolean")
    return v


def _p_bytes(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    if type(v) is bytes:
        return v
    return _want_bytes(v, _pp(where, key))


def _p_text(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    if type(v) is not str:
        raise _type_error(v, _pp(where, key), "value must be a text string")
    return v


def _p_use_before(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    seconds = _p_uint(v, where, key, ctx, depth)
    try:
        return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise SUITValueError(
            f"use-before {seconds} is out of range", path=_pp(where, key)
        ) from None


def _version_value(v: Any, where: str) -> tuple[int, ...]:
    parts = _want_list(v, where, "version value")
    if not parts:
        raise SUITValueError("version value must not be empty", path=where)
    for part in parts:
        if type(part) is not int:
            raise SUITTypeError(f"version part must be an integer, got {_kind(part)}", path=where)
    if parts[0] < 0:
        raise SUITValueError("version must not start with a pre-release marker", path=where)
    return tuple(parts)


def _p_version(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    path = _pp(where, key)
    _want_bytes(v, path, "version")
    match = _want_list(decode_item(v, path, ctx.max_depth - depth), path, "version match")
    if len(match) != 2:
        raise SUITValueError("version match must be [comparison-type, value]", path=path)
    cmp, value = match
    if type(cmp) is not int:
        raise SUITTypeError(f"comparison type must be an integer, got {_kind(cmp)}", path=path)
    if cmp not in VERSION_COMPARISONS:
        raise SUITValueError(f"unknown version comparison type {cmp}", path=path)
    return cmp, _version_value(value, path)


def _p_wrapped_map(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    path = _pp(where, key)
    _want_bytes(v, path)
    inner = _want_map(decode_item(v, path, ctx.max_depth - depth), path)
    if not inner:
        raise SUITValueError("map must not be empty", path=path)
    for inner_key in inner:
        if type(inner_key) is not int:
            raise SUITTypeError(f"key must be an integer, got {_kind(inner_key)}", path=path)
    return MappingProxyType(inner)


def _p_payload_format(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    if v in PAYLOAD_FORMATS and type(v) is str:
        return v
    path = _pp(where, key)
    if type(v) is not str:
        raise _type_error(v, path, "payload format must be a text string")
    raise SUITValueError(
        f"payload format {v!r} is not a full binary image format {PAYLOAD_FORMATS}", path=path
    )


def _p_precursors(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    """``bstr .cbor [+ SUIT_Digest]``, SHA-256 only (what the device hashes its slot with)."""
    path = _pp(where, key)
    _want_bytes(v, path, "precursor-digests")
    items = _want_list(decode_item(v, path, ctx.max_depth - depth), path, "precursor digests")
    if not items:
        raise SUITValueError("precursor digests must not be empty", path=path)
    out = []
    for index, item in enumerate(items):
        alg, digest = parse_digest(item, f"{path}/{index}")
        if alg != ALG_SHA256:
            raise SUITDigestAlgorithmError("precursor digests must be SHA-256", path=path)
        out.append(digest)
    if len(set(out)) != len(out):
        raise SUITValueError("precursor digests list a digest twice", path=path)
    return tuple(out)


def _p_encryption_info(v: Any, where: str, key: int, ctx: _Ctx, depth: int) -> Any:
    """firmware-encryption-24: ``bstr .cbor SUIT_Encryption_Info``, and
    ``SUIT_Encryption_Info = #6.96(COSE_Encrypt)``. Decoded and shown; acting on it (decrypting)
    is not supported."""
    path = _pp(where, key)
    _want_bytes(v, path, "encryption-info")
    info = decode_item(v, path, ctx.max_depth - depth, canonical=False)
    if type(info) is not CBORTag or info.tag != TAG_COSE_ENCRYPT:
        raise _type_error(info, path, "encryption-info must be a COSE_Encrypt tagged 96")
    body = info.value
    if not isinstance(body, list | tuple) or len(body) != 4:
        raise SUITValueError("COSE_Encrypt must be an array of 4 items", path=path)
    ctx.encryption.append(info)
    return info


_PARAM_CHECKS: dict[int, Callable[[Any, str, int, _Ctx, int], Any]] = {
    P_VENDOR_ID: _p_vendor,
    P_CLASS_ID: _p_uuid,
    P_IMAGE_DIGEST: _p_digest,
    P_USE_BEFORE: _p_use_before,
    5: _p_uint,  # component-slot
    12: _p_bool,  # strict-order
    13: _p_bool,  # soft-failure
    P_IMAGE_SIZE: _p_uint,
    18: _p_bytes,  # content
    P_ENCRYPTION_INFO: _p_encryption_info,
    P_URI: _p_text,
    22: _p_uint,  # source-component
    23: _p_bytes,  # invoke-args
    24: _p_uuid,  # device-id
    25: _p_bytes,  # fetch-arguments
    26: _p_uint,  # minimum-battery
    27: _p_int,  # update-priority
    P_VERSION: _p_version,
    29: _p_wrapped_map,  # wait-info
    30: _p_wrapped_map,  # component-metadata
    P_SECURITY_COUNTER: _p_uint,
    P_PAYLOAD_FORMAT: _p_payload_format,
    P_PRECURSOR_DIGESTS: _p_precursors,
}
if _PARAM_CHECKS.keys() != PARAMETERS.keys():  # pragma: no cover - a table edit went wrong
    raise ImportError("parameter checks and parameter names disagree")


def _parse_params(
    obj: Any, where: str, ctx: _Ctx, depth: int, record: bool = True
) -> MappingProxyType[int, Any]:
    params = _want_map(obj, where, "parameters")
    if not params:
        raise SUITValueError("parameter map must not be empty", path=where)
    out = {}
    bucket = ctx.bucket
    inner = depth + 1
    for key, value in params.items():
        check = _PARAM_CHECKS.get(key) if type(key) is int else None
        if check is None:
            if type(key) is not int:
                raise SUITTypeError(
                    f"parameter key must be an integer, got {_kind(key)}", path=where
                )
            raise SUITUnknownParameterError(f"unknown parameter {key}", path=where)
        parsed = check(value, where, key, ctx, inner)
        out[key] = parsed
        if record and key not in bucket:
            bucket[key] = parsed
    return MappingProxyType(out)


# --- command sequences ----------------------------------------------------------------------------

_CONDITION, _CUSTOM_CONDITION, _DIRECTIVE = 0, 1, 2
_COMMAND_KIND: dict[int, int] = {
    **{code: _CONDITION for code in CONDITIONS},
    **{code: _CUSTOM_CONDITION for code in CUSTOM_CONDITIONS},
    **{code: _DIRECTIVE for code in DIRECTIVES},
}


def _parse_sequence_bstr(
    value: Any, where: str, ctx: _Ctx, depth: int, shared: bool
) -> tuple[tuple[int, Any], ...]:
    if type(value) is not bytes:
        _want_bytes(value, where, "command sequence")
    return _parse_commands(
        decode_item(value, where, ctx.max_depth - depth), where, ctx, depth, shared
    )


def _parse_commands(
    seq: Any, where: str, ctx: _Ctx, depth: int, shared: bool
) -> tuple[tuple[int, Any], ...]:
    if type(seq) is not list:
        _reject_tag(seq, where)
        _want_list(seq, where, "command sequence")
    n = len(seq)
    if not n or n % 2:
        raise SUITValueError(
            f"command sequence must be non-empty (command, argument) pairs, has {n} items",
            path=where,
        )
    out = []
    inner = depth + 1
    conditions = ctx.conditions
    for i in range(0, n, 2):
        cmd = seq[i]
        arg = seq[i + 1]
        kind = _COMMAND_KIND.get(cmd) if type(cmd) is int else None
        if kind is None:
            if type(cmd) is not int:
                raise SUITTypeError(
                    f"command must be an integer, got {_kind(cmd)}", path=f"{where}[{i}]"
                )
            raise SUITUnknownCommandError(f"unknown command {cmd}", path=f"{where}[{i}]")
        if kind == _DIRECTIVE:
            if shared and cmd not in SHARED_DIRECTIVES:
                raise SUITCommandNotAllowedError(
                    f"directive {cmd} ({DIRECTIVES[cmd]}) is not allowed in the shared sequence",
                    path=f"{where}[{i}]",
                )
            if cmd == DIR_OVERRIDE_PARAMETERS:
                arg = _parse_params(arg, f"{where}[{i + 1}]", ctx, inner)
            elif cmd in _STRUCTURED_DIRECTIVES:
                arg = _parse_directive(cmd, arg, f"{where}[{i + 1}]", ctx, inner, shared)
            elif type(arg) is not int or arg < 0:
                _rep_policy(arg, f"{where}[{i + 1}]")
        else:
            if kind == _CUSTOM_CONDITION and shared:
                raise SUITCommandNotAllowedError(
                    f"custom command {cmd} is not allowed in the shared sequence",
                    path=f"{where}[{i}]",
                )
            if type(arg) is not int or arg < 0:
                _rep_policy(arg, f"{where}[{i + 1}]")
            conditions.add(cmd)
        out.append((cmd, arg))
    return tuple(out)


def _rep_policy(arg: Any, where: str) -> int:
    if type(arg) is not int or arg < 0:
        raise _type_error(arg, where, "reporting policy must be an unsigned integer")
    return arg


_STRUCTURED_DIRECTIVES = frozenset(
    {
        DIR_SET_COMPONENT_INDEX,
        DIR_RUN_SEQUENCE,
        DIR_TRY_EACH,
        DIR_OVERRIDE_MULTIPLE,
        DIR_COPY_PARAMS,
    }
)


def _parse_directive(cmd: int, arg: Any, where: str, ctx: _Ctx, depth: int, shared: bool) -> Any:
    if cmd == DIR_SET_COMPONENT_INDEX:
        if arg is True or (type(arg) is int and arg >= 0):
            return arg
        if type(arg) is list and arg and all(type(x) is int and x >= 0 for x in arg):
            return tuple(arg)
        raise SUITTypeError(
            "component index must be an unsigned integer, true or an array of them", path=where
        )
    if cmd == DIR_RUN_SEQUENCE:
        return _parse_sequence_bstr(arg, where + "/run-sequence", ctx, depth, shared)
    if cmd == DIR_TRY_EACH:
        options = _want_list(arg, where, "try-each argument")
        body = options[:-1] if options and options[-1] is None else options
        if len(body) < 2:
            raise SUITValueError("try-each needs at least two command sequences", path=where)
        return tuple(
            _parse_sequence_bstr(option, f"{where}/try-each[{j}]", ctx, depth + 1, shared)
            for j, option in enumerate(body)
        )
    if cmd == DIR_OVERRIDE_MULTIPLE:
        multiple = _want_map(arg, where, "override-multiple argument")
        if not multiple:
            raise SUITValueError("override-multiple must not be empty", path=where)
        out = {}
        for index, params in multiple.items():
            _want_uint(index, where, "component index")
            out[index] = _parse_params(params, f"{where}/{index}", ctx, depth + 1, record=False)
        return MappingProxyType(out)
    # DIR_COPY_PARAMS
    copies = _want_map(arg, where, "copy-params argument")
    if not copies:
        raise SUITValueError("copy-params must not be empty", path=where)
    for index, keys in copies.items():
        _want_uint(index, where, "component index")
        names = _want_list(keys, f"{where}/{index}", "parameter list")
        if not names or not all(type(k) is int for k in names):
            raise SUITTypeError("parameter list must be non-empty integers", path=where)
    return MappingProxyType({k: tuple(v) for k, v in copies.items()})


# --- text -----------------------------------------------------------------------------------------


def _parse_text(obj: Any, where: str) -> tuple[dict[str, str], dict[str, Any]]:
    languages = _want_map(obj, where, "suit-text")
    if not languages:
        raise SUITValueError("suit-text must name at least one language", path=where)
    flat: dict[str, str] = {}
    frozen: dict[str, Any] = {}
    for index, (tag, lmap) in enumerate(languages.items()):
        if type(tag) is not str or not _LANGUAGE_TAG.fullmatch(tag):
            raise SUITTypeError(f"language tag must be text like 'en-US', got {tag!r}", path=where)
        lwhere = f"{where}/{tag}"
        _want_map(lmap, lwhere, "language map")
        lfrozen: dict[Any, Any] = {}
        for key, value in lmap.items():
            if type(key) is int:
                if type(value) is not str:
                    raise SUITTypeError(f"text {key} must be a text string", path=lwhere)
                if index == 0:
                    flat.setdefault(TEXT_KEYS.get(key, f"key-{key}"), value)
                lfrozen[key] = value
            elif type(key) is tuple:
                if not all(type(part) is bytes for part in key):
                    raise SUITTypeError("component identifier must hold byte strings", path=lwhere)
                cwhere = f"{lwhere}/[{','.join(p.hex() for p in key)}]"
                entries = _want_map(value, cwhere, "component text")
                for ckey, cvalue in entries.items():
                    if type(ckey) is not int or type(cvalue) is not str:
                        raise SUITTypeError("component text must map integers to text", path=cwhere)
                    if index == 0:
                        name = TEXT_COMPONENT_KEYS.get(ckey, f"component-key-{ckey}")
                        flat.setdefault(name, cvalue)
                lfrozen[key] = MappingProxyType(entries)
            else:
                raise SUITTypeError(
                    f"text key must be an integer or component id, got {_kind(key)}", path=lwhere
                )
        frozen[tag] = MappingProxyType(lfrozen)
    return flat, frozen


# --- manifest -------------------------------------------------------------------------------------


def _parse_components(value: Any, where: str) -> tuple[tuple[bytes, ...], ...]:
    comps = _want_list(value, where, "components")
    if not comps:
        raise SUITValueError("components must not be empty", path=where)
    out = []
    for i, comp in enumerate(comps):
        if type(comp) is not list:
            _want_list(comp, f"{where}[{i}]", "component identifier")
        for j, part in enumerate(comp):
            if type(part) is not bytes:
                _want_bytes(part, f"{where}[{i}][{j}]", "component identifier part")
        out.append(tuple(comp))
    return tuple(out)


def _parse_manifest(
    data: bytes, envmap: dict[Any, Any], ctx: _Ctx, severed_out: dict[str, SeveredMember]
) -> Manifest:
    where = "envelope/manifest"
    obj = decode_item(data, where, ctx.max_depth - 1)
    if type(obj) is not dict:
        _reject_tag(obj, where)
    m = _want_map(obj, where, "manifest")
    for key in m:
        if type(key) is not int or key not in MANIFEST_KEY_NAMES:
            raise SUITUnknownKeyError(f"unknown manifest member {key!r}", path=where)
    for key in (M_VERSION, M_SEQUENCE, M_COMMON):
        if key not in m:
            raise SUITMissingKeyError(
                f"manifest has no {MANIFEST_KEY_NAMES[key]} ({key})", path=where
            )
    version = m[M_VERSION]
    if type(version) is not int:
        raise SUITTypeError(
            f"manifest-version must be an integer, got {_kind(version)}",
            path=where + "/manifest-version",
        )
    if version != 1:
        raise SUITManifestVersionError(
            f"manifest version {version} is not supported (only 1)",
            path=where + "/manifest-version",
        )
    sequence_number = m[M_SEQUENCE]
    if type(sequence_number) is not int or sequence_number < 0:
        _want_uint(sequence_number, where + "/manifest-sequence-number", "sequence number")

    depth = 2  # envelope map + manifest map
    cwhere = where + "/common"
    common = _want_map(
        decode_item(_want_bytes(m[M_COMMON], cwhere, "common"), cwhere, ctx.max_depth - depth),
        cwhere,
        "common",
    )
    components: tuple[tuple[bytes, ...], ...] = ()
    sequences: dict[str, tuple[tuple[int, Any], ...]] = {}
    for key, value in common.items():
        if type(key) is not int:
            raise SUITUnknownKeyError(f"unknown common member {key!r}", path=cwhere)
        if key == C_COMPONENTS:
            components = _parse_components(value, cwhere + "/components")
        elif key == C_SHARED_SEQUENCE:
            ctx.enter("shared-sequence")
            sequences["shared-sequence"] = _parse_sequence_bstr(
                value, cwhere + "/shared-sequence", ctx, depth + 1, shared=True
            )
        else:
            raise SUITUnknownKeyError(f"unknown common member {key!r}", path=cwhere)

    manifest_component_id = None
    if M_MANIFEST_COMPONENT_ID in m:
        manifest_component_id = _parse_components(
            [m[M_MANIFEST_COMPONENT_ID]], where + "/manifest-component-id"
        )[0]

    reference_uri = m.get(M_REFERENCE_URI)
    if reference_uri is not None and type(reference_uri) is not str:
        raise SUITTypeError("reference-uri must be a text string", path=where + "/reference-uri")

    set_version = None
    if M_SET_VERSION in m:
        vwhere = where + "/set-version"
        raw_version = _want_bytes(m[M_SET_VERSION], vwhere, "set-version")
        set_version = _version_value(
            decode_item(raw_version, vwhere, ctx.max_depth - depth), vwhere
        )

    for key, name in UNSEVERABLE_SEQUENCES.items():
        if key in m:
            ctx.enter(name)
            sequences[name] = _parse_sequence_bstr(
                m[key], f"{where}/{name}", ctx, depth, shared=False
            )

    text: dict[str, str] = {}
    languages: dict[str, Any] = {}
    coswid: Any = None
    for key, name in SEVERABLE.items():
        in_envelope = key in envmap
        if key not in m:
            if in_envelope:
                raise SUITSeverableError(
                    f"envelope carries {name} but the manifest holds no digest for it",
                    path=f"envelope/{name}",
                )
            continue
        value = m[key]
        content: bytes | None
        content_where = f"{where}/{name}"
        content_depth = depth
        if type(value) is bytes:
            if in_envelope:
                raise SUITSeverableError(
                    f"{name} is both in the manifest and severed into the envelope",
                    path=f"envelope/{name}",
                )
            content = value
        elif type(value) is list:
            alg, digest = parse_digest(value, content_where)
            content = None
            if in_envelope:
                ewhere = f"envelope/{name}"
                severed = _want_bytes(envmap[key], ewhere, name)
                if _digest_of(alg, bstr_header(len(severed)) + severed) != digest:
                    raise SUITDigestMismatchError(
                        f"severed {name} does not match its digest in the manifest", path=ewhere
                    )
                content = severed
                content_where = ewhere
                content_depth = 1
            severed_out[name] = SeveredMember(
                name=name, key=key, digest_alg=alg, digest=digest, present=content is not None
            )
        else:
            raise SUITTypeError(
                f"{name} must be a byte string or a SUIT_Digest, got {_kind(value)}",
                path=content_where,
            )
        if content is None:
            continue
        if key == M_TEXT:
            tobj = decode_item(content, content_where, ctx.max_depth - content_depth)
            text, languages = _parse_text(tobj, content_where)
        elif key == M_COSWID:
            # update-management-14: bstr .cbor concise-swid-tag (RFC 9393), kept as decoded;
            # CoSWID is not deterministic CBOR by requirement, only one well-formed map.
            cobj = decode_item(
                content, content_where, ctx.max_depth - content_depth, canonical=False
            )
            if type(cobj) is not dict:
                raise _type_error(cobj, content_where, "suit-coswid must be a CoSWID map")
            coswid = MappingProxyType(cobj)
        else:
            ctx.enter(name)
            sequences[name] = _parse_sequence_bstr(
                content, content_where, ctx, content_depth, shared=False
            )

    facts: dict[int, Any] = {}
    for name in _FACT_ORDER:
        found = ctx.params.get(name)
        if found:
            for pkey, pvalue in found.items():
                if pkey not in facts:
                    facts[pkey] = pvalue

    vendor = facts.get(P_VENDOR_ID)
    digest_fact = facts.get(P_IMAGE_DIGEST)
    version_fact = facts.get(P_VERSION)
    parts = set_version if set_version is not None else (version_fact[1] if version_fact else None)
    current = text.get("current-version")
    if current is not None and parts is not None:
        parts = full_version(current, parts) or parts
    firmware_version = format_version(parts) if parts is not None else None
    return Manifest(
        manifest_version=version,
        sequence_number=sequence_number,
        components=components,
        vendor_id=vendor if type(vendor) is uuid.UUID else None,
        class_id=facts.get(P_CLASS_ID),
        image_digest=digest_fact[1] if digest_fact else None,
        image_digest_alg=digest_fact[0] if digest_fact else None,
        image_size=facts.get(P_IMAGE_SIZE),
        uri=facts.get(P_URI),
        firmware_version=firmware_version,
        version_parts=parts,
        version_comparison=VERSION_COMPARISONS[version_fact[0]] if version_fact else None,
        use_before=facts.get(P_USE_BEFORE),
        security_counter=facts.get(P_SECURITY_COUNTER),
        payload_format=facts.get(P_PAYLOAD_FORMAT),
        text=MappingProxyType(text),
        reference_uri=reference_uri,
        conditions=frozenset(ctx.conditions),
        sequences=MappingProxyType(sequences),
        text_languages=MappingProxyType(languages),
        raw=data,
        set_version=set_version,
        encryption_info=tuple(ctx.encryption),
        manifest_component_id=manifest_component_id,
        coswid=coswid,
        precursor_digests=tuple(
            dict.fromkeys(
                (*facts.get(P_PRECURSOR_DIGESTS, ()), *_draft_precursors(sequences.get("install")))
            )
        ),
    )


def _draft_precursors(install: tuple[tuple[int, Any], ...] | None) -> tuple[bytes, ...]:
    """The SHA-256 digests of the sources a delta may be applied to, in the drafts' form: a
    fetch (or copy) into a component whose suit-parameter-source-component names another
    component on which suit-condition-image-match with a SHA-256 image digest already passed in
    the same path of the install sequence (each try-each option is its own path). A source that
    was not conditioned before the fetch names no precursor: a device must not patch it."""
    found: list[bytes] = []

    def run(commands: tuple[tuple[int, Any], ...], state: dict[str, Any]) -> None:
        for cmd, arg in commands:
            index = state["index"]
            if cmd == DIR_SET_COMPONENT_INDEX:
                state["index"] = arg if type(arg) is int else None
            elif cmd == DIR_OVERRIDE_PARAMETERS and index is not None:
                state["params"].setdefault(index, {}).update(arg)
                state["matched"].pop(index, None)  # a later override voids an earlier match
            elif cmd == COND_IMAGE_MATCH and index is not None:
                digest = state["params"].get(index, {}).get(P_IMAGE_DIGEST)
                if digest is not None and digest[0] == ALG_SHA256:
                    state["matched"][index] = digest[1]
            elif cmd in (DIR_FETCH, DIR_COPY) and index is not None:
                source = state["params"].get(index, {}).get(P_SOURCE_COMPONENT)
                if source is not None and source != index and source in state["matched"]:
                    found.append(state["matched"][source])
            elif cmd == DIR_TRY_EACH:
                for option in arg:
                    run(option, _copy_state(state))
            elif cmd == DIR_RUN_SEQUENCE:
                run(arg, state)

    if install:
        run(install, {"index": 0, "params": {}, "matched": {}})
    return tuple(found)


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": state["index"],
        "params": {k: dict(v) for k, v in state["params"].items()},
        "matched": dict(state["matched"]),
    }


# --- envelope -------------------------------------------------------------------------------------


def _decode_envelope(data: bytes, max_depth: int) -> Envelope:
    top = decode_item(data, "envelope", max_depth)
    if type(top) is not CBORTag:
        if type(top) is dict:
            raise SUITTagError("untagged SUIT_Envelope (tag 107 missing)", path="envelope")
        raise SUITTagError("not tagged 107 (SUIT_Envelope_Tagged)", path="envelope")
    if top.tag != TAG_ENVELOPE:
        raise SUITTagError(f"tag {top.tag} is not 107 (SUIT_Envelope_Tagged)", path="envelope")
    env = top.value
    if type(env) is not dict:
        raise SUITTypeError(f"envelope must be a map, got {_kind(env)}", path="envelope")
    payloads: dict[str, bytes] = {}
    # Key types first: a CBOR simple value or float compares equal to an integer key in Python.
    for key, value in env.items():
        if type(key) is int:
            if key in (ENV_AUTH, ENV_MANIFEST):
                continue
            if key in SEVERABLE:
                _want_bytes(value, f"envelope/{SEVERABLE[key]}", SEVERABLE[key])
                continue
        elif type(key) is str:
            payloads[key] = _want_bytes(value, f"envelope/{key}", "integrated payload")
            continue
        raise SUITUnknownKeyError(f"unknown envelope member {key!r}", path="envelope")
    if ENV_AUTH not in env:
        raise SUITMissingKeyError("no authentication-wrapper (2)", path="envelope")
    if ENV_MANIFEST not in env:
        raise SUITMissingKeyError("no manifest (3)", path="envelope")
    if next(iter(env)) != ENV_AUTH:
        raise SUITMemberOrderError(
            "authentication-wrapper must be the first member", path="envelope"
        )
    check_map_order(env, "envelope")

    # authentication wrapper
    awhere = "envelope/authentication-wrapper"
    auth_raw = _want_bytes(env[ENV_AUTH], awhere, "authentication-wrapper")
    auth = decode_item(auth_raw, awhere, max_depth - 1)
    if type(auth) is not list:
        _reject_tag(auth, awhere)
        _want_list(auth, awhere, "authentication-wrapper")
    if not auth:
        raise SUITValueError("authentication-wrapper holds no digest", path=awhere)
    dwhere = awhere + "/digest"
    digest_bstr = _want_bytes(auth[0], dwhere, "SUIT_Digest")
    digest_alg, digest = parse_digest(decode_item(digest_bstr, dwhere, max_depth - 2), dwhere)
    if digest_alg != ALG_SHA256:
        raise SUITDigestAlgorithmError(
            f"manifest digest must be SHA-256 (-16), is {digest_alg}", path=dwhere
        )
    signatures: list[SignatureBlock] = []
    for i, block in enumerate(auth[1:]):
        swhere = f"{awhere}/signature[{i}]"
        signatures.append(
            parse_sign1(
                _want_bytes(block, swhere, "authentication block"), swhere, max_depth - 2, i
            )
        )

    # manifest: the digest covers the bstr head too
    manifest_bytes = _want_bytes(env[ENV_MANIFEST], "envelope/manifest", "manifest")
    computed = _sha256(bstr_header(len(manifest_bytes)) + manifest_bytes).digest()
    if computed != digest:
        raise SUITDigestMismatchError(
            "manifest does not match the digest in the authentication wrapper", path=dwhere
        )
    severed: dict[str, SeveredMember] = {}
    manifest = _parse_manifest(manifest_bytes, env, _Ctx(max_depth), severed)
    return Envelope(
        raw=data,
        manifest_bytes=manifest_bytes,
        manifest_digest=computed,
        digest_bstr=digest_bstr,
        digest_alg=digest_alg,
        signatures=tuple(signatures),
        manifest=manifest,
        severed=MappingProxyType(severed),
        integrated_payloads=MappingProxyType(payloads),
    )


# Decoded envelopes are immutable values of their exact bytes, and the product decodes the same
# stored envelope again and again (approvals, every dispatch's policy check), so successful
# decodes are remembered. The key is the complete byte string (dict lookup compares all bytes),
# plus the depth limit; the size limit is checked before the lookup. FIFO-bounded.
_CACHE: dict[tuple[bytes, int], Envelope] = {}
_CACHE_MAX = 256
_CACHE_ITEM_MAX = 64 * 1024  # larger envelopes (integrated payloads) are not kept: <= 16 MiB total


def clear_decode_cache() -> None:
    """Forget remembered decodes (tests and benchmarks use it to measure cold decoding)."""
    _CACHE.clear()


def decode_envelope(
    data: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
    cache: bool = True,
) -> Envelope:
    """Decode and structurally verify a tagged SUIT envelope (see module docstring).

    Raises only :class:`SUITError` subclasses; signatures are checked by ``verify_envelope``.
    The result is read-only (tuples, frozensets and mapping proxies), so it can be shared.
    """
    try:
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise SUITTypeError(
                    f"envelope must be bytes, got {type(data).__name__}", path="envelope"
                )
            data = bytes(data)
        if len(data) > max_size:
            raise SUITSizeError(
                f"{len(data)} bytes exceeds the limit of {max_size}", path="envelope"
            )
        if type(max_depth) is not int or max_depth < 1:
            raise SUITNestingError(f"max_depth must be a positive integer, got {max_depth!r}")
        cache = cache and len(data) <= _CACHE_ITEM_MAX
        if cache:
            key = (data, max_depth)
            hit = _CACHE.get(key)
            if hit is not None:
                return hit
        # The product's own layout is matched byte for byte; anything else (or any doubt) takes
        # the general path, which also names the problem when there is one.
        envelope = decode_fast(data, max_depth) or _decode_envelope(data, max_depth)
        if cache:
            if len(_CACHE) >= _CACHE_MAX:
                # Another thread may evict concurrently; losing that race is harmless.
                with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                    del _CACHE[next(iter(_CACHE))]
            _CACHE[key] = envelope
        return envelope
    except SUITError:
        raise
    except Exception as exc:  # a codec bug must still surface as a decode error
        raise SUITInternalError(
            f"unexpected {type(exc).__name__} while decoding: {exc}", path="envelope"
        ) from exc


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def read_envelope_input(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """The envelope bytes from raw CBOR or from hex text (whitespace ignored).

    Raw CBOR is recognised by its tag-107 head (``d8 6b``); anything else must be hex.
    """
    try:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SUITInputError(f"input must be bytes, got {type(data).__name__}", path="input")
        raw = bytes(data)
        if raw[:2] == b"\xd8\x6b":
            return raw
        if raw and 0xA0 <= raw[0] <= 0xBF:  # a CBOR map head is never hex text
            raise SUITTagError("untagged SUIT_Envelope (tag 107 missing)", path="input")
        text = b"".join(raw.split())
        if len(text) > 2 * max_size + 2:
            raise SUITSizeError(f"hex input exceeds the limit of {max_size} bytes", path="input")
        if text[:2] in (b"0x", b"0X"):
            text = text[2:]
        if not text:
            raise SUITInputError("input is empty", path="input")
        if len(text) % 2 or not _HEX_DIGITS.issuperset(text):
            raise SUITInputError(
                "input is neither CBOR of a tagged SUIT envelope nor hex text", path="input"
            )
        return bytes.fromhex(text.decode("ascii"))
    except SUITError:
        raise
    except Exception as exc:
        raise SUITInternalError(
            f"unexpected {type(exc).__name__} reading input", path="input"
        ) from exc
