"""Hostile inputs: mutated valid envelopes and random data only ever give a SUITError or a
failed verification, never another exception and never a valid result."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from manifests import suit

ES_KEY = suit.generate_private_key("ES256")
ED_KEY = suit.generate_private_key("Ed25519")
PUBLIC = [ES_KEY.public_key(), ED_KEY.public_key()]
PARAMS = suit.ManifestParams(
    vendor_id=suit.vendor_id("acme.example"),
    class_id=suit.class_id(suit.vendor_id("acme.example"), "thermo"),
    sequence_number=42,
    version="2.0.1+7",
    security_counter=9,
    image_digest=hashlib.sha256(b"image").digest(),
    image_size=5,
    uri="coaps://fw.acme.example/images/42",
    use_before=dt.datetime(2040, 1, 1, tzinfo=dt.UTC),
    text={"model-name": "thermo", "manifest-description": "release"},
)
ENVELOPES = {
    "es256": suit.create_envelope(PARAMS, keys=[ES_KEY]),
    "ed25519": suit.create_envelope(PARAMS, keys=[ED_KEY]),
    "both-severed": suit.create_envelope(PARAMS, keys=[ES_KEY, ED_KEY], sever=["install", "text"]),
}
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Overrides the Django storage fixture: the codec tests need no settings."""


def _never_valid(data: bytes, original: bytes) -> None:
    try:
        env = suit.decode_envelope(data, cache=False)
    except suit.SUITError as exc:
        assert exc.code.startswith("suit.")
        return
    result = suit.verify_envelope(env, PUBLIC)
    if result.ok:
        # Still valid only if nothing signed changed: same manifest bytes and signed digest.
        before = suit.decode_envelope(original)
        assert env.manifest_bytes == before.manifest_bytes
        assert env.digest_bstr == before.digest_bstr
        assert env.manifest == before.manifest


@FUZZ
@given(name=st.sampled_from(sorted(ENVELOPES)), data=st.data())
def test_byte_flips_never_yield_a_valid_different_envelope(name: str, data: Any) -> None:
    original = ENVELOPES[name]
    index = data.draw(st.integers(min_value=0, max_value=len(original) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    mutated = bytearray(original)
    mutated[index] ^= mask
    _never_valid(bytes(mutated), original)


@FUZZ
@given(name=st.sampled_from(sorted(ENVELOPES)), data=st.data())
def test_truncations_insertions_and_deletions_are_refused(name: str, data: Any) -> None:
    original = ENVELOPES[name]
    index = data.draw(st.integers(min_value=0, max_value=len(original)))
    kind = data.draw(st.sampled_from(["truncate", "insert", "delete", "duplicate"]))
    if kind == "truncate":
        mutated = original[:index]
    elif kind == "insert":
        mutated = original[:index] + data.draw(st.binary(min_size=1, max_size=4)) + original[index:]
    elif kind == "delete":
        assume(index < len(original))
        mutated = original[:index] + original[index + 1 :]
    else:
        mutated = original[:index] + original[index : index + 8] + original[index:]
    assume(mutated != original)
    with pytest.raises(suit.SUITError):
        suit.decode_envelope(mutated, cache=False)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(suit.SUITError):
        suit.decode_envelope(data, cache=False)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_after_the_envelope_tag_are_refused(data: bytes) -> None:
    with pytest.raises(suit.SUITError):
        suit.decode_envelope(b"\xd8\x6b" + data, cache=False)


_cbor_values = st.recursive(
    st.one_of(
        st.integers(min_value=-(2**64), max_value=2**64 - 1),
        st.binary(max_size=40),
        st.text(max_size=20),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=False),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.integers(min_value=-300, max_value=30), children, max_size=5),
        st.builds(lambda v: cbor2.dumps(v), children),  # bstr-wrapped CBOR, as SUIT nests it
        st.builds(cbor2.CBORTag, st.sampled_from([1, 2, 18, 37, 107, 112]), children),
    ),
    max_leaves=30,
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([2, 3, 16, 20, 23, 99, "payload"]), _cbor_values, min_size=1, max_size=5
    )
)
def test_random_structures_in_an_envelope_are_refused(members: dict[Any, Any]) -> None:
    data = cbor2.dumps(cbor2.CBORTag(107, members), canonical=True)
    with pytest.raises(suit.SUITError):
        suit.decode_envelope(data, cache=False)


@FUZZ
@given(manifest=_cbor_values)
def test_random_manifests_with_a_correct_digest_are_refused_or_decoded(manifest: Any) -> None:
    mbytes = cbor2.dumps(manifest, canonical=True)
    digest = cbor2.dumps([-16, hashlib.sha256(cbor2.dumps(mbytes)).digest()])
    data = cbor2.dumps(cbor2.CBORTag(107, {2: cbor2.dumps([digest]), 3: mbytes}))
    try:
        env = suit.decode_envelope(data, cache=False)
    except suit.SUITError:
        return
    assert env.manifest.manifest_version == 1


@FUZZ
@given(block=st.one_of(st.binary(max_size=120), _cbor_values.map(cbor2.dumps)))
def test_random_signature_blocks_are_refused_or_fail_verification(block: bytes) -> None:
    original = ENVELOPES["es256"]
    try:
        signed = suit.add_signatures(original, [block])
    except suit.SUITError:
        return
    env = suit.decode_envelope(signed, cache=False)
    result = suit.verify_envelope(env, [ED_KEY.public_key()])
    assert not result.ok


@FUZZ
@given(st.binary(max_size=200))
def test_read_envelope_input_only_raises_suit_errors(data: bytes) -> None:
    try:
        out = suit.read_envelope_input(data)
    except suit.SUITError:
        return
    assert isinstance(out, bytes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["es256", "ed25519"])
def test_every_single_byte_flip_is_refused_or_fails_verification(name: str) -> None:
    original = ENVELOPES[name]
    key = ES_KEY if name == "es256" else ED_KEY
    for index in range(len(original)):
        for mask in range(1, 256):
            mutated = bytearray(original)
            mutated[index] ^= mask
            try:
                env = suit.decode_envelope(bytes(mutated), cache=False)
            except suit.SUITError:
                continue
            assert not suit.verify_envelope(env, [key.public_key()]).ok, (index, mask)
