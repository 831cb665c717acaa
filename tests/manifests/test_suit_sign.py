"""Building, signing and verifying envelopes: round trips, interop with pycose, threshold rules."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import string
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycose.algorithms import CoseAlgorithm, EdDSA, Es256
from pycose.keys import CoseKey
from pycose.messages import Sign1Message

from manifests import suit

VENDOR = suit.vendor_id("acme.example")
CLASS = suit.class_id(VENDOR, "thermo-v2")
IMAGE = b"firmware image bytes" * 100
ES_KEY = suit.generate_private_key("ES256")
ES_KEY_2 = suit.generate_private_key("ES256")
ED_KEY = suit.generate_private_key("Ed25519")
ED_KEY_2 = suit.generate_private_key("Ed25519")


# pycose 1.1 predates RFC 9864: teach it the fully specified identifiers of the same algorithms
# (ESP256 = ECDSA P-256 with SHA-256, Ed25519 = EdDSA on Ed25519). Its Sig_structure building and
# verification are its own; only the algorithm table learns two numbers.
@CoseAlgorithm.register_attribute()
class _PycoseEsp256(Es256):
    identifier = -9
    fullname = "ESP256"


@CoseAlgorithm.register_attribute()
class _PycoseEd25519(EdDSA):
    identifier = -19
    fullname = "ED25519"


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Overrides the Django storage fixture: the codec tests need no settings."""


def make_params(**changes: Any) -> suit.ManifestParams:
    base = suit.ManifestParams(
        vendor_id=VENDOR,
        class_id=CLASS,
        sequence_number=7,
        version="1.2.3+4",
        security_counter=3,
        image_digest=hashlib.sha256(IMAGE).digest(),
        image_size=len(IMAGE),
        uri="coap://fw.example/fw/1",
        use_before=dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        component_id=(b"\x00",),
        payload_format="mcuboot",
    )
    return dataclasses.replace(base, **changes)


def test_created_envelope_decodes_to_its_params() -> None:
    params = make_params(text={"model-name": "thermo", "manifest-description": "release 1.2.3"})
    env = suit.decode_envelope(suit.create_envelope(params, keys=[ES_KEY]))
    m = env.manifest
    assert (m.vendor_id, m.class_id) == (VENDOR, CLASS)
    assert m.sequence_number == 7
    assert m.firmware_version == "1.2.3+4"
    assert m.version_parts == (1, 2, 3, 4)
    assert m.security_counter == 3
    assert m.payload_format == "mcuboot"
    assert m.image_digest == hashlib.sha256(IMAGE).digest()
    assert m.image_size == len(IMAGE)
    assert m.uri == "coap://fw.example/fw/1"
    assert m.use_before == dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert m.components == ((b"\x00",),)
    assert m.text == {
        "model-name": "thermo",
        "manifest-description": "release 1.2.3",
        "current-version": "1.2.3+4",
    }
    assert m.set_version == (1, 2, 3)
    # The device evaluates these: vendor, class, use-before, image match, and the two custom ones.
    assert {1, 2, 3, 4, -257, -258} <= m.conditions
    data = env.to_json_dict()
    assert data["expires"] == "2031-01-02T03:04:05+00:00"
    assert data["version"] == "1.2.3+4"
    assert data["signatures"] == [
        {
            "kind": "COSE_Sign1",
            "alg": -9,
            "alg_name": "ESP256",
            "kid": suit.kid_for_public_key(ES_KEY).hex(),
        }
    ]


def test_build_manifest_is_deterministic_and_is_what_the_envelope_carries() -> None:
    params = make_params()
    first = suit.build_manifest(params)
    assert first == suit.build_manifest(params)
    assert cbor2.dumps(cbor2.loads(first), canonical=True) == first
    env = suit.decode_envelope(suit.create_envelope(params, keys=[]))
    assert env.manifest_bytes == first
    assert env.signatures == ()


