"""Delta images (pure): detools patches between two builds of one program, framed with the
digests of both ends; the device-side rule that applies them refuses a wrong base and a result
that is not the signed image, and the SUIT manifest carries the precursors it allows."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import uuid

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests import device_rules as dc
from manifests import suit
from manifests.images import delta as deltas
from manifests.suit.cbor import CBORTag, dumps, encode_bstr
from manifests.suit.constants import (
    ALG_SHA256,
    COND_IMAGE_MATCH,
    DIR_FETCH,
    DIR_OVERRIDE_PARAMETERS,
    DIR_SET_COMPONENT_INDEX,
    DIR_TRY_EACH,
    ENV_AUTH,
    ENV_MANIFEST,
    M_INSTALL,
    P_IMAGE_DIGEST,
    P_PRECURSOR_DIGESTS,
    P_SOURCE_COMPONENT,
    TAG_ENVELOPE,
)
from manifests.suit.errors import SUITError
from manifests.suit.model import ManifestParams
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from _firmware_builds import build_program

sys.path.remove(str(REPO_ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, bytes]:
    """Releases 1, 2 and 3 of the same program (a small change each)."""
    work = tmp_path_factory.mktemp("builds")
    return tuple(build_program(work, release=r, functions=40) for r in (1, 2, 3))  # type: ignore[return-value]


@pytest.mark.parametrize("patch_type", list(deltas.PatchType))
@pytest.mark.parametrize("compression", deltas.COMPRESSIONS)
def test_delta_round_trip_is_much_smaller_than_the_image(
    builds: tuple[bytes, bytes, bytes], patch_type: deltas.PatchType, compression: str
) -> None:
    old, new, _ = builds
    delta = deltas.create_delta(old, new, compression=compression, patch_type=patch_type)
    assert deltas.apply_delta(old, delta) == new
    assert len(delta) < len(new) // 4
    header = deltas.read_header(delta)
    assert header.source_sha256 == hashlib.sha256(old).digest()
    assert header.result_sha256 == hashlib.sha256(new).digest()
    assert header.result_size == len(new)
    assert header.patch_type is patch_type


def test_delta_is_deterministic(builds: tuple[bytes, bytes, bytes]) -> None:
    old, new, _ = builds
    assert deltas.create_delta(old, new) == deltas.create_delta(old, new)


def test_delta_to_the_wrong_base_is_refused_before_patching(
    builds: tuple[bytes, bytes, bytes],
) -> None:
    old, new, other = builds
    delta = deltas.create_delta(old, new)
    with pytest.raises(deltas.WrongPrecursorError):
        deltas.apply_delta(other, delta)


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda d: d[:10], deltas.DeltaFormatError),
        (lambda d: b"XXXX" + d[4:], deltas.DeltaFormatError),
        (lambda d: d[:4] + b"\x07" + d[5:], deltas.DeltaFormatError),
        (lambda d: d[: deltas.HEADER_SIZE + 8], deltas.DeltaPatchError),
        (lambda d: d[:-8] + bytes(8), deltas.DeltaPatchError),
    ],
    ids=["truncated-header", "magic", "patch-type", "truncated-patch", "zeroed-tail"],
)
def test_damaged_delta_is_refused(
    builds: tuple[bytes, bytes, bytes], mangle: object, error: type[Exception]
) -> None:
    old, new, _ = builds
    delta = deltas.create_delta(old, new, compression="lzma")
    with pytest.raises(error):
        deltas.apply_delta(old, mangle(delta))  # type: ignore[operator]


def test_delta_whose_result_digest_differs_is_refused(builds: tuple[bytes, bytes, bytes]) -> None:
    """A header naming another result than the patch makes: the bytes produced are checked."""
    old, new, other = builds
    delta = deltas.create_delta(old, new)
    forged = delta[:37] + hashlib.sha256(other).digest() + delta[69:]
    with pytest.raises(deltas.DeltaResultMismatchError):
        deltas.apply_delta(old, forged)


# --- the device's rule --------------------------------------------------------------------------


def test_device_applies_a_delta_and_checks_the_signed_digest(
    builds: tuple[bytes, bytes, bytes],
) -> None:
    old, new, _ = builds
    delta = deltas.create_delta(old, new)
    digest = hashlib.sha256(new).digest()
    assert dc.apply_delta_update(old, delta, result_digest=digest, signed_precursors=None) == new
    signed = (hashlib.sha256(old).digest(),)
    assert dc.apply_delta_update(old, delta, result_digest=digest, signed_precursors=signed) == new


def test_delta_to_the_wrong_base_is_refused_on_the_device(
    builds: tuple[bytes, bytes, bytes],
) -> None:
    old, new, other = builds
    delta = deltas.create_delta(old, new)
    with pytest.raises(dc.WrongPrecursorError) as caught:
        dc.apply_delta_update(
            other, delta, result_digest=hashlib.sha256(new).digest(), signed_precursors=None
        )
    assert caught.value.code == "device.wrong_precursor"


def test_delta_on_a_precursor_the_manifest_does_not_sign_is_refused(
    builds: tuple[bytes, bytes, bytes],
) -> None:
    """The delta's own header names the right base, but the signed manifest does not allow it."""
    old, new, other = builds
    delta = deltas.create_delta(old, new)
    with pytest.raises(dc.WrongPrecursorError):
        dc.apply_delta_update(
            old,
            delta,
            result_digest=hashlib.sha256(new).digest(),
            signed_precursors=(hashlib.sha256(other).digest(),),
        )


