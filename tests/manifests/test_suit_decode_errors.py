"""Every decoder refusal is a specific SUITError subclass whose message names the place."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import cbor2
import pytest

from manifests import suit

VENDOR = suit.vendor_id("acme.example").bytes
CLASS = suit.class_id(suit.vendor_id("acme.example"), "thermo").bytes
KEY = suit.generate_private_key("ES256")


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Overrides the Django storage fixture: the codec tests need no settings."""


# --- builders -------------------------------------------------------------------------------------


def enc(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def digest_of(content: bytes) -> list[Any]:
    return [-16, hashlib.sha256(enc(content)).digest()]


def raw_map(*pairs: tuple[bytes, bytes]) -> bytes:
    assert len(pairs) < 24
    return bytes([0xA0 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def shared(*, params: dict[int, Any] | None = None, tail: list[Any] | None = None) -> list[Any]:
    base = {1: VENDOR, 2: CLASS, 3: enc([-16, b"\x11" * 32]), 14: 100, -257: 1, -258: "raw"}
    if params is not None:
        base.update(params)
    return [20, base, 1, 15, 2, 15, *(tail or [])]


def common(
    *, shared_seq: Any = None, components: Any = None, raw_shared: bytes | None = None
) -> bytes:
    comps = [[b"\x00"]] if components is None else components
    seq = (
        raw_shared
        if raw_shared is not None
        else enc(shared() if shared_seq is None else shared_seq)
    )
    return enc({2: comps, 4: seq})


INSTALL = [-257, 15, -258, 15, 20, {21: "coap://fw/1"}, 21, 2, 3, 15]


def manifest(**members: Any) -> dict[int, Any]:
    m: dict[int, Any] = {1: 1, 2: 5, 3: common(), 7: enc([3, 15]), 20: enc(INSTALL)}
    for key, value in members.items():
        number = int(key.lstrip("m_"))
        if value is None:
            m.pop(number, None)
        else:
            m[number] = value
    return m


def envelope(
    man: dict[int, Any] | bytes | None = None,
    *,
    auth: bytes | None = None,
    extra: dict[Any, Any] | None = None,
    blocks: tuple[bytes, ...] = (),
    digest: list[Any] | None = None,
) -> bytes:
    mbytes = man if isinstance(man, bytes) else enc(manifest() if man is None else man)
    d = enc(digest if digest is not None else digest_of(mbytes))
    wrapper = auth if auth is not None else enc([d, *blocks])
    return enc(cbor2.CBORTag(107, {2: wrapper, 3: mbytes, **(extra or {})}))


def signed(man: dict[int, Any] | None = None) -> bytes:
    return suit.add_signatures(envelope(man), [suit.sign_manifest_digest(envelope(man), key=KEY)])


def sign1(
    protected: Any = None,
    unprotected: Any = None,
    payload: Any = None,
    sig: Any = None,
    *,
    tag: int | None = 18,
    raw_protected: bytes | None = None,
) -> bytes:
    p = (
        raw_protected
        if raw_protected is not None
        else enc({1: -7} if protected is None else protected)
    )
    u = {} if unprotected is None else unprotected
    s = b"\x00" * 64 if sig is None else sig
    body = [p, u, payload, s]
    return enc(cbor2.CBORTag(tag, body) if tag is not None else body)


def with_block(block: bytes) -> bytes:
    return envelope(blocks=(block,))


def nested_try_each(levels: int) -> list[Any]:
    seq: list[Any] = [3, 15]
    for _ in range(levels):
        seq = [15, [enc(seq), enc([3, 15])]]
    return seq


VALID = envelope()
SIGNED = signed()

# --- the table ------------------------------------------------------------------------------------

Case = tuple[str, Callable[[], bytes], type[suit.SUITError], str]

CASES: list[Case] = [
    # input framing
    ("empty-input", lambda: b"", suit.SUITTruncatedError, "envelope"),
    ("truncated", lambda: VALID[:-1], suit.SUITTruncatedError, "envelope"),
    ("truncated-head", lambda: VALID[:1], suit.SUITTruncatedError, "envelope"),
    ("trailing-bytes", lambda: VALID + b"\x00", suit.SUITTrailingBytesError, "envelope"),
    ("trailing-break", lambda: VALID + b"\xff", suit.SUITTrailingBytesError, "envelope"),
    ("reserved-additional-info", lambda: b"\xd8\x6b\xbc", suit.SUITMalformedCBORError, "envelope"),
    ("stray-break", lambda: b"\xff", suit.SUITMalformedCBORError, "envelope"),
    (
        "indefinite-map",
        lambda: b"\xd8\x6b\xbf\x02\x40\x03\x40\xff",
        suit.SUITIndefiniteLengthError,
        "envelope",
    ),
    (
        "indefinite-bstr",
        lambda: b"\xd8\x6b\xa2\x02\x5f\x41\x00\xff\x03\x40",
        suit.SUITIndefiniteLengthError,
        "envelope",
    ),
    (
        "duplicate-envelope-key",
        lambda: b"\xd8\x6b\xa3\x02\x40\x02\x40\x03\x40",
        suit.SUITDuplicateKeyError,
        "envelope",
    ),
    (
        "non-preferred-length",
        lambda: b"\xd8\x6b\xa2\x02\x58\x01\x00\x03\x40",
        suit.SUITNonCanonicalError,
        "envelope",
    ),
    (
        "bad-utf8-key",
        lambda: enc(cbor2.CBORTag(107, {2: b"", 3: b""}))[:-1] + b"\x61\xff\x40",
        suit.SUITMalformedCBORError,
        "envelope",
    ),
    # envelope
    ("untagged", lambda: enc({2: b"", 3: b""}), suit.SUITTagError, "envelope"),
    ("wrong-tag", lambda: enc(cbor2.CBORTag(108, {2: b"", 3: b""})), suit.SUITTagError, "envelope"),
    ("self-describe-tag", lambda: b"\xd9\xd9\xf7" + VALID, suit.SUITTagError, "envelope"),
    ("not-a-map", lambda: enc(cbor2.CBORTag(107, [1, 2])), suit.SUITTypeError, "envelope"),
    (
        "no-auth",
        lambda: enc(cbor2.CBORTag(107, {3: enc(manifest())})),
        suit.SUITMissingKeyError,
        "envelope",
    ),
    (
        "no-manifest",
        lambda: enc(cbor2.CBORTag(107, {2: enc([enc(digest_of(b""))])})),
        suit.SUITMissingKeyError,
        "envelope",
    ),
    (
        "manifest-before-auth",
        lambda: cbor2.dumps(cbor2.CBORTag(107, {3: enc(manifest()), 2: b""})),
        suit.SUITMemberOrderError,
        "envelope",
    ),
    (
        "unknown-envelope-key",
        lambda: envelope(extra={99: b""}),
        suit.SUITUnknownKeyError,
        "envelope",
    ),
    ("delegation-key", lambda: envelope(extra={1: b""}), suit.SUITUnknownKeyError, "envelope"),
    (
        "integrated-payload-not-bstr",
        lambda: envelope(extra={"#fw": 5}),
        suit.SUITTypeError,
        "envelope/#fw",
    ),
    # a CBOR simple value compares equal to the integer key in Python; it must not pass for one
    (
        "simple-value-envelope-key",
        lambda: (
            b"\xd8\x6b"
            + raw_map(
                (b"\x02", enc(cbor2.loads(VALID).value[2])),
                (b"\xe3", enc(cbor2.loads(VALID).value[3])),
            )
        ),
        suit.SUITUnknownKeyError,
        "envelope",
    ),
    (
        "simple-value-manifest-key",
        lambda: envelope(raw_map((b"\x02", b"\x05"), (b"\x03", enc(common())), (b"\xe1", b"\x01"))),
        suit.SUITUnknownKeyError,
        "envelope/manifest",
    ),
    (
        "simple-value-common-key",
        lambda: envelope(
            manifest(m_3=raw_map((b"\x04", enc(enc(shared()))), (b"\xe2", enc([[b"\x00"]]))))
        ),
        suit.SUITUnknownKeyError,
        "envelope/manifest/common",
    ),
    (
        "simple-value-parameter-key",
        lambda: envelope(manifest(m_7=enc([20, cbor2.CBORSimpleValue(0)]))),
        suit.SUITTypeError,
        "envelope/manifest/validate[1]",
    ),
    (
        "simple-value-command",
        lambda: envelope(manifest(m_7=enc([cbor2.CBORSimpleValue(3), 15]))),
        suit.SUITTypeError,
        "envelope/manifest/validate[0]",
    ),
    (
        "simple-value-crit",
        lambda: with_block(sign1(protected={1: -7, 2: [cbor2.CBORSimpleValue(1)]})),
        suit.SUITCOSEError,
        "signature[0]/protected/crit",
    ),
    (
        "unsorted-manifest-keys",
        lambda: envelope(raw_map((b"\x02", b"\x05"), (b"\x01", b"\x01"), (b"\x03", enc(common())))),
        suit.SUITNonCanonicalError,
        "envelope/manifest",
    ),
    (
        "non-minimal-int",
        lambda: envelope(
            raw_map((b"\x01", b"\x01"), (b"\x02", b"\x18\x05"), (b"\x03", enc(common())))
        ),
        suit.SUITNonCanonicalError,
        "envelope/manifest",
    ),
    # authentication wrapper
    (
        "auth-not-bstr",
        lambda: envelope(auth=5),
        suit.SUITTypeError,
        "envelope/authentication-wrapper",
    ),  # type: ignore[arg-type]
    (
        "auth-not-array",
        lambda: envelope(auth=enc({1: 2})),
        suit.SUITTypeError,
        "envelope/authentication-wrapper",
    ),
    (
        "auth-empty",
        lambda: envelope(auth=enc([])),
        suit.SUITValueError,
        "envelope/authentication-wrapper",
    ),
    (
        "auth-trailing",
        lambda: envelope(auth=enc([enc(digest_of(enc(manifest())))]) + b"\x00"),
        suit.SUITTrailingBytesError,
        "envelope/authentication-wrapper",
    ),
    (
        "digest-trailing",
        lambda: envelope(auth=enc([enc(digest_of(enc(manifest()))) + b"\x00"])),
        suit.SUITTrailingBytesError,
        "envelope/authentication-wrapper/digest",
    ),
    (
        "digest-alg-unknown",
        lambda: envelope(digest=[99, b"\x00" * 32]),
        suit.SUITDigestAlgorithmError,
        "authentication-wrapper/digest",
    ),
    (
        "digest-alg-sha384",
        lambda: envelope(digest=[-43, b"\x00" * 48]),
        suit.SUITDigestAlgorithmError,
        "authentication-wrapper/digest",
    ),
    (
        "digest-alg-text",
        lambda: envelope(digest=["sha256", b"\x00" * 32]),
        suit.SUITTypeError,
        "authentication-wrapper/digest",
    ),
    (
        "digest-short",
        lambda: envelope(digest=[-16, b"\x00" * 31]),
        suit.SUITValueError,
        "authentication-wrapper/digest",
    ),
    (
        "digest-three-items",
        lambda: envelope(digest=[-16, b"\x00" * 32, 0]),
        suit.SUITValueError,
        "authentication-wrapper/digest",
    ),
    (
        "digest-mismatch",
        lambda: envelope(digest=[-16, b"\x00" * 32]),
        suit.SUITDigestMismatchError,
        "authentication-wrapper/digest",
    ),
    # COSE_Sign1
    (
        "cose-not-bstr",
        lambda: envelope(auth=enc([enc(digest_of(enc(manifest()))), 5])),
        suit.SUITTypeError,
        "signature[0]",
    ),
    ("cose-sign-tag", lambda: with_block(sign1(tag=98)), suit.SUITTagError, "signature[0]"),
    (
        "cose-mac0-with-signature-alg",
        lambda: with_block(sign1(tag=17)),
        suit.SUITAlgorithmError,
        "signature[0]",
    ),
    (
        "cose-three-items",
        lambda: with_block(enc(cbor2.CBORTag(18, [b"", {}, None]))),
        suit.SUITCOSEError,
        "signature[0]",
    ),
    (
        "cose-attached-payload",
        lambda: with_block(sign1(payload=b"x")),
        suit.SUITCOSEError,
        "signature[0]/payload",
    ),
    (
        "cose-protected-not-bstr",
        lambda: with_block(enc([{1: -7}, {}, None, b"\x00" * 64])),
        suit.SUITTypeError,
        "signature[0]/protected",
    ),
    (
        "cose-protected-not-map",
        lambda: with_block(sign1(raw_protected=enc([1]))),
        suit.SUITTypeError,
        "signature[0]/protected",
    ),
    (
        "cose-protected-trailing",
        lambda: with_block(sign1(raw_protected=enc({1: -7}) + b"\x00")),
        suit.SUITTrailingBytesError,
        "signature[0]/protected",
    ),
    (
        "cose-unprotected-not-map",
        lambda: with_block(sign1(unprotected=[1])),
        suit.SUITTypeError,
        "signature[0]/unprotected",
    ),
    (
        "cose-no-alg",
        lambda: with_block(sign1(protected={4: b"k"})),
        suit.SUITCOSEError,
        "signature[0]/protected",
    ),
    (
        "cose-empty-protected",
        lambda: with_block(sign1(raw_protected=b"")),
        suit.SUITCOSEError,
        "signature[0]/protected",
    ),
    (
        "cose-alg-unprotected",
        lambda: with_block(sign1(raw_protected=b"", unprotected={1: -7})),
        suit.SUITCOSEError,
        "signature[0]/unprotected",
    ),
    (
        "cose-alg-both-buckets",
        lambda: with_block(sign1(unprotected={1: -7})),
        suit.SUITCOSEError,
        "signature[0]",
    ),
    (
        "cose-alg-es384",
        lambda: with_block(sign1(protected={1: -35})),
        suit.SUITAlgorithmError,
        "signature[0]/protected/alg",
    ),
    (
        "cose-alg-text",
        lambda: with_block(sign1(protected={1: "ES256"})),
        suit.SUITAlgorithmError,
        "signature[0]/protected/alg",
    ),
    (
        "cose-kid-conflict",
        lambda: with_block(sign1(protected={1: -7, 4: b"a"}, unprotected={4: b"b"})),
        suit.SUITCOSEError,
        "signature[0]",
    ),
    (
        "cose-kid-not-bytes",
        lambda: with_block(sign1(protected={1: -7, 4: "kid"})),
        suit.SUITTypeError,
        "signature[0]/protected/kid",
    ),
    (
        "cose-crit-unknown",
        lambda: with_block(sign1(protected={1: -7, 2: [99], 99: 1})),
        suit.SUITCOSEError,
        "signature[0]/protected/crit",
    ),
    (
        "cose-crit-unprotected",
        lambda: with_block(sign1(unprotected={2: [1]})),
        suit.SUITCOSEError,
        "signature[0]/unprotected",
    ),
    (
        "cose-signature-short",
        lambda: with_block(sign1(sig=b"\x00" * 63)),
        suit.SUITCOSEError,
        "signature[0]/signature",
    ),
    (
        "cose-signature-der",
        lambda: with_block(sign1(sig=b"\x30" + b"\x00" * 70)),
        suit.SUITCOSEError,
        "signature[0]/signature",
    ),
    (
        "cose-trailing",
        lambda: with_block(sign1() + b"\x00"),
        suit.SUITTrailingBytesError,
        "signature[0]",
    ),
    # manifest
    (
        "manifest-not-bstr",
        lambda: enc(cbor2.CBORTag(107, {2: enc([enc(digest_of(b""))]), 3: 5})),
        suit.SUITTypeError,
        "envelope/manifest",
    ),
    ("manifest-not-map", lambda: envelope(enc([1, 2])), suit.SUITTypeError, "envelope/manifest"),
    (
        "manifest-tagged",
        lambda: envelope(enc(cbor2.CBORTag(1070, manifest()))),
        suit.SUITTagError,
        "envelope/manifest",
    ),
    (
        "manifest-trailing",
        lambda: envelope(enc(manifest()) + b"\x00"),
        suit.SUITTrailingBytesError,
        "envelope/manifest",
    ),
    (
        "manifest-version-2",
        lambda: envelope(manifest(m_1=2)),
        suit.SUITManifestVersionError,
        "envelope/manifest/manifest-version",
    ),
    (
        "manifest-version-text",
        lambda: envelope(manifest(m_1="1")),
        suit.SUITTypeError,
        "envelope/manifest/manifest-version",
    ),
    (
        "manifest-no-version",
        lambda: envelope(manifest(m_1=None)),
        suit.SUITMissingKeyError,
        "envelope/manifest",
    ),
    (
        "manifest-no-sequence",
        lambda: envelope(manifest(m_2=None)),
        suit.SUITMissingKeyError,
        "envelope/manifest",
    ),
    (
        "manifest-no-common",
        lambda: envelope(manifest(m_3=None)),
        suit.SUITMissingKeyError,
        "envelope/manifest",
    ),
    (
        "sequence-negative",
        lambda: envelope(manifest(m_2=-1)),
        suit.SUITValueError,
        "manifest-sequence-number",
    ),
    (
        "sequence-bignum",
        lambda: envelope(manifest(m_2=cbor2.CBORTag(2, b"\x01\x00"))),
        suit.SUITTagError,
        "manifest-sequence-number",
    ),
    (
        "sequence-float",
        lambda: envelope(manifest(m_2=1.5)),
        suit.SUITTypeError,
        "manifest-sequence-number",
    ),
    (
        "unknown-manifest-member",
        lambda: envelope(manifest(m_99=b"")),
        suit.SUITUnknownKeyError,
        "envelope/manifest",
    ),
    (
        "reference-uri-bytes",
        lambda: envelope(manifest(m_4=b"x")),
        suit.SUITTypeError,
        "envelope/manifest/reference-uri",
    ),
    (
        "set-version-empty",
        lambda: envelope(manifest(m_6=enc([]))),
        suit.SUITValueError,
        "envelope/manifest/set-version",
    ),
    (
        "set-version-text",
        lambda: envelope(manifest(m_6=enc(["1"]))),
        suit.SUITTypeError,
        "envelope/manifest/set-version",
    ),
    # common
    (
        "common-not-bstr",
        lambda: envelope(manifest(m_3={2: []})),
        suit.SUITTypeError,
        "envelope/manifest/common",
    ),
    (
        "common-trailing",
        lambda: envelope(manifest(m_3=common() + b"\x00")),
        suit.SUITTrailingBytesError,
        "envelope/manifest/common",
    ),
    (
        "common-unknown-member",
        lambda: envelope(manifest(m_3=enc({2: [[b"\x00"]], 9: 1}))),
        suit.SUITUnknownKeyError,
        "envelope/manifest/common",
    ),
    (
        "components-empty",
        lambda: envelope(manifest(m_3=common(components=[]))),
        suit.SUITValueError,
        "envelope/manifest/common/components",
    ),
    (
        "component-part-text",
        lambda: envelope(manifest(m_3=common(components=[["00"]]))),
        suit.SUITTypeError,
        "common/components[0][0]",
    ),
    (
        "component-not-array",
        lambda: envelope(manifest(m_3=common(components=[b"\x00"]))),
        suit.SUITTypeError,
        "common/components[0]",
    ),
    (
        "deep-nesting",
        lambda: envelope(manifest(m_3=common(components=[[[[[[[[[[[[[[[[b""]]]]]]]]]]]]]]]]))),
        suit.SUITNestingError,
        "envelope/manifest/common",
    ),
    (
        "deep-try-each",
        lambda: envelope(manifest(m_3=common(shared_seq=[*shared(), *nested_try_each(8)]))),
        suit.SUITNestingError,
        "try-each",
    ),
    # command sequences
    (
        "shared-not-bstr",
        lambda: envelope(manifest(m_3=enc({4: [1, 15]}))),
        suit.SUITTypeError,
        "common/shared-sequence",
    ),
    (
        "shared-trailing",
        lambda: envelope(manifest(m_3=common(raw_shared=enc(shared()) + b"\x00"))),
        suit.SUITTrailingBytesError,
        "common/shared-sequence",
    ),
    (
        "shared-indefinite",
        lambda: envelope(manifest(m_3=common(raw_shared=b"\x9f\x01\x0f\xff"))),
        suit.SUITIndefiniteLengthError,
        "common/shared-sequence",
    ),
    (
        "sequence-odd-length",
        lambda: envelope(manifest(m_3=common(shared_seq=[1, 15, 2]))),
        suit.SUITValueError,
        "common/shared-sequence",
    ),
    (
        "sequence-empty",
        lambda: envelope(manifest(m_7=enc([]))),
        suit.SUITValueError,
        "envelope/manifest/validate",
    ),
    (
        "sequence-not-array",
        lambda: envelope(manifest(m_7=enc({3: 15}))),
        suit.SUITTypeError,
        "envelope/manifest/validate",
    ),
    (
        "unknown-condition",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(tail=[99, 15])))),
        suit.SUITUnknownCommandError,
        "common/shared-sequence[6]",
    ),
    (
        "unknown-custom-command",
        lambda: envelope(manifest(m_20=enc([-999, 15]))),
        suit.SUITUnknownCommandError,
        "envelope/manifest/install[0]",
    ),
    (
        "command-text",
        lambda: envelope(manifest(m_7=enc(["image-match", 15]))),
        suit.SUITTypeError,
        "envelope/manifest/validate[0]",
    ),
    (
        "custom-in-shared",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(tail=[-257, 15])))),
        suit.SUITCommandNotAllowedError,
        "common/shared-sequence[6]",
    ),
    (
        "fetch-in-shared",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(tail=[21, 2])))),
        suit.SUITCommandNotAllowedError,
        "common/shared-sequence[6]",
    ),
    (
        "rep-policy-negative",
        lambda: envelope(manifest(m_7=enc([3, -1]))),
        suit.SUITTypeError,
        "envelope/manifest/validate[1]",
    ),
    (
        "rep-policy-text",
        lambda: envelope(manifest(m_7=enc([3, "x"]))),
        suit.SUITTypeError,
        "envelope/manifest/validate[1]",
    ),
    (
        "component-index-text",
        lambda: envelope(manifest(m_7=enc([12, "0", 3, 15]))),
        suit.SUITTypeError,
        "envelope/manifest/validate[1]",
    ),
    (
        "try-each-one-option",
        lambda: envelope(manifest(m_7=enc([15, [enc([3, 15])]]))),
        suit.SUITValueError,
        "envelope/manifest/validate[1]",
    ),
    (
        "try-each-bad-option",
        lambda: envelope(manifest(m_7=enc([15, [enc([3, 15]), enc([99, 15])]]))),
        suit.SUITUnknownCommandError,
        "validate[1]/try-each[1][0]",
    ),
    (
        "run-sequence-trailing",
        lambda: envelope(manifest(m_7=enc([32, enc([3, 15]) + b"\x00"]))),
        suit.SUITTrailingBytesError,
        "validate[1]/run-sequence",
    ),
    # parameters
    (
        "params-not-map",
        lambda: envelope(manifest(m_3=common(shared_seq=[20, [1, 2]]))),
        suit.SUITTypeError,
        "common/shared-sequence[1]",
    ),
    (
        "params-empty",
        lambda: envelope(manifest(m_3=common(shared_seq=[20, {}]))),
        suit.SUITValueError,
        "common/shared-sequence[1]",
    ),
    (
        "unknown-parameter",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={99: 1})))),
        suit.SUITUnknownParameterError,
        "common/shared-sequence[1]",
    ),
    (
        "unknown-custom-parameter",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={-300: 1})))),
        suit.SUITUnknownParameterError,
        "common/shared-sequence[1]",
    ),
    (
        "parameter-key-text",
        lambda: envelope(manifest(m_3=common(shared_seq=[20, {"uri": "x"}]))),
        suit.SUITTypeError,
        "common/shared-sequence[1]",
    ),
    (
        "vendor-id-short",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={1: b"\x00" * 15})))),
        suit.SUITValueError,
        "shared-sequence[1]/vendor-id",
    ),
    (
        "vendor-id-text",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={1: "acme"})))),
        suit.SUITTypeError,
        "shared-sequence[1]/vendor-id",
    ),
    (
        "class-id-uuid-tag",
        lambda: envelope(
            manifest(m_3=common(shared_seq=shared(params={2: cbor2.CBORTag(37, CLASS)})))
        ),
        suit.SUITTagError,
        "shared-sequence[1]/class-id",
    ),
    (
        "image-digest-not-bstr",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={3: [-16, b"\x00" * 32]})))),
        suit.SUITTypeError,
        "shared-sequence[1]/image-digest",
    ),
    (
        "image-digest-alg",
        lambda: envelope(
            manifest(m_3=common(shared_seq=shared(params={3: enc([-17, b"\x00" * 32])})))
        ),
        suit.SUITDigestAlgorithmError,
        "shared-sequence[1]/image-digest",
    ),
    (
        "image-digest-trailing",
        lambda: envelope(
            manifest(m_3=common(shared_seq=shared(params={3: enc([-16, b"\x00" * 32]) + b"\x00"})))
        ),
        suit.SUITTrailingBytesError,
        "shared-sequence[1]/image-digest",
    ),
    (
        "image-size-text",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={14: "100"})))),
        suit.SUITTypeError,
        "shared-sequence[1]/image-size",
    ),
    (
        "image-size-negative",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={14: -1})))),
        suit.SUITValueError,
        "shared-sequence[1]/image-size",
    ),
    (
        "use-before-date-tag",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={4: cbor2.CBORTag(1, 10)})))),
        suit.SUITTagError,
        "shared-sequence[1]/use-before",
    ),
    (
        "strict-order-int",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={12: 1})))),
        suit.SUITTypeError,
        "shared-sequence[1]/strict-order",
    ),
    (
        "uri-bytes",
        lambda: envelope(manifest(m_20=enc([20, {21: b"coap://x"}]))),
        suit.SUITTypeError,
        "install[1]/uri",
    ),
    (
        "security-counter-negative",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={-257: -1})))),
        suit.SUITValueError,
        "shared-sequence[1]/security-counter",
    ),
    (
        "security-counter-text",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={-257: "1"})))),
        suit.SUITTypeError,
        "shared-sequence[1]/security-counter",
    ),
    (
        "payload-format-hex",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={-258: "ihex"})))),
        suit.SUITValueError,
        "shared-sequence[1]/payload-format",
    ),
    (
        "payload-format-int",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={-258: 1})))),
        suit.SUITTypeError,
        "shared-sequence[1]/payload-format",
    ),
    (
        "version-not-bstr",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={28: [1, [1]]})))),
        suit.SUITTypeError,
        "shared-sequence[1]/version",
    ),
    (
        "version-comparison-unknown",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={28: enc([9, [1]])})))),
        suit.SUITValueError,
        "shared-sequence[1]/version",
    ),
    (
        "version-value-empty",
        lambda: envelope(manifest(m_3=common(shared_seq=shared(params={28: enc([1, []])})))),
        suit.SUITValueError,
        "shared-sequence[1]/version",
    ),
    (
        "wait-info-not-map",
        lambda: envelope(manifest(m_20=enc([20, {29: enc([1])}]))),
        suit.SUITTypeError,
        "install[1]/wait-info",
    ),
    # severable members
    (
        "install-not-bstr-or-digest",
        lambda: envelope(manifest(m_20=5)),
        suit.SUITTypeError,
        "envelope/manifest/install",
    ),
    (
        "install-digest-alg",
        lambda: envelope(manifest(m_20=[7, b"\x00" * 32])),
        suit.SUITDigestAlgorithmError,
        "envelope/manifest/install",
    ),
    (
        "install-in-both",
        lambda: envelope(extra={20: enc(INSTALL)}),
        suit.SUITSeverableError,
        "envelope/install",
    ),
    (
        "install-unauthenticated",
        lambda: envelope(manifest(m_20=None), extra={20: enc(INSTALL)}),
        suit.SUITSeverableError,
        "envelope/install",
    ),
    (
        "severed-install-mismatch",
        lambda: envelope(manifest(m_20=digest_of(enc(INSTALL))), extra={20: enc([3, 15])}),
        suit.SUITDigestMismatchError,
        "envelope/install",
    ),
    (
        "severed-install-not-bstr",
        lambda: envelope(manifest(m_20=digest_of(enc(INSTALL))), extra={20: 5}),
        suit.SUITTypeError,
        "envelope/install",
    ),
    (
        "severed-install-trailing",
        lambda: envelope(
            manifest(m_20=digest_of(enc(INSTALL) + b"\x00")), extra={20: enc(INSTALL) + b"\x00"}
        ),
        suit.SUITTrailingBytesError,
        "envelope/install",
    ),
    (
        "text-language-int",
        lambda: envelope(manifest(m_23=enc({1: {1: "x"}}))),
        suit.SUITTypeError,
        "envelope/manifest/text",
    ),
    (
        "text-language-invalid",
        lambda: envelope(manifest(m_23=enc({"en us": {1: "x"}}))),
        suit.SUITTypeError,
        "envelope/manifest/text",
    ),
    (
        "text-value-int",
        lambda: envelope(manifest(m_23=enc({"en": {1: 5}}))),
        suit.SUITTypeError,
        "envelope/manifest/text/en",
    ),
    (
        "text-empty",
        lambda: envelope(manifest(m_23=enc({}))),
        suit.SUITValueError,
        "envelope/manifest/text",
    ),
]