def test_fractional_use_before_is_floored_to_whole_seconds() -> None:
    params = make_params(use_before=dt.datetime(2031, 1, 1, 0, 0, 0, 900000, tzinfo=dt.UTC))
    env = suit.decode_envelope(suit.create_envelope(params, keys=[ES_KEY]))
    assert env.manifest.use_before == dt.datetime(2031, 1, 1, tzinfo=dt.UTC)


def test_optional_version_condition_is_encoded_as_update_management_parameter_28() -> None:
    env = suit.decode_envelope(
        suit.create_envelope(make_params(version_comparison="lesser"), keys=[ES_KEY])
    )
    assert env.manifest.version_comparison == "lesser"
    assert 28 in env.manifest.conditions
    plain = suit.decode_envelope(suit.create_envelope(make_params(), keys=[ES_KEY]))
    assert plain.manifest.version_comparison is None
    assert 28 not in plain.manifest.conditions


@pytest.mark.parametrize(
    "changes",
    [
        {"payload_format": "ihex"},
        {"payload_format": "elf"},
        {"image_digest": b"short"},
        {"sequence_number": -1},
        {"security_counter": 2**64},
        {"version": "1.2.3-rc1"},
        {"version": "v1"},
        {"use_before": dt.datetime(2031, 1, 1)},  # noqa: DTZ001 - naive on purpose
        {"text": {"colour": "blue"}},
        {"component_id": ("00",)},
        {"version_comparison": "newer"},
        {"uri": ""},
    ],
)
def test_invalid_params_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(suit.SUITParamsError):
        suit.create_envelope(make_params(**changes), keys=[ES_KEY])


@pytest.mark.parametrize("sever", [("install",), ("text",), ("install", "text")])
def test_severed_members_round_trip_and_can_be_dropped(sever: tuple[str, ...]) -> None:
    params = make_params(text={"vendor-name": "Acme"})
    raw = suit.create_envelope(params, keys=[ED_KEY], sever=sever)
    env = suit.decode_envelope(raw)
    assert set(env.severed) == set(sever)
    assert env.manifest.uri == "coap://fw.example/fw/1"
    # Dropping the severed members keeps the signature valid and reports them absent.
    top = cbor2.loads(raw)
    stripped = cbor2.dumps(cbor2.CBORTag(107, {2: top.value[2], 3: top.value[3]}))
    env2 = suit.decode_envelope(stripped)
    assert not any(member.present for member in env2.severed.values())
    assert suit.verify_envelope(env2, [ED_KEY.public_key()]).ok


# --- interop --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [ES_KEY, ED_KEY], ids=["ES256", "EdDSA"])
def test_signatures_verify_with_pycose(key: Any) -> None:
    env = suit.decode_envelope(suit.create_envelope(make_params(), keys=[key]))
    block = env.signatures[0]
    # pycose's own decode() trips over cbor2 6 returning tag contents as tuples; hand it the
    # array the way its decoder would.
    tagged = cbor2.loads(block.raw)
    assert tagged.tag == 18
    protected, unprotected, payload, signature = tagged.value
    message = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    message.key = CoseKey.from_pem_public_key(pem.decode())
    assert message.verify_signature(detached_payload=env.digest_bstr)
    assert message.phdr_encoded == block.protected


@pytest.mark.parametrize("key", [ES_KEY, ED_KEY], ids=["ES256", "EdDSA"])
def test_pycose_signature_with_kid_unprotected_is_accepted(key: Any) -> None:
    from pycose.algorithms import EdDSA, Es256
    from pycose.headers import KID, Algorithm

    env = suit.decode_envelope(suit.create_envelope(make_params(), keys=[]))
    alg = Es256 if isinstance(key, ec.EllipticCurvePrivateKey) else EdDSA
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    message = Sign1Message(
        phdr={Algorithm: alg}, uhdr={KID: suit.kid_for_public_key(key)}, payload=env.digest_bstr
    )
    message.key = CoseKey.from_pem_private_key(pem.decode())
    protected, unprotected, _payload, signature = cbor2.loads(message.encode(tag=True)).value
    block = cbor2.dumps(cbor2.CBORTag(18, [protected, dict(unprotected), None, signature]))
    signed = suit.decode_envelope(suit.add_signatures(env.raw, [block]))
    assert signed.signatures[0].kid == suit.kid_for_public_key(key)
    assert not signed.signatures[0].kid_protected
    assert suit.verify_envelope(signed, [key.public_key()]).ok


