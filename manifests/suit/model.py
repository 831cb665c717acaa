"""The codec's value types: what a manifest is built from and what decoding yields.

Decoded objects keep the exact bytes they came from (``Envelope.raw``, ``manifest_bytes``,
``SignatureBlock.raw``); the parsed fields are derived views and are never re-serialised to
sign or verify.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from .constants import MAC_ALGS, PRERELEASE, PROFILE_EXTENDED, PROFILE_STANDARD, SIGNATURE_ALGS

_T = TypeVar("_T")


def build_frozen(cls: type[_T], values: dict[str, Any]) -> _T:
    """An instance of the frozen dataclass ``cls`` holding exactly ``values``, for the codec's
    hot paths (no defaults filled in, no checks: callers pass every field, and tests compare
    the result with the constructor's). The generated frozen ``__init__`` sets each field
    through ``object.__setattr__``, which is most of the cost of a 21-field Manifest."""
    out = object.__new__(cls)
    out.__dict__.update(values)
    return out


_LAZY = "_build"


def build_lazy(cls: type[_T], values: dict[str, Any], build: Callable[[], dict[str, Any]]) -> _T:
    """Like :func:`build_frozen`, with the fields not in ``values`` produced by ``build()`` when
    one of them is first read (only :class:`Manifest` supports this). The caller has already
    checked everything ``build`` reads, so building cannot fail or refuse; the instance compares,
    prints, pickles and copies as the fully built one does."""
    out = object.__new__(cls)
    out.__dict__.update(values)
    out.__dict__[_LAZY] = build
    return out


@dataclass(frozen=True)
class ManifestParams:
    """What the product builds a manifest from (one component, one full-image payload)."""

    vendor_id: uuid.UUID
    class_id: uuid.UUID
    sequence_number: int
    # "major[.minor[.revision]][+build]", e.g. "1.2.3" or "1.2.3+4". suit-set-version carries the
    # release part (at most three integers); the whole string goes to suit-text-current-version.
    version: str
    security_counter: int
    image_digest: bytes  # SHA-256 of the payload (32 bytes)
    image_size: int
    uri: str | None
    use_before: dt.datetime | None = None  # tz-aware; encoded as whole epoch seconds (floored)
    component_id: tuple[bytes, ...] = (b"00",)
    payload_format: str = "raw"  # "raw" | "mcuboot" (both are full binary images)
    text: dict[str, str] | None = None  # suit-text, keys as in constants.TEXT_*_KEYS names
    # Optional version condition (update-management 28): "the installed version <cmp> this
    # release's version", e.g. "lesser" to forbid re-installing or downgrading. None: no condition,
    # so a roll-forward to an old image (new sequence number) stays possible.
    version_comparison: str | None = None
    # "extended": security counter and payload format as custom parameters (-257/-258) in
    # install; "standard": no custom keys (the sequence number is the anti-rollback floor).
    profile: str = PROFILE_EXTENDED
    # An encoded SUIT_Encryption_Info (``suit.encrypt_payload``): the payload the URI names is
    # then the ciphertext, and image digest/size stay those of the plaintext (checked after
    # decryption, "Image Match after Decryption" of firmware-encryption).
    encryption_info: bytes | None = None
    # SHA-256 digests of the images a delta to this image may be applied to (custom parameter
    # -259, extended profile only); empty: full images only.
    precursor_digests: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class SeveredMember:
    """A severable member the manifest holds only by digest."""

    name: str  # "payload-fetch" | "install" | "text"
    key: int
    digest_alg: int
    digest: bytes
    present: bool  # the envelope carries it (and it matched the digest)


@dataclass(frozen=True)
class SignatureBlock:
    """One authentication block as found (``raw`` is exact): a COSE_Sign1, or a COSE_Mac0
    (``kind == "mac0"``; ``signature`` then holds the MAC tag)."""

    alg: int
    kid: bytes | None
    raw: bytes  # exact COSE_Sign1 bytes (the content of its bstr in the wrapper)
    protected: bytes  # serialized protected header (bstr content, signed as is)
    signature: bytes
    unprotected: Mapping[Any, Any] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    tagged: bool = True
    kid_protected: bool = True  # kid came from the protected bucket
    index: int = 0  # position among the signatures (0-based)
    kind: str = "sign1"  # "sign1" | "mac0"

    @property
    def alg_name(self) -> str:
        return SIGNATURE_ALGS.get(self.alg) or MAC_ALGS.get(self.alg) or str(self.alg)


@dataclass(frozen=True)
class Manifest:
    """The decoded SUIT_Manifest. Facts are the first value found for a parameter.

    Lookup order for parameters: shared sequence, then payload-fetch, install, validate, load,
    invoke (depth first through run-sequence / try-each).
    """

    manifest_version: int
    sequence_number: int
    components: tuple[tuple[bytes, ...], ...]
    vendor_id: uuid.UUID | None
    class_id: uuid.UUID | None
    image_digest: bytes | None
    image_digest_alg: int | None
    image_size: int | None
    uri: str | None
    # suit-text-current-version when it agrees with suit-set-version (it carries the build number),
    # else suit-set-version, else suit-parameter-version
    firmware_version: str | None
    version_parts: tuple[int, ...] | None  # of firmware_version (a build number is a 4th part)
    version_comparison: str | None  # comparison type of suit-parameter-version, if any
    use_before: dt.datetime | None  # UTC
    security_counter: int | None
    payload_format: str | None
    text: Mapping[str, str]  # flattened suit-text of the first language (empty when absent/severed)
    reference_uri: str | None
    conditions: frozenset[int]  # every condition code used anywhere in the manifest
    sequences: Mapping[str, tuple[tuple[int, Any], ...]]  # decoded command sequences by name
    text_languages: Mapping[str, Mapping[Any, Any]] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    raw: bytes = field(default=b"", repr=False)  # exact manifest bytes
    set_version: tuple[int, ...] | None = None  # suit-set-version as written
    # firmware-encryption parameter 19, decoded (COSE_Encrypt / COSE_Encrypt0 as CBORTag)
    encryption_info: tuple[Any, ...] = ()
    manifest_component_id: tuple[bytes, ...] | None = None  # trust-domains manifest key 5
    coswid: Any = None  # suit-coswid (decoded CBOR), when inline or severed and present
    # custom parameter -259: SHA-256 digests of the precursors a delta may be applied to
    precursor_digests: tuple[bytes, ...] = ()

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name the instance does not hold: the fields of a manifest the
        # exact-layout fast path decoded lazily (``build_lazy``) are filled in on first read.
        values = self.__dict__
        build = values.get(_LAZY)
        if build is not None:
            # Idempotent: two threads may both build; they write equal values.
            values.update(build())
            values.pop(_LAZY, None)
            if name in values:
                return values[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        # pickle / copy: the whole manifest, never the pending builder
        if _LAZY in self.__dict__:
            self.__getattr__("manifest_version")
        return dict(self.__dict__)

    @property
    def profile(self) -> str:
        """``extended`` when the product's custom security counter or payload format is there."""
        if self.security_counter is not None or self.payload_format is not None:
            return PROFILE_EXTENDED
        return PROFILE_STANDARD

    @property
    def version(self) -> int:
        """The manifest structure version (always 1); see ``firmware_version`` for the image's."""
        return self.manifest_version

    @property
    def expires(self) -> dt.datetime | None:
        return self.use_before


@dataclass(frozen=True)
class Envelope:
    """A decoded, structurally verified SUIT_Envelope (signatures are checked separately)."""

    raw: bytes
    manifest_bytes: bytes  # exact content of the manifest bstr
    manifest_digest: bytes  # SHA-256 over the manifest bstr including its CBOR head
    digest_bstr: bytes  # encoded SUIT_Digest = the detached COSE payload
    digest_alg: int
    signatures: tuple[SignatureBlock, ...]
    manifest: Manifest
    severed: Mapping[str, SeveredMember]
    integrated_payloads: Mapping[str, bytes] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )

    def to_json_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "manifest_version": m.manifest_version,
            "vendor_id": str(m.vendor_id) if m.vendor_id else None,
            "class_id": str(m.class_id) if m.class_id else None,
            "sequence_number": m.sequence_number,
            "version": m.firmware_version,
            "set_version": list(m.set_version) if m.set_version is not None else None,
            "profile": m.profile,
            "version_comparison": m.version_comparison,
            "security_counter": m.security_counter,
            "payload_format": m.payload_format,
            "components": [[part.hex() for part in comp] for comp in m.components],
            "image_digest": m.image_digest.hex() if m.image_digest is not None else None,
            "image_digest_alg": m.image_digest_alg,
            "image_size": m.image_size,
            "uri": m.uri,
            "reference_uri": m.reference_uri,
            "expires": m.use_before.isoformat() if m.use_before else None,
            "manifest_digest": self.manifest_digest.hex(),
            "signatures": [
                {
                    "kind": "COSE_Mac0" if sig.kind == "mac0" else "COSE_Sign1",
                    "alg": sig.alg,
                    "alg_name": sig.alg_name,
                    "kid": sig.kid.hex() if sig.kid else None,
                }
                for sig in self.signatures
            ],
            "severed": {
                name: ("present" if member.present else "absent")
                for name, member in self.severed.items()
            },
            "text": dict(m.text),
            "manifest_component_id": (
                [part.hex() for part in m.manifest_component_id]
                if m.manifest_component_id is not None
                else None
            ),
            "encryption_info": [_describe_cose(info) for info in m.encryption_info],
            "coswid": _json_safe(m.coswid) if m.coswid is not None else None,
            "precursor_digests": [digest.hex() for digest in m.precursor_digests],
        }


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of :func:`verify_envelope`: distinct keys (by kid) with a valid signature."""

    ok: bool
    threshold: int
    valid_kids: tuple[bytes, ...]
    reasons: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.valid_kids)

    def __bool__(self) -> bool:
        return self.ok


def _json_safe(value: Any) -> Any:
    """Decoded CBOR as JSON-ready values (bytes as hex, tags as {"tag": n, "value": ...})."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    tag = getattr(value, "tag", None)
    if tag is not None:
        return {"tag": tag, "value": _json_safe(value.value)}
    return value


