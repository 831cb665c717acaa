"""Delta images (pure): detools patches between two builds of one program, framed with the
digests of both ends; the device-side rule that applies them refuses a wrong base and a result
that is not the signed image, and the SUIT manifest carries the precursors it allows."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests import device_rules as dc
from manifests import suit
from manifests.images import delta as deltas
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