# --- keys and kids --------------------------------------------------------------------------------


def test_kid_is_deterministic_and_differs_per_key() -> None:
    kids = {suit.kid_for_public_key(k) for k in (ES_KEY, ES_KEY_2, ED_KEY, ED_KEY_2)}
    assert len(kids) == 4
    assert suit.kid_for_public_key(ES_KEY) == suit.kid_for_public_key(ES_KEY.public_key())
    pem = suit.public_key_pem(ED_KEY)
    assert suit.kid_for_public_key(suit.load_public_key_pem(pem)) == suit.kid_for_public_key(ED_KEY)
    assert all(len(k) == 32 for k in kids)


def test_keys_round_trip_through_pem() -> None:
    for key, alg in ((ES_KEY, "ES256"), (ED_KEY, "Ed25519")):
        loaded = suit.load_private_key_pem(suit.private_key_pem(key))
        assert suit.key_algorithm(loaded) == alg
        assert suit.kid_for_public_key(loaded) == suit.kid_for_public_key(key)


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP384R1()),
        ed448.Ed448PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["P-384", "Ed448", "RSA"],
)
def test_unsupported_keys_are_refused(key: Any) -> None:
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(suit.SUITKeyError):
        suit.load_private_key_pem(private_pem)
    with pytest.raises(suit.SUITKeyError):
        suit.load_public_key_pem(public_pem)
    with pytest.raises(suit.SUITKeyError):
        suit.kid_for_public_key(key)
    with pytest.raises(suit.SUITKeyError):
        suit.create_envelope(make_params(), keys=[key])


@pytest.mark.parametrize(
    "data", [b"", b"not a pem", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"]
)
def test_junk_pem_is_a_key_error(data: bytes) -> None:
    with pytest.raises(suit.SUITKeyError):
        suit.load_public_key_pem(data)
    with pytest.raises(suit.SUITKeyError):
        suit.load_private_key_pem(data)


def test_generate_private_key_rejects_unknown_algorithms() -> None:
    with pytest.raises(suit.SUITKeyError):
        suit.generate_private_key("RS256")
    assert isinstance(suit.generate_private_key("Ed25519"), ed25519.Ed25519PrivateKey)


# --- verification rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signer", "verifier"),
    [(ES_KEY, ED_KEY), (ED_KEY, ES_KEY)],
    ids=["ES256-block-Ed25519-key", "EdDSA-block-P256-key"],
)
def test_alg_and_key_type_mismatch_is_refused(signer: Any, verifier: Any) -> None:
    env = suit.decode_envelope(suit.create_envelope(make_params(), keys=[signer]))
    with pytest.raises(suit.SUITKeyMismatchError):
        suit.verify_signature_block(env, env.signatures[0], verifier.public_key())
    result = suit.verify_envelope(env, [verifier.public_key()])
    assert not result.ok


def test_alg_key_mismatch_without_kid_is_not_counted() -> None:
    # An ES256 block without kid, offered only an Ed25519 key.
    env = suit.decode_envelope(suit.create_envelope(make_params(), keys=[]))
    protected = cbor2.dumps({1: -7})
    tbs = cbor2.dumps(["Signature1", protected, b"", env.digest_bstr])
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(ES_KEY.sign(tbs, ec.ECDSA(hashes.SHA256())))
    block = cbor2.dumps(
        cbor2.CBORTag(18, [protected, {}, None, r.to_bytes(32, "big") + s.to_bytes(32, "big")])
    )
    signed = suit.decode_envelope(suit.add_signatures(env.raw, [block]))
    assert not suit.verify_envelope(signed, [ED_KEY.public_key()]).ok
    assert suit.verify_envelope(signed, [ED_KEY.public_key(), ES_KEY.public_key()]).ok