@pytest.mark.parametrize(
    ("data", "error", "where"),
    [pytest.param(make, error, where, id=name) for name, make, error, where in CASES],
)
def test_decoder_refuses_with_the_specific_error(
    data: Callable[[], bytes], error: type[suit.SUITError], where: str
) -> None:
    raw = data()
    with pytest.raises(suit.SUITError) as info:
        suit.decode_envelope(raw, cache=False)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert where in str(info.value), str(info.value)
    assert info.value.code == error.code


def test_case_names_are_unique() -> None:
    names = [name for name, *_ in CASES]
    assert len(names) == len(set(names))


def test_the_baseline_envelopes_decode() -> None:
    assert suit.decode_envelope(VALID).manifest.sequence_number == 5
    assert len(suit.decode_envelope(SIGNED).signatures) == 1


def test_oversized_input_is_refused_before_decoding() -> None:
    with pytest.raises(suit.SUITSizeError, match="envelope"):
        suit.decode_envelope(VALID, max_size=len(VALID) - 1)
    assert suit.decode_envelope(VALID, max_size=len(VALID))


def test_depth_limit_is_configurable() -> None:
    with pytest.raises(suit.SUITNestingError):
        suit.decode_envelope(VALID, max_depth=4, cache=False)
    assert suit.decode_envelope(VALID, max_depth=8, cache=False)


