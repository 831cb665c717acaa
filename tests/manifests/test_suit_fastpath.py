"""The exact-layout fast path of decode_envelope: it accepts only what the general decoder
accepts, with an identical result, and hands everything else (or any doubt) to it."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import uuid
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests import suit
from manifests.suit.cbor import bstr_header, encode_bstr
from manifests.suit.cose import _der_signature
from manifests.suit.decode import _decode_envelope
from manifests.suit.fastpath import FAST_MIN_DEPTH, decode_fast

ES_KEY = suit.generate_private_key("ES256")
ED_KEY = suit.generate_private_key("Ed25519")
ES_KEY2 = suit.generate_private_key("ES256")
VENDOR = suit.vendor_id("acme.example")
BASE = suit.ManifestParams(
    vendor_id=VENDOR,
    class_id=suit.class_id(VENDOR, "thermo-v2"),
    sequence_number=1042,
    version="2.4.1+17",
    security_counter=12,
    image_digest=hashlib.sha256(b"image").digest(),
    image_size=65536,
    uri="coaps://fw.acme.example/fw/2.4.1+17.bin",
    use_before=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    component_id=(b"\x00",),
    payload_format="mcuboot",
)
DEEPEST = dataclasses.replace(BASE, version_comparison="lesser")  # every optional part
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Overrides the Django storage fixture: the codec tests need no settings."""