@pytest.mark.parametrize("alg", [-9, -19])
def test_fully_specified_algorithms_are_accepted(alg: int) -> None:
    key = ES_KEY if alg == -9 else ED_KEY
    env = suit.decode_envelope(suit.create_envelope(make_params(), keys=[]))
    protected = cbor2.dumps({1: alg, 4: suit.kid_for_public_key(key)})
    tbs = cbor2.dumps(["Signature1", protected, b"", env.digest_bstr])
    if alg == -9:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(tbs)
    block = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, None, signature]))
    signed = suit.decode_envelope(suit.add_signatures(env.raw, [block]))
    assert signed.signatures[0].alg == alg
    assert suit.verify_envelope(signed, [key.public_key()]).ok


def test_signature_made_for_another_manifest_does_not_verify() -> None:
    first = suit.create_envelope(make_params(sequence_number=1), keys=[ES_KEY, ED_KEY])
    second = suit.create_envelope(make_params(sequence_number=2), keys=[])
    stolen = [sig.raw for sig in suit.decode_envelope(first).signatures]
    env = suit.decode_envelope(suit.add_signatures(second, stolen))
    assert len(env.signatures) == 2
    for block, key in zip(env.signatures, (ES_KEY, ED_KEY), strict=True):
        assert suit.verify_signature_block(env, block, key.public_key()) is False
    result = suit.verify_envelope(env, [ES_KEY.public_key(), ED_KEY.public_key()])
    assert not result.ok
    assert result.valid_kids == ()


def test_threshold_counts_distinct_keys_only() -> None:
    raw = suit.create_envelope(make_params(), keys=[ES_KEY])
    # The same key signs again (ECDSA is randomized, so the block bytes differ).
    again = suit.add_signatures(raw, [suit.sign_manifest_digest(raw, key=ES_KEY)])
    env = suit.decode_envelope(again)
    assert len(env.signatures) == 2
    result = suit.verify_envelope(env, [ES_KEY.public_key(), ES_KEY.public_key()], threshold=2)
    assert not result.ok
    assert result.valid_kids == (suit.kid_for_public_key(ES_KEY),)
    both = suit.add_signatures(again, [suit.sign_manifest_digest(again, key=ED_KEY)])
    env = suit.decode_envelope(both)
    result = suit.verify_envelope(env, [ES_KEY.public_key(), ED_KEY.public_key()], threshold=2)
    assert result.ok
    assert set(result.valid_kids) == {
        suit.kid_for_public_key(ES_KEY),
        suit.kid_for_public_key(ED_KEY),
    }


def _kidless_block(digest_bstr: bytes, key: Any) -> bytes:
    protected = cbor2.dumps({1: -8})
    signature = key.sign(cbor2.dumps(["Signature1", protected, b"", digest_bstr]))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, None, signature]))


def test_kidless_blocks_from_distinct_keys_count_separately() -> None:
    env = suit.decode_envelope(suit.create_envelope(make_params(), keys=[]))
    blocks = [_kidless_block(env.digest_bstr, k) for k in (ED_KEY, ED_KEY_2, ED_KEY)]
    signed = suit.decode_envelope(suit.add_signatures(env.raw, blocks))
    assert len(signed.signatures) == 2  # the repeated Ed25519 block is the same bytes
    keys = [ED_KEY.public_key(), ED_KEY_2.public_key()]
    result = suit.verify_envelope(signed, keys, threshold=2)
    assert result.ok, result.reasons
    assert set(result.valid_kids) == {suit.kid_for_public_key(k) for k in keys}
    assert not suit.verify_envelope(signed, keys, threshold=3).ok


def test_unknown_signer_is_not_counted() -> None:
    env = suit.decode_envelope(suit.create_envelope(make_params(), keys=[ES_KEY, ED_KEY]))
    result = suit.verify_envelope(env, [ES_KEY_2.public_key()])
    assert not result.ok
    assert any("not among the keys" in reason for reason in result.reasons)
    assert suit.verify_signature_block(env, env.signatures[0], ES_KEY_2.public_key()) is False