@pytest.mark.parametrize("data", ["text", None, 5, [1, 2]])
def test_non_bytes_input_is_a_type_error(data: Any) -> None:
    with pytest.raises(suit.SUITTypeError):
        suit.decode_envelope(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", suit.SUITInputError),
        (b"   \n", suit.SUITInputError),
        (b"xyz", suit.SUITInputError),
        (b"abc", suit.SUITInputError),
        (b"\x00\x01\x02", suit.SUITInputError),
        ("d86b", suit.SUITInputError),
    ],
    ids=["empty", "whitespace", "not-hex", "odd-hex", "binary-junk", "str-not-bytes"],
)
def test_read_envelope_input_refuses_junk(data: Any, error: type[suit.SUITError]) -> None:
    with pytest.raises(error, match="input"):
        suit.read_envelope_input(data)


def test_hex_input_size_is_bounded() -> None:
    with pytest.raises(suit.SUITSizeError):
        suit.read_envelope_input(b"00" * 40, max_size=10)


def test_every_error_class_has_a_docstring_and_a_unique_code() -> None:
    codes = [cls.code for cls in suit.ALL_ERRORS]
    assert len(codes) == len(set(codes))
    for cls in suit.ALL_ERRORS:
        assert cls.__doc__ and "\n" not in cls.__doc__.strip(), cls
        assert cls.code.startswith("suit."), cls
        assert issubclass(cls, suit.SUITError)
    assert issubclass(suit.SUITTrailingBytesError, suit.SUITDecodeError)
    assert issubclass(suit.SUITUnknownParameterError, suit.SUITUnknownCommandError)


def test_cbor2_interprets_no_tag_the_codec_does_not_override() -> None:
    # If a cbor2 upgrade starts interpreting another tag (silently turning it into a Python
    # value), the decoder could no longer refuse it: keep SEMANTIC_TAGS complete.
    interpreted = []
    for tag in range(0, 65536):
        head = (
            bytes([0xC0 | tag])
            if tag < 24
            else (bytes([0xD8, tag]) if tag < 256 else b"\xd9" + tag.to_bytes(2, "big"))
        )
        for content in (b"\x00", b"\x40", b"\x80"):
            try:
                value = cbor2.loads(head + content)
            except Exception:
                interpreted.append(tag)
                break
            if not (isinstance(value, cbor2.CBORTag) and value.tag == tag):
                interpreted.append(tag)
                break
    assert set(interpreted) <= set(suit.SEMANTIC_TAGS)