def test_delta_whose_result_digest_differs_is_refused_on_the_device(
    builds: tuple[bytes, bytes, bytes],
) -> None:
    """A valid delta to another image than the signed one (a substituted payload)."""
    old, new, other = builds
    delta = deltas.create_delta(old, other)
    with pytest.raises(dc.ImageDigestMismatchError) as caught:
        dc.apply_delta_update(
            old, delta, result_digest=hashlib.sha256(new).digest(), signed_precursors=None
        )
    assert caught.value.fw_result == dc.FwResult.INTEGRITY_CHECK_FAILURE


def test_forged_delta_header_is_refused_on_the_device(builds: tuple[bytes, bytes, bytes]) -> None:
    """Header claims the signed result, patch data makes another image."""
    old, new, other = builds
    delta = deltas.create_delta(old, other)
    forged = delta[:37] + hashlib.sha256(new).digest() + delta[69:]
    with pytest.raises(dc.ImageDigestMismatchError):
        dc.apply_delta_update(
            old, forged, result_digest=hashlib.sha256(new).digest(), signed_precursors=None
        )


def test_garbage_delivered_as_a_delta_is_refused_on_the_device(
    builds: tuple[bytes, bytes, bytes],
) -> None:
    old, new, _ = builds
    with pytest.raises(dc.DeltaFailedError):
        dc.apply_delta_update(
            old, new, result_digest=hashlib.sha256(new).digest(), signed_precursors=None
        )


# --- the signed manifest ------------------------------------------------------------------------

PARAMS = ManifestParams(
    vendor_id=uuid.UUID(int=1),
    class_id=uuid.UUID(int=2),
    sequence_number=7,
    version="1.2.0",
    security_counter=1,
    image_digest=b"\x11" * 32,
    image_size=100,
    uri="coap://fw.example/img",
    payload_format="mcuboot",
)


def test_manifest_names_the_precursors_a_delta_may_apply_to() -> None:
    precursors = (b"\xaa" * 32, b"\xbb" * 32)
    envelope = suit.create_envelope(
        dataclasses.replace(PARAMS, precursor_digests=precursors), keys=[]
    )
    manifest = suit.decode_envelope(envelope).manifest
    assert manifest.precursor_digests == precursors
    assert dc.facts_from_manifest(manifest).precursor_digests == precursors
    plain = suit.decode_envelope(suit.create_envelope(PARAMS, keys=[])).manifest
    assert plain.precursor_digests == ()


@pytest.mark.parametrize(
    "changes",
    [
        {"precursor_digests": (b"\xaa" * 31,)},
        {"precursor_digests": (b"\xaa" * 32, b"\xaa" * 32)},
    ],
    ids=["short-digest", "duplicate"],
)
def test_bad_precursor_parameters_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(SUITError):
        suit.create_envelope(dataclasses.replace(PARAMS, **changes), keys=[])  # type: ignore[arg-type]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    patch_type=st.sampled_from(list(deltas.PatchType)),
    compression=st.sampled_from(deltas.COMPRESSIONS),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_mutated_delta_is_refused_with_a_delta_error_only(
    builds: tuple[bytes, bytes, bytes],
    patch_type: deltas.PatchType,
    compression: str,
    edits: list[tuple[int, int]],
    cut: int | None,
) -> None:
    """Damaged patch data never escapes as another exception (a device must answer with a
    reason, not crash) and never yields anything but the exact result."""
    old, new, _ = builds
    delta = bytearray(deltas.create_delta(old, new, compression=compression, patch_type=patch_type))
    body = len(delta) - deltas.HEADER_SIZE
    for at, value in edits:
        delta[deltas.HEADER_SIZE + at % body] = value
    if cut is not None:
        delta = delta[: deltas.HEADER_SIZE + cut % body]
    try:
        result = deltas.apply_delta(old, bytes(delta))
    except deltas.DeltaError:
        return
    assert result == new


# --- the drafts' form: a source component conditioned by image-match ----------------------------


def _install(envelope: bytes) -> list[object]:
    manifest = cbor2.loads(suit.decode_envelope(envelope).manifest_bytes)
    return cbor2.loads(manifest[M_INSTALL])  # type: ignore[no-any-return]