@pytest.mark.parametrize("threshold", [0, -1, 1.5])
def test_threshold_must_be_a_positive_integer(threshold: Any) -> None:
    env = suit.decode_envelope(suit.create_envelope(make_params(), keys=[ES_KEY]))
    with pytest.raises(suit.SUITSignatureError):
        suit.verify_envelope(env, [ES_KEY.public_key()], threshold=threshold)


def test_one_signature_per_distinct_signing_key() -> None:
    env = suit.decode_envelope(suit.create_envelope(make_params(), keys=[ED_KEY, ED_KEY, ES_KEY]))
    assert [sig.alg for sig in env.signatures] == [-19, -9]


# --- approvals: sign_manifest_digest + add_signatures ---------------------------------------------


def test_approver_block_from_digest_forms_is_the_same_signature() -> None:
    raw = suit.create_envelope(make_params(), keys=[ES_KEY])
    env = suit.decode_envelope(raw)
    from_envelope = suit.sign_manifest_digest(raw, key=ED_KEY)
    from_digest = suit.sign_manifest_digest(env.manifest_digest, key=ED_KEY)
    from_suit_digest = suit.sign_manifest_digest(env.digest_bstr, key=ED_KEY)
    assert from_envelope == from_digest == from_suit_digest  # Ed25519 is deterministic
    signed = suit.decode_envelope(suit.add_signatures(raw, [from_envelope]))
    assert suit.verify_envelope(signed, [ES_KEY.public_key(), ED_KEY.public_key()], threshold=2).ok


def test_add_signatures_keeps_the_manifest_byte_exact_and_skips_duplicates() -> None:
    raw = suit.create_envelope(
        make_params(text={"vendor-name": "Acme"}), keys=[ES_KEY], sever=["text"]
    )
    block = suit.sign_manifest_digest(raw, key=ED_KEY)
    once = suit.add_signatures(raw, [block])
    twice = suit.add_signatures(once, [block, block])
    assert once == twice
    before, after = suit.decode_envelope(raw), suit.decode_envelope(twice)
    assert after.manifest_bytes == before.manifest_bytes
    assert after.manifest_digest == before.manifest_digest
    assert cbor2.loads(twice).value[23] == cbor2.loads(raw).value[23]
    assert after.signatures[0].raw == before.signatures[0].raw
    assert len(after.signatures) == 2


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x00", suit.SUITCOSEError),
        (cbor2.dumps(cbor2.CBORTag(98, [b"", {}, None, b""])), suit.SUITTagError),
        (cbor2.dumps([cbor2.dumps({1: -7}), {}, b"attached", b"\x00" * 64]), suit.SUITCOSEError),
        (
            cbor2.dumps([cbor2.dumps({1: -7}), {}, None, b"\x00" * 64]) + b"\x00",
            suit.SUITTrailingBytesError,
        ),
        (cbor2.dumps([cbor2.dumps({1: -35}), {}, None, b"\x00" * 96]), suit.SUITAlgorithmError),
    ],
    ids=["not-an-array", "cose-sign-tag", "attached-payload", "trailing-bytes", "es384"],
)
def test_add_signatures_validates_blocks_structurally(block: bytes, error: type[Exception]) -> None:
    raw = suit.create_envelope(make_params(), keys=[ES_KEY])
    with pytest.raises(error, match=r"block\[0\]"):
        suit.add_signatures(raw, [block])


def test_parse_signature_block_reads_an_uploaded_block() -> None:
    raw = suit.create_envelope(make_params(), keys=[ES_KEY])
    block = suit.parse_signature_block(suit.sign_manifest_digest(raw, key=ED_KEY))
    assert block.alg == -19
    assert block.kid == suit.kid_for_public_key(ED_KEY)
    assert suit.verify_signature_block(suit.decode_envelope(raw), block, ED_KEY.public_key())
    with pytest.raises(suit.SUITDecodeError, match="block"):
        suit.parse_signature_block(b"\x00")
    with pytest.raises(suit.SUITTypeError, match="block"):
        suit.parse_signature_block("text")  # type: ignore[arg-type]