def _assert_same(fast: suit.Envelope, general: suit.Envelope) -> None:
    assert fast == general
    assert fast.manifest == general.manifest
    assert fast.signatures == general.signatures
    # fields the dataclass comparison skips, and iteration orders
    for a, b in zip(fast.signatures, general.signatures, strict=True):
        assert dict(a.unprotected) == dict(b.unprotected)
    assert list(fast.manifest.sequences) == list(general.manifest.sequences)
    for name, seq in general.manifest.sequences.items():
        assert fast.manifest.sequences[name] == seq
    assert dict(fast.manifest.text_languages) == dict(general.manifest.text_languages)
    assert dict(fast.integrated_payloads) == dict(general.integrated_payloads)
    for ours, theirs in ((fast.manifest.vendor_id, general.manifest.vendor_id),
                         (fast.manifest.class_id, general.manifest.class_id)):  # fmt: skip
        assert type(ours) is uuid.UUID
        assert ours == theirs and ours.is_safe == theirs.is_safe and hash(ours) == hash(theirs)
    assert fast.to_json_dict() == general.to_json_dict()
    for obj in (fast, fast.manifest, *fast.signatures):
        names = {f.name for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
        assert set(vars(obj)) == names
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.raw = b""  # type: ignore[misc]


_uints = st.one_of(
    st.integers(0, 30), st.integers(0, 2**16), st.integers(0, 2**64 - 1)
)  # every head size
_params = st.builds(
    suit.ManifestParams,
    vendor_id=st.uuids(),
    class_id=st.uuids(),
    sequence_number=_uints,
    version=st.one_of(
        st.tuples(_uints, _uints, _uints).map(lambda v: ".".join(str(x % 2**63) for x in v)),
        st.tuples(_uints, _uints, _uints, _uints).map(
            lambda v: "{}.{}.{}+{}".format(*(x % 2**63 for x in v))
        ),
        st.integers(0, 99).map(str),
    ),
    security_counter=_uints,
    image_digest=st.binary(min_size=32, max_size=32),
    image_size=_uints,
    uri=st.one_of(st.none(), st.text(min_size=1, max_size=300)),
    use_before=st.one_of(
        st.none(),
        st.datetimes(
            min_value=dt.datetime(1970, 1, 2),  # noqa: DTZ001 (naive bounds, UTC zone)
            max_value=dt.datetime(2400, 1, 1),  # noqa: DTZ001
            timezones=st.just(dt.UTC),
        ),
    ),
    component_id=st.lists(st.binary(max_size=23), max_size=3).map(tuple),
    payload_format=st.sampled_from(["raw", "mcuboot"]),
    version_comparison=st.one_of(
        st.none(), st.sampled_from(["greater", "greater-equal", "equal", "lesser-equal", "lesser"])
    ),
)


@SETTINGS
@given(params=_params, keys=st.lists(st.sampled_from([ES_KEY, ED_KEY, ES_KEY2]), max_size=3))
def test_built_envelopes_take_the_fast_path_with_the_general_result(
    params: suit.ManifestParams, keys: list[Any]
) -> None:
    data = suit.create_envelope(params, keys=keys)
    fast = decode_fast(data, suit.DEFAULT_MAX_DEPTH)
    assert fast is not None
    _assert_same(fast, _decode_envelope(data, suit.DEFAULT_MAX_DEPTH))
    public = [k.public_key() for k in keys]
    assert suit.verify_envelope(fast, public).ok == bool(keys)


ENVELOPES = {
    "es256": suit.create_envelope(BASE, keys=[ES_KEY]),
    "ed25519-deepest": suit.create_envelope(DEEPEST, keys=[ED_KEY]),
    "two-keys-minimal": suit.create_envelope(
        dataclasses.replace(BASE, uri=None, use_before=None, payload_format="raw"),
        keys=[ES_KEY, ED_KEY],
    ),
}


def _fast_or_refused(data: bytes) -> None:
    """Whatever the fast path accepts, the general decoder accepts identically."""
    fast = decode_fast(data, suit.DEFAULT_MAX_DEPTH)
    try:
        general = _decode_envelope(data, suit.DEFAULT_MAX_DEPTH)
    except suit.SUITError:
        assert fast is None
        with pytest.raises(suit.SUITError):
            suit.decode_envelope(data, cache=False)
        return
    if fast is not None:
        _assert_same(fast, general)


@SETTINGS
@given(name=st.sampled_from(sorted(ENVELOPES)), data=st.data())
def test_mutations_are_refused_by_both_or_decoded_alike(name: str, data: Any) -> None:
    original = ENVELOPES[name]
    index = data.draw(st.integers(min_value=0, max_value=len(original) - 1))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    if kind == "flip":
        mutated = bytearray(original)
        mutated[index] ^= data.draw(st.integers(min_value=1, max_value=255))
        out = bytes(mutated)
    elif kind == "truncate":
        out = original[:index]
    elif kind == "insert":
        out = original[:index] + data.draw(st.binary(min_size=1, max_size=4)) + original[index:]
    else:
        out = original[:index] + original[index + 1 :]
    _fast_or_refused(out)


def _rewrap(manifest: bytes, auth_rest: list[bytes] | None = None) -> bytes:
    """An unsigned envelope around ``manifest`` with its correct digest."""
    digest = cbor2.dumps([-16, hashlib.sha256(encode_bstr(manifest)).digest()])
    auth = cbor2.dumps([digest, *(auth_rest or [])])
    return b"\xd8\x6b\xa2\x02" + encode_bstr(auth) + b"\x03" + encode_bstr(manifest)


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_every_single_byte_flip_of_the_manifest_with_a_fixed_digest(name: str) -> None:
    # Flips that keep the digest right reach the structural checks of both paths.
    manifest = suit.decode_envelope(ENVELOPES[name]).manifest_bytes
    for index in range(len(manifest)):
        for mask in (0x01, 0x02, 0x10, 0x20, 0x80, 0xFF):
            mutated = bytearray(manifest)
            mutated[index] ^= mask
            _fast_or_refused(_rewrap(bytes(mutated)))


def test_non_preferred_heads_are_left_to_the_general_decoder() -> None:
    manifest = suit.decode_envelope(ENVELOPES["es256"]).manifest_bytes
    assert manifest.startswith(b"\xa8\x01\x01\x02\x19\x04\x12")  # sequence number 1042
    for longer in (b"\x1a\x00\x00\x04\x12", b"\x1b\x00\x00\x00\x00\x00\x00\x04\x12"):
        data = _rewrap(manifest.replace(b"\x02\x19\x04\x12", b"\x02" + longer, 1))
        assert decode_fast(data, 16) is None
        with pytest.raises(suit.SUITNonCanonicalError):
            suit.decode_envelope(data, cache=False)
    assert decode_fast(_rewrap(manifest), 16) is not None


def test_trailing_bytes_and_wrong_digest_are_left_to_the_general_decoder() -> None:
    data = ENVELOPES["es256"]
    assert decode_fast(data + b"\x00", 16) is None
    with pytest.raises(suit.SUITError):
        suit.decode_envelope(data + b"\x00", cache=False)
    manifest = suit.decode_envelope(data).manifest_bytes
    wrong = _rewrap(manifest).replace(manifest[-4:], manifest[-4:-1] + b"\x0e")
    assert decode_fast(wrong, 16) is None
    with pytest.raises(suit.SUITError):
        suit.decode_envelope(wrong, cache=False)


def test_other_layouts_take_the_general_path() -> None:
    text = suit.create_envelope(dataclasses.replace(BASE, text={"model-name": "x"}), keys=[ES_KEY])
    severed = suit.create_envelope(BASE, keys=[ES_KEY], sever=["install"])
    long_component = suit.create_envelope(
        dataclasses.replace(BASE, component_id=(b"\x00" * 24,)), keys=[ES_KEY]
    )
    for data in (text, severed, long_component):
        assert decode_fast(data, 16) is None
        assert suit.decode_envelope(data, cache=False).manifest.sequence_number == 1042


def test_depth_limit_below_the_layout_goes_to_the_general_decoder() -> None:
    data = suit.create_envelope(DEEPEST, keys=[ES_KEY])
    assert _decode_envelope(data, FAST_MIN_DEPTH)  # the general decoder accepts it there ...
    with pytest.raises(suit.SUITNestingError):  # ... and not one below
        _decode_envelope(data, FAST_MIN_DEPTH - 1)
    assert decode_fast(data, FAST_MIN_DEPTH - 1) is None
    with pytest.raises(suit.SUITNestingError):
        suit.decode_envelope(data, max_depth=FAST_MIN_DEPTH - 1, cache=False)


def test_use_before_out_of_range_is_left_to_the_general_decoder() -> None:
    manifest = suit.decode_envelope(ENVELOPES["es256"]).manifest_bytes
    seconds = int(BASE.use_before.timestamp())  # type: ignore[union-attr]
    old = b"\x04\x1a" + seconds.to_bytes(4, "big")
    assert old in manifest
    # the shared bstr grows by 4 bytes: rebuild its heads through cbor2
    m = cbor2.loads(manifest)
    common = cbor2.loads(m[3])
    common[4] = common[4].replace(old, b"\x04\x1b" + (2**63).to_bytes(8, "big"))
    m[3] = cbor2.dumps(common, canonical=True)
    data = _rewrap(cbor2.dumps(m, canonical=True))
    assert decode_fast(data, 16) is None
    with pytest.raises(suit.SUITValueError):
        suit.decode_envelope(data, cache=False)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(min_size=64, max_size=64),
        st.tuples(st.integers(0, 33), st.integers(0, 33), st.binary(min_size=64, max_size=64)).map(
            lambda z: (
                (b"\x00" * z[0] + z[2][z[0] : 32])[:32] + (b"\x00" * z[1] + z[2][32 + z[1] :])[:32]
            )
        ),
    )
)
def test_der_signature_is_encode_dss_signature(raw: bytes) -> None:
    expected = encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    assert _der_signature(raw) == expected


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_lazy_manifest_is_built_on_first_read_and_copies_whole(name: str) -> None:
    """The fast path leaves the manifest's fields to its first read (verifying reads none); a
    copy taken before that read holds the whole manifest, equal to the general decoder's, and
    no pending builder."""
    data = ENVELOPES[name]
    general = _decode_envelope(data, suit.DEFAULT_MAX_DEPTH).manifest
    names = {f.name for f in dataclasses.fields(suit.Manifest)}
    fast = decode_fast(data, suit.DEFAULT_MAX_DEPTH)
    assert fast is not None
    assert not names <= set(vars(fast.manifest))  # not built yet
    taken = copy.copy(fast.manifest)
    assert set(vars(taken)) == names
    assert taken == general
    assert copy.copy(general) == general  # a manifest built at once copies as before
    fast = decode_fast(data, suit.DEFAULT_MAX_DEPTH)
    assert fast is not None
    assert suit.verify_envelope(fast, [ES_KEY.public_key(), ED_KEY.public_key()]).ok
    assert fast.manifest.firmware_version == general.firmware_version
    assert set(vars(fast.manifest)) == names
    with pytest.raises(AttributeError):
        fast.manifest.no_such_field  # noqa: B018


