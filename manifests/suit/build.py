"""Building and signing SUIT envelopes for the product's one shape of update.

The manifest (deterministic CBOR) for a :class:`ManifestParams`::

    {1: 1, 2: seq,
     3: << {2: [[component...]],
            4: << [20, {1: vendor-id, 2: class-id, 3: << [-16, digest] >>, 4?: use-before,
                        14: size, 28?: << [cmp, [major, minor?, revision?]] >>},
                   1, 15, 2, 15, (4, 15)?, (28, 15)?] >>} >>,
     6: << [major, minor?, revision?] >>,                    / suit-set-version /
     7: << [3, 15] >>,                                       / validate: image-match /
     9: << [23, 2] >>,                                       / invoke /
     20: << install >>,
     23: << {"en": {..., [component...]: {8: "1.2.3+42", ...}}} >>}   / text: current-version /

    install, profile "extended":
        [20, {21?: uri, -257: security-counter, -258: payload-format},
         -257, 15, -258, 15, (21, 2)?, 3, 15]
    install, profile "standard" (no custom keys):
        [(20, {21: uri}, 21, 2)?, 3, 15]

    with precursors (a delta may apply, either profile; draft form, docs/suit.md "Deltas"),
    components gain the source [component..., "running"] and the fetch becomes:
        [..., 15, [<< [12, 1, 20, {3: << precursor digest >>}, 3, 15,       / per precursor /
                       12, 0, 20, {22: 1}, 21, 2] >>, ...,
                    << [12, 0, (21, 2)?] >>],                               / full image /
         12, 0, 3, 15]

Custom parameters never go into the shared sequence (draft-ietf-suit-manifest-37,
suit-parameter-custom). suit-set-version holds at most three integers (update-management-14: no
build metadata); the build number travels in suit-text-current-version with the whole version.

Install or text can be severed into the envelope (``sever=``), leaving their SUIT_Digest.
``integrate_payload`` adds the payload to an envelope under the manifest's fragment URI
(draft-ietf-suit-manifest, "Integrated Payloads"), leaving every signed byte as it was.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from .cbor import CBORTag, decode_item, dumps, encode_bstr
from .constants import (
    ALG_SHA256,
    C_COMPONENTS,
    C_SHARED_SEQUENCE,
    COND_CLASS_ID,
    COND_IMAGE_MATCH,
    COND_PAYLOAD_FORMAT,
    COND_SECURITY_COUNTER,
    COND_USE_BEFORE,
    COND_VENDOR_ID,
    COND_VERSION,
    DIR_FETCH,
    DIR_INVOKE,
    DIR_OVERRIDE_PARAMETERS,
    DIR_SET_COMPONENT_INDEX,
    DIR_TRY_EACH,
    ENV_AUTH,
    ENV_MANIFEST,
    M_COMMON,
    M_INSTALL,
    M_INVOKE,
    M_SEQUENCE,
    M_SET_VERSION,
    M_TEXT,
    M_VALIDATE,
    M_VERSION,
    P_CLASS_ID,
    P_ENCRYPTION_INFO,
    P_IMAGE_DIGEST,
    P_IMAGE_SIZE,
    P_PAYLOAD_FORMAT,
    P_SECURITY_COUNTER,
    P_SOURCE_COMPONENT,
    P_URI,
    P_USE_BEFORE,
    P_VENDOR_ID,
    P_VERSION,
    PAYLOAD_FORMATS,
    PROFILE_EXTENDED,
    PROFILES,
    SEVERABLE,
    SOURCE_SLOT,
    TAG_ENVELOPE,
    TEXT_COMPONENT_KEYS,
    TEXT_CURRENT_VERSION,
    TEXT_KEYS,
    TEXT_LANGUAGE,
    VERSION_COMPARISON_CODES,
)
from .cose import parse_sign1, sign1
from .decode import DEFAULT_MAX_DEPTH, DEFAULT_MAX_SIZE, decode_envelope, parse_digest
from .encryption import SUITEncryptionError, recipients_of
from .errors import (
    SUITDigestMismatchError,
    SUITError,
    SUITInternalError,
    SUITParamsError,
    SUITValueError,
)
from .keys import key_info
from .model import ManifestParams

_UINT64 = 1 << 64
_VERSION = re.compile(r"(\d{1,19})(?:\.(\d{1,19}))?(?:\.(\d{1,19}))?(?:\+(\d{1,19}))?")
_REP_CONDITION = 15  # report success and failure (records and sysinfo), as the draft's examples
_REP_DIRECTIVE = 2
_TEXT_NAMES = {name: key for key, name in TEXT_KEYS.items()}
_TEXT_COMPONENT_NAMES = {name: key for key, name in TEXT_COMPONENT_KEYS.items()}
_SEVER_NAMES = {name: key for key, name in SEVERABLE.items()}


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; ``"1.2.3+4"`` -> ``(1, 2, 3, 4)`` (MCUboot's build number is
    part of its ordering, so it is a fourth integer; missing minor/revision are 0 then).

    This is the whole version; suit-set-version carries only ``set_version_parts`` of it."""
    match = _VERSION.fullmatch(text) if type(text) is str else None
    if match is None:
        raise SUITParamsError(f"version {text!r} is not major[.minor[.revision]][+build]")
    major, minor, revision, build = match.groups()
    parts: tuple[int, ...]
    if build is not None:
        parts = (int(major), int(minor or 0), int(revision or 0), int(build))
    else:
        parts = tuple(int(p) for p in (major, minor, revision) if p is not None)
    if any(p >= 1 << 63 for p in parts):
        raise SUITParamsError(f"version {text!r} has a part out of range")
    return parts