# --- property: random params round-trip -----------------------------------------------------------

_parts = st.integers(min_value=0, max_value=2**32)
_versions = st.one_of(
    st.tuples(_parts).map(lambda t: f"{t[0]}"),
    st.tuples(_parts, _parts).map(lambda t: f"{t[0]}.{t[1]}"),
    st.tuples(_parts, _parts, _parts).map(lambda t: f"{t[0]}.{t[1]}.{t[2]}"),
    st.tuples(_parts, _parts, _parts, _parts).map(lambda t: f"{t[0]}.{t[1]}.{t[2]}+{t[3]}"),
)
_text_fields = st.dictionaries(
    st.sampled_from(["vendor-name", "model-name", "manifest-description", "component-version"]),
    st.text(max_size=40),
    max_size=4,
)
_params = st.builds(
    suit.ManifestParams,
    vendor_id=st.uuids(),
    class_id=st.uuids(),
    sequence_number=st.integers(min_value=0, max_value=2**64 - 1),
    version=_versions,
    security_counter=st.integers(min_value=0, max_value=2**64 - 1),
    profile=st.sampled_from(["standard", "extended"]),
    image_digest=st.binary(min_size=32, max_size=32),
    image_size=st.integers(min_value=0, max_value=2**64 - 1),
    uri=st.one_of(st.none(), st.text(alphabet=string.printable, min_size=1, max_size=80)),
    use_before=st.one_of(
        st.none(),
        st.datetimes(
            min_value=dt.datetime(1970, 1, 2),  # noqa: DTZ001 - hypothesis wants naive bounds
            max_value=dt.datetime(2200, 1, 1),  # noqa: DTZ001
            timezones=st.just(dt.UTC),
        ),
    ),
    component_id=st.lists(st.binary(max_size=8), min_size=0, max_size=3).map(tuple),
    payload_format=st.sampled_from(suit.PAYLOAD_FORMATS),
    text=st.one_of(st.none(), _text_fields),
    version_comparison=st.one_of(st.none(), st.sampled_from(["greater", "equal", "lesser"])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=_params,
    key=st.sampled_from([ES_KEY, ED_KEY]),
    sever=st.sets(st.sampled_from(["install", "text"])),
)
def test_random_params_round_trip(params: suit.ManifestParams, key: Any, sever: set[str]) -> None:
    raw = suit.create_envelope(params, keys=[key], sever=sorted(sever))
    env = suit.decode_envelope(raw, cache=False)
    m = env.manifest
    assert m.vendor_id == params.vendor_id
    assert m.class_id == params.class_id
    assert m.sequence_number == params.sequence_number
    assert m.version_parts == suit.parse_version(params.version)
    assert suit.parse_version(m.firmware_version) == suit.parse_version(params.version)
    if params.profile == "extended":
        assert m.security_counter == params.security_counter
        assert m.payload_format == params.payload_format
    else:
        assert (m.security_counter, m.payload_format) == (None, None)
    assert m.profile == params.profile
    assert m.image_digest == params.image_digest
    assert m.image_size == params.image_size
    assert m.uri == params.uri
    expected_expiry = (
        dt.datetime.fromtimestamp(int(params.use_before.timestamp() // 1), tz=dt.UTC)
        if params.use_before
        else None
    )
    assert m.use_before == expected_expiry
    assert m.components == (params.component_id,)
    assert m.version_comparison == params.version_comparison
    assert dict(m.text) == {**(params.text or {}), "current-version": params.version}
    assert m.set_version == suit.parse_version(params.version)[:3]
    assert set(env.severed) == sever
    assert suit.verify_envelope(env, [key.public_key()]).ok
    assert env.manifest_bytes == (suit.build_manifest(params) if not sever else env.manifest_bytes)