_EXT_BYTES = b"\x39\x01\x00\x05\x39\x01\x01\x63raw\x39\x01\x00\x0f\x39\x01\x01\x0f"


@pytest.mark.parametrize(
    "uri",
    [b"coap://fw", _EXT_BYTES, _EXT_BYTES + b"\x15\x02\x03\x0f", b"x\x15\x02\x03\x0f", b""],
    ids=["plain", "holds-the-tail", "holds-tail-and-fetch", "holds-fetch", "empty"],
)
def test_install_forms_pattern_agrees_with_cutting_by_the_uri_head(uri: bytes) -> None:
    """A URI holding the bytes of what follows it in install: the one-pattern reading and the
    reading that cuts the URI by its head's length give the same answer."""
    from manifests.suit import fastpath

    head = bstr_header(len(uri))
    thead = bytes((head[0] + 0x20,)) + head[1:]  # a text string of that length
    for install in (
        b"\x8a\x14\xa3\x15" + thead + uri + _EXT_BYTES + b"\x15\x02\x03\x0f",
        b"\x86\x14\xa1\x15" + thead + uri + b"\x15\x02\x03\x0f",
        b"\x88\x14\xa2" + _EXT_BYTES + b"\x03\x0f",
        b"\x82\x03\x0f",
    ):
        assert fastpath._install(install) == fastpath._install_cut(install)
        assert fastpath._install(install) is not None