def _describe_cose(info: Any) -> dict[str, Any]:
    """What ``inspect`` shows of one SUIT_Encryption_Info (a tagged COSE_Encrypt or Encrypt0)."""
    names: dict[Any, str] = {96: "COSE_Encrypt", 16: "COSE_Encrypt0"}
    return {
        "structure": names.get(getattr(info, "tag", None), "unknown"),
        "value": _json_safe(info),
    }


_CURRENT_VERSION = re.compile(r"(\d{1,19})(?:\.(\d{1,19}))?(?:\.(\d{1,19}))?(?:\+(\d{1,19}))?")


def full_version(current: str, release: tuple[int, ...]) -> tuple[int, ...] | None:
    """The whole version of a suit-text-current-version such as ``"1.2.3+42"`` ->
    ``(1, 2, 3, 42)``, when its release part is ``release`` (suit-set-version, up to three
    integers); else None (the text is then only text)."""
    match = _CURRENT_VERSION.fullmatch(current)
    if match is None:
        return None
    major, minor, revision, build = match.groups()
    parts = tuple(int(p) for p in (major, minor, revision) if p is not None)
    if build is None:
        return parts if parts == release else None
    padded = (int(major), int(minor or 0), int(revision or 0))
    if padded != release and parts != release:
        return None
    return (*padded, int(build))


def format_version(parts: tuple[int, ...]) -> str:
    """``(1, 2, 3)`` -> ``"1.2.3"``; ``(1, 2, 3, 4)`` -> ``"1.2.3+4"`` (MCUboot build number);
    a negative part starts a pre-release (``-1`` rc, ``-2`` beta, ``-3`` alpha)."""
    release: list[int] = []
    for part in parts:
        if part < 0:
            break
        release.append(part)
    rest = parts[len(release) :]
    if rest:
        label = PRERELEASE.get(rest[0], f"pre{-rest[0]}")
        tail = "".join(f".{x}" for x in rest[1:])
        return ".".join(map(str, release)) + f"-{label}{tail}"
    if len(release) == 4:
        return f"{release[0]}.{release[1]}.{release[2]}+{release[3]}"
    return ".".join(map(str, release))