def set_version_parts(parts: tuple[int, ...]) -> tuple[int, ...]:
    """The 1 to 3 integers suit-set-version carries (the build number, a 4th part, is dropped:
    update-management-14 forbids build metadata there)."""
    return parts[:3]


_SOURCE_INDEX = 1  # the delta source's index in components


def source_component_id(component_id: Sequence[bytes]) -> tuple[bytes, ...]:
    """The id of the delta source component: the running image slot of ``component_id``."""
    return (*component_id, SOURCE_SLOT)


def _uint(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value < _UINT64:
        raise SUITParamsError(f"{name} must be an integer in 0..2**64-1, got {value!r}")
    return value


def _check_params(p: ManifestParams) -> None:
    if not isinstance(p, ManifestParams):
        raise SUITParamsError(f"expected ManifestParams, got {type(p).__name__}")
    if not isinstance(p.vendor_id, uuid.UUID) or not isinstance(p.class_id, uuid.UUID):
        raise SUITParamsError("vendor_id and class_id must be uuid.UUID")
    _uint(p.sequence_number, "sequence_number")
    _uint(p.security_counter, "security_counter")
    _uint(p.image_size, "image_size")
    if type(p.image_digest) is not bytes or len(p.image_digest) != 32:
        raise SUITParamsError("image_digest must be the 32-byte SHA-256 of the payload")
    if p.uri is not None and (type(p.uri) is not str or not p.uri):
        raise SUITParamsError("uri must be a non-empty string or None")
    if p.use_before is not None:
        if not isinstance(p.use_before, dt.datetime) or p.use_before.utcoffset() is None:
            raise SUITParamsError("use_before must be a timezone-aware datetime")
        if p.use_before.timestamp() < 0:
            raise SUITParamsError("use_before must not be before 1970")
    if not isinstance(p.component_id, tuple | list) or not all(
        type(part) is bytes for part in p.component_id
    ):
        raise SUITParamsError("component_id must be a tuple of bytes")
    if p.payload_format not in PAYLOAD_FORMATS:
        raise SUITParamsError(
            f"payload_format {p.payload_format!r} is not one of {PAYLOAD_FORMATS} "
            "(only full binary images are installed)"
        )
    if p.version_comparison is not None and p.version_comparison not in VERSION_COMPARISON_CODES:
        raise SUITParamsError(
            f"version_comparison must be one of {sorted(VERSION_COMPARISON_CODES)} or None"
        )
    if p.text is not None:
        if not isinstance(p.text, dict):
            raise SUITParamsError("text must be a dict of text fields")
        for name, value in p.text.items():
            if name not in _TEXT_NAMES and name not in _TEXT_COMPONENT_NAMES:
                raise SUITParamsError(f"unknown text field {name!r}")
            if type(value) is not str:
                raise SUITParamsError(f"text field {name!r} must be a string")
        current = p.text.get("current-version")
        if current is not None and current != p.version:
            raise SUITParamsError(
                f"text current-version {current!r} is not the version {p.version!r} "
                "(the builder writes it from the version)"
            )
    if p.profile not in PROFILES:
        raise SUITParamsError(f"profile {p.profile!r} is not one of {PROFILES}")
    if p.encryption_info is not None:
        if type(p.encryption_info) is not bytes:
            raise SUITParamsError("encryption_info must be the encoded SUIT_Encryption_Info")
        try:
            recipients_of(p.encryption_info)
        except SUITEncryptionError as exc:
            raise SUITParamsError(f"encryption_info: {exc}") from None
    if not isinstance(p.precursor_digests, tuple) or not all(
        type(d) is bytes and len(d) == 32 for d in p.precursor_digests
    ):
        raise SUITParamsError("precursor_digests must be a tuple of 32-byte SHA-256 digests")
    if len(set(p.precursor_digests)) != len(p.precursor_digests):
        raise SUITParamsError("precursor_digests lists a digest twice")


def _sequence(*commands: Any) -> bytes:
    return dumps(list(commands))


def _members(p: ManifestParams) -> dict[int, bytes]:
    """Manifest member key -> encoded value (bstr contents for the wrapped members)."""
    _check_params(p)
    version = parse_version(p.version)
    set_version = set_version_parts(version)
    shared_params: dict[int, Any] = {
        P_VENDOR_ID: p.vendor_id.bytes,
        P_CLASS_ID: p.class_id.bytes,
        P_IMAGE_DIGEST: dumps([ALG_SHA256, p.image_digest]),
        P_IMAGE_SIZE: p.image_size,
    }
    shared: list[Any] = [COND_VENDOR_ID, _REP_CONDITION, COND_CLASS_ID, _REP_CONDITION]
    if p.use_before is not None:
        shared_params[P_USE_BEFORE] = math.floor(p.use_before.timestamp())
        shared += [COND_USE_BEFORE, _REP_CONDITION]
    if p.version_comparison is not None:
        cmp = VERSION_COMPARISON_CODES[p.version_comparison]
        shared_params[P_VERSION] = dumps([cmp, list(set_version)])
        shared += [COND_VERSION, _REP_CONDITION]
    components = [list(p.component_id)]
    if p.precursor_digests:
        components.append(list(source_component_id(p.component_id)))
    common = {
        C_COMPONENTS: components,
        C_SHARED_SEQUENCE: _sequence(DIR_OVERRIDE_PARAMETERS, shared_params, *shared),
    }
    install_params: dict[int, Any] = {}
    if p.uri is not None:
        install_params[P_URI] = p.uri
    if p.encryption_info is not None:
        # Consumed by the fetch that follows: the device decrypts as it stores the payload, then
        # image-match checks the plaintext (docs/suit.md, "Encrypted payloads").
        install_params[P_ENCRYPTION_INFO] = p.encryption_info
    install: list[Any] = []
    if p.profile == PROFILE_EXTENDED:
        install_params[P_SECURITY_COUNTER] = p.security_counter
        install_params[P_PAYLOAD_FORMAT] = p.payload_format
        install += [
            DIR_OVERRIDE_PARAMETERS, install_params,
            COND_SECURITY_COUNTER, _REP_CONDITION,
            COND_PAYLOAD_FORMAT, _REP_CONDITION,
        ]  # fmt: skip
    elif install_params:
        install += [DIR_OVERRIDE_PARAMETERS, install_params]
    fetch = [DIR_FETCH, _REP_DIRECTIVE] if p.uri is not None else []
    if p.precursor_digests:
        # One try-each option per precursor: the source (the running slot, component 1) must
        # match the precursor's digest before the patch is fetched and applied onto component 0
        # from it; the last option is the full image. The result's image-match follows.
        options = []
        for digest in p.precursor_digests:
            option = [
                DIR_SET_COMPONENT_INDEX, _SOURCE_INDEX,
                DIR_OVERRIDE_PARAMETERS, {P_IMAGE_DIGEST: dumps([ALG_SHA256, digest])},
                COND_IMAGE_MATCH, _REP_CONDITION,
                DIR_SET_COMPONENT_INDEX, 0,
                DIR_OVERRIDE_PARAMETERS, {P_SOURCE_COMPONENT: _SOURCE_INDEX},
                DIR_FETCH, _REP_DIRECTIVE,
            ]  # fmt: skip
            options.append(_sequence(*option))
        options.append(_sequence(DIR_SET_COMPONENT_INDEX, 0, *fetch))
        install += [DIR_TRY_EACH, options, DIR_SET_COMPONENT_INDEX, 0]
    else:
        install += fetch
    install += [COND_IMAGE_MATCH, _REP_CONDITION]
    members = {
        M_COMMON: dumps(common),
        M_SET_VERSION: dumps(list(set_version)),
        M_VALIDATE: _sequence(COND_IMAGE_MATCH, _REP_CONDITION),
        M_INVOKE: _sequence(DIR_INVOKE, _REP_DIRECTIVE),
        M_INSTALL: dumps(install),
    }
    lmap: dict[Any, Any] = {}
    component: dict[int, str] = {}
    for name, value in (p.text or {}).items():
        if name in _TEXT_NAMES:
            lmap[_TEXT_NAMES[name]] = value
        else:
            component[_TEXT_COMPONENT_NAMES[name]] = value
    component[TEXT_CURRENT_VERSION] = p.version  # update-management-14: the described version
    lmap[tuple(p.component_id)] = component
    members[M_TEXT] = dumps({TEXT_LANGUAGE: lmap})
    return members


def _assemble(p: ManifestParams, sever: Collection[str]) -> tuple[bytes, dict[int, bytes]]:
    members = _members(p)
    severed: dict[int, bytes] = {}
    manifest: dict[int, Any] = {M_VERSION: 1, M_SEQUENCE: p.sequence_number}
    for name in sever:
        key = _SEVER_NAMES.get(name)
        if key is None or key not in members:
            raise SUITParamsError(f"cannot sever {name!r} (severable here: install, text)")
        severed[key] = members[key]
    for key, content in members.items():
        if key in severed:
            manifest[key] = [ALG_SHA256, hashlib.sha256(encode_bstr(content)).digest()]
        else:
            manifest[key] = content
    return dumps(manifest), severed


def build_manifest(params: ManifestParams) -> bytes:
    """The deterministic CBOR of the SUIT_Manifest for ``params`` (nothing severed)."""
    try:
        return _assemble(params, ())[0]
    except SUITError:
        raise
    except Exception as exc:
        raise SUITParamsError(f"cannot build manifest: {type(exc).__name__}: {exc}") from exc


def _digest_bstr(manifest_bytes: bytes) -> bytes:
    return dumps([ALG_SHA256, hashlib.sha256(encode_bstr(manifest_bytes)).digest()])


def _envelope(auth: bytes, manifest_bytes: bytes, extra: dict[Any, bytes]) -> bytes:
    return dumps(CBORTag(TAG_ENVELOPE, {ENV_AUTH: auth, ENV_MANIFEST: manifest_bytes, **extra}))


def _signatures(digest_bstr: bytes, keys: Sequence[Any]) -> list[bytes]:
    blocks = []
    seen: set[bytes] = set()
    for key in keys:
        kid = key_info(key).kid
        if kid in seen:  # one signature per distinct key
            continue
        seen.add(kid)
        blocks.append(sign1(digest_bstr, key))
    return blocks


def create_envelope(
    params: ManifestParams, *, keys: Sequence[Any], sever: Collection[str] = ()
) -> bytes:
    """A tag-107 envelope for ``params`` with one ESP256 (-9) / Ed25519 (-19) signature per
    distinct key.

    ``sever`` may name ``"install"`` and/or ``"text"`` to move them into the envelope, leaving
    their digest in the manifest. ``keys=[]`` gives an unsigned envelope (digest only).
    """
    try:
        manifest_bytes, severed = _assemble(params, sever)
        digest_bstr = _digest_bstr(manifest_bytes)
        auth = dumps([digest_bstr, *_signatures(digest_bstr, keys)])
        return _envelope(auth, manifest_bytes, dict(severed))
    except SUITError:
        raise
    except Exception as exc:
        raise SUITParamsError(f"cannot create envelope: {type(exc).__name__}: {exc}") from exc


def integrate_payload(
    envelope: bytes,
    payload: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> bytes:
    """The envelope with ``payload`` integrated: a ``tstr => bstr`` member whose key is the
    manifest's URI, a fragment-only reference such as ``"#app"``. The authentication wrapper,
    the manifest and any severed member keep their exact bytes (the signatures stay valid); only
    the envelope map gains one entry. The payload must be the one the manifest names (size and
    SHA-256), so a device that checks the digest after "fetching" it from the envelope installs
    exactly what was signed. ``max_size`` bounds the input envelope, not the result.
    """
    try:
        env = decode_envelope(envelope, max_size=max_size, max_depth=max_depth)
        uri = env.manifest.uri
        if uri is None or len(uri) < 2 or not uri.startswith("#"):
            raise SUITParamsError(
                f"the manifest's URI {uri!r} is not a fragment-only reference (#name): "
                "an integrated payload needs one as its key"
            )
        m = env.manifest
        data = bytes(payload)
        if (
            m.image_digest_alg != ALG_SHA256
            or m.image_digest is None
            or m.image_size != len(data)
            or hashlib.sha256(data).digest() != m.image_digest
        ):
            raise SUITDigestMismatchError(
                "the payload is not the image the manifest names (size or SHA-256 differ)",
                path=f"envelope/{uri}",
            )
        present = env.integrated_payloads.get(uri)
        if present is not None:
            if present != data:
                raise SUITParamsError(f"the envelope already integrates another payload at {uri}")
            return env.raw
        top = decode_item(env.raw, "envelope", max_depth)
        members = {k: v for k, v in top.value.items() if k not in (ENV_AUTH, ENV_MANIFEST)}
        members[uri] = data
        return _envelope(top.value[ENV_AUTH], env.manifest_bytes, members)
    except SUITError:
        raise
    except Exception as exc:
        raise SUITInternalError(f"cannot integrate payload: {type(exc).__name__}: {exc}") from exc


def sign_manifest_digest(envelope_or_digest: bytes, *, key: Any) -> bytes:
    """One tagged COSE_Sign1 (encoded) over the manifest digest, for an approver to upload.

    Accepts a tagged envelope, an encoded SUIT_Digest, or a raw 32-byte SHA-256 manifest digest.
    """
    try:
        data = bytes(envelope_or_digest)
        if data[:2] == b"\xd8\x6b":
            digest_bstr = decode_envelope(data).digest_bstr
        elif len(data) == 32:
            digest_bstr = dumps([ALG_SHA256, data])
        else:
            alg, _ = parse_digest(decode_item(data, "digest", 4), "digest")
            if alg != ALG_SHA256:
                raise SUITValueError("manifest digest must be SHA-256", path="digest")
            digest_bstr = data
        return sign1(digest_bstr, key)
    except SUITError:
        raise
    except Exception as exc:
        raise SUITInternalError(f"cannot sign: {type(exc).__name__}: {exc}") from exc


def add_signatures(
    envelope: bytes,
    blocks: Sequence[bytes],
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> bytes:
    """The envelope with ``blocks`` appended to its authentication wrapper.

    Each block must be a structurally valid detached COSE_Sign1; a block already present (same
    bytes) is not added again. The manifest and every other member stay byte-exact. Signatures
    are not verified here (no trust anchors): use ``verify_envelope``.
    """
    try:
        env = decode_envelope(envelope, max_size=max_size, max_depth=max_depth)
        present = [sig.raw for sig in env.signatures]
        for i, block in enumerate(blocks):
            raw = bytes(block)
            parse_sign1(raw, f"block[{i}]", max_depth - 2, i)
            if raw not in present:
                present.append(raw)
        auth = dumps([env.digest_bstr, *present])
        top = decode_item(env.raw, "envelope", max_depth)
        members = {k: v for k, v in top.value.items() if k not in (ENV_AUTH, ENV_MANIFEST)}
        return _envelope(auth, env.manifest_bytes, members)
    except SUITError:
        raise
    except Exception as exc:
        raise SUITInternalError(f"cannot add signatures: {type(exc).__name__}: {exc}") from exc