def _resigned(manifest: dict[int, object]) -> bytes:
    """An unsigned envelope (digest only) around an edited manifest."""
    manifest_bytes = dumps(manifest)
    digest_bstr = dumps([ALG_SHA256, hashlib.sha256(encode_bstr(manifest_bytes)).digest()])
    return dumps(
        CBORTag(TAG_ENVELOPE, {ENV_AUTH: dumps([digest_bstr]), ENV_MANIFEST: manifest_bytes})
    )


@pytest.mark.parametrize("profile", suit.PROFILES)
def test_delta_manifest_round_trips_in_the_drafts_form(profile: str) -> None:
    precursors = (b"\xaa" * 32, b"\xbb" * 32)
    p = dataclasses.replace(PARAMS, precursor_digests=precursors, profile=profile)
    envelope = suit.create_envelope(p, keys=[])
    assert suit.create_envelope(p, keys=[]) == envelope  # deterministic
    manifest = suit.decode_envelope(envelope).manifest
    assert manifest.precursor_digests == precursors
    assert manifest.components == ((b"00",), (b"00", b"running"))
    assert manifest.image_digest == PARAMS.image_digest  # the result's, not a precursor's
    assert manifest.uri == PARAMS.uri and manifest.profile == profile
    install = _install(envelope)
    assert all(
        not isinstance(a, dict) or P_PRECURSOR_DIGESTS not in a for a in install[1::2]
    )  # no custom -259 written
    at = next(i for i in range(0, len(install), 2) if install[i] == DIR_TRY_EACH)
    options = [cbor2.loads(raw) for raw in install[at + 1]]  # type: ignore[union-attr]
    assert len(options) == 3
    for option, digest in zip(options, precursors, strict=False):
        assert option == [
            DIR_SET_COMPONENT_INDEX, 1,
            DIR_OVERRIDE_PARAMETERS, {P_IMAGE_DIGEST: dumps([ALG_SHA256, digest])},
            COND_IMAGE_MATCH, 15,
            DIR_SET_COMPONENT_INDEX, 0,
            DIR_OVERRIDE_PARAMETERS, {P_SOURCE_COMPONENT: 1},
            DIR_FETCH, 2,
        ]  # fmt: skip
    assert options[-1] == [DIR_SET_COMPONENT_INDEX, 0, DIR_FETCH, 2]  # the full image
    assert install[at + 2 :] == [DIR_SET_COMPONENT_INDEX, 0, COND_IMAGE_MATCH, 15]
    facts = dc.facts_from_manifest(manifest)
    assert facts.precursor_digests == precursors


def _edit_options(envelope: bytes, edit: object) -> bytes:
    manifest = cbor2.loads(suit.decode_envelope(envelope).manifest_bytes)
    install = cbor2.loads(manifest[M_INSTALL])
    at = next(i for i in range(0, len(install), 2) if install[i] == DIR_TRY_EACH)
    install[at + 1] = [dumps(edit(cbor2.loads(raw))) for raw in install[at + 1]]  # type: ignore[operator]
    manifest[M_INSTALL] = dumps(install)
    return _resigned(manifest)


def test_delta_source_without_image_match_names_no_precursor() -> None:
    """A manifest that fetches the patch onto an unconditioned source authorises no delta."""
    p = dataclasses.replace(PARAMS, precursor_digests=(b"\xaa" * 32,))

    def drop_condition(option: list[object]) -> list[object]:
        return [c for i, c in enumerate(option) if i not in (4, 5)] if len(option) > 4 else option

    edited = _edit_options(suit.create_envelope(p, keys=[]), drop_condition)
    assert suit.decode_envelope(edited).manifest.precursor_digests == ()


def test_delta_source_digest_overridden_after_its_match_names_no_precursor() -> None:
    """The condition passed on one digest, then the source's digest was swapped: void."""
    p = dataclasses.replace(PARAMS, precursor_digests=(b"\xaa" * 32,))

    def override_after(option: list[object]) -> list[object]:
        if len(option) <= 4:
            return option
        swap = [DIR_OVERRIDE_PARAMETERS, {P_IMAGE_DIGEST: dumps([ALG_SHA256, b"\xcc" * 32])}]
        return [*option[:6], *swap, *option[6:]]

    edited = _edit_options(suit.create_envelope(p, keys=[]), override_after)
    assert suit.decode_envelope(edited).manifest.precursor_digests == ()


def test_custom_precursor_parameter_is_still_read() -> None:
    """Envelopes in the earlier custom form (-259 in install) keep their precursors."""
    manifest = cbor2.loads(suit.build_manifest(PARAMS))
    install = cbor2.loads(manifest[M_INSTALL])
    install[1][P_PRECURSOR_DIGESTS] = dumps([[ALG_SHA256, b"\xaa" * 32]])
    manifest[M_INSTALL] = dumps(install)
    decoded = suit.decode_envelope(_resigned(manifest)).manifest
    assert decoded.precursor_digests == (b"\xaa" * 32,)
    assert decoded.components == ((b"00",),)
