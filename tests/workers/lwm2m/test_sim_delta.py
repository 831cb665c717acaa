"""Delta updates on simulated devices of both profiles, through the gateway's ``fw_update`` with
``delta_sha256``, on loopback: a SUIT device takes a delta only on a precursor its signed
manifest names and checks the result against the signed image digest; an image (MCUboot) device
takes a delta only on its running image and MCUboot then checks the result's hash and signature.
Images are two gcc builds of one program (``benchmarks/_firmware_builds.py``)."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from typing import Any

import cbor2
import pytest

from manifests import suit
from manifests.images import delta as deltas
from manifests.images import imgtool
from manifests.suit.cbor import CBORTag, dumps, encode_bstr
from manifests.suit.constants import (
    ALG_SHA256,
    COND_IMAGE_MATCH,
    DIR_TRY_EACH,
    ENV_AUTH,
    ENV_MANIFEST,
    M_INSTALL,
    TAG_ENVELOPE,
)
from manifests.suit.cose import sign1
from tests.conftest import REPO_ROOT
from tests.workers.lwm2m.conftest import (
    CLASS_ID,
    VENDOR_ID,
    DictFirmware,
    Harness,
    eventually,
    run_with_fleet,
)
from workers.lwm2m.errors import DeviceOperationError
from workers.lwm2m.object5 import FwResult, FwState

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from _firmware_builds import build_program

sys.path.remove(str(REPO_ROOT / "benchmarks"))

EP = "sim-00000"


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """No Django settings needed: firmware is served from a dict."""


@dataclasses.dataclass(frozen=True)
class Builds:
    old: bytes
    new: bytes
    other: bytes


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    work = tmp_path_factory.mktemp("programs")
    old, new, other = (build_program(work, release=r, functions=40) for r in (1, 2, 3))
    return Builds(old, new, other)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _envelope(
    key: Any,
    payload: bytes,
    *,
    precursors: tuple[bytes, ...],
    profile: str = "extended",
    unconditioned: bool = False,
) -> tuple[str, bytes]:
    params = suit.ManifestParams(
        vendor_id=VENDOR_ID,
        class_id=CLASS_ID,
        sequence_number=2,
        version="1.1.0",
        security_counter=2,
        image_digest=hashlib.sha256(payload).digest(),
        image_size=len(payload),
        uri=None,
        component_id=(b"\x00",),
        payload_format="mcuboot",
        precursor_digests=precursors,
        profile=profile,
    )
    if unconditioned:
        envelope = _without_source_condition(params, key)
    else:
        envelope = suit.create_envelope(params, keys=[key])
    return suit.decode_envelope(envelope).manifest_digest.hex(), envelope


def _without_source_condition(params: suit.ManifestParams, key: Any) -> bytes:
    """A correctly signed envelope whose delta options set the source component and fetch the
    patch, but lost the image-match condition on the source (an author's tool bug or a forged
    manifest signed with a stolen key: either way the device must not patch unconditioned)."""
    manifest = cbor2.loads(suit.build_manifest(params))
    install = cbor2.loads(manifest[M_INSTALL])
    at = next(i for i in range(0, len(install), 2) if install[i] == DIR_TRY_EACH)
    options = []
    for raw in install[at + 1]:
        option = cbor2.loads(raw)
        for i in range(0, len(option), 2):
            if option[i] == COND_IMAGE_MATCH:
                del option[i : i + 2]
                break
        options.append(dumps(option))
    install[at + 1] = options
    manifest[M_INSTALL] = dumps(install)
    manifest_bytes = dumps(manifest)
    digest_bstr = dumps([ALG_SHA256, hashlib.sha256(encode_bstr(manifest_bytes)).digest()])
    auth = dumps([digest_bstr, sign1(digest_bstr, key)])
    return dumps(CBORTag(TAG_ENVELOPE, {ENV_AUTH: auth, ENV_MANIFEST: manifest_bytes}))


def _suit_run(
    key: Any,
    builds: Builds,
    *,
    installed: bytes,
    delta: bytes,
    precursors: tuple[bytes, ...],
    expect: FwResult,
    event: str,
    refusal: str | None = None,
    profile: str = "extended",
    unconditioned: bool = False,
) -> None:
    digest, envelope = _envelope(
        key, builds.new, precursors=precursors, profile=profile, unconditioned=unconditioned
    )
    firmware = DictFirmware(
        envelopes={digest: envelope}, images={_sha(builds.new): builds.new, _sha(delta): delta}
    )

    async def scenario(h: Harness) -> None:
        device = h.fleet.devices[EP]
        device.installed_image = installed
        args = {"manifest_digest": digest, "delta_sha256": _sha(delta)}
        if expect is FwResult.SUCCESS:
            outcome = await h.gateway.run_operation(EP, "fw_update", args)
            assert outcome["phase"] == "succeeded"
            assert device.installed_image == builds.new
            assert device.state.version == "1.1.0"
        else:
            with pytest.raises(DeviceOperationError) as info:
                await h.gateway.run_operation(EP, "fw_update", args)
            assert info.value.result["result"] == expect  # type: ignore[attr-defined]
            assert info.value.result.get("refusal") == refusal  # type: ignore[attr-defined]
            assert device.installed_image == installed and device.state.version == "1.0.0"
            assert "delta applied" not in device.events
        assert event in device.events, device.events

    run_with_fleet(
        scenario,
        count=1,
        anchors=[key.public_key()],
        firmware=firmware,
        spec_kwargs={"manifest_profile": profile},
    )


def test_suit_device_applies_a_delta_on_a_signed_precursor(
    signing_key: Any, builds: Builds
) -> None:
    _suit_run(
        signing_key,
        builds,
        installed=builds.old,
        delta=deltas.create_delta(builds.old, builds.new),
        precursors=(hashlib.sha256(builds.old).digest(),),
        expect=FwResult.SUCCESS,
        event="delta applied",
    )


def test_suit_delta_to_the_wrong_base_is_refused_on_the_device(
    signing_key: Any, builds: Builds
) -> None:
    _suit_run(
        signing_key,
        builds,
        installed=builds.other,
        delta=deltas.create_delta(builds.old, builds.new),
        precursors=(hashlib.sha256(builds.old).digest(), hashlib.sha256(builds.other).digest()),
        expect=FwResult.UNSUPPORTED_PACKAGE_TYPE,
        event="refused device.wrong_precursor",
        refusal="wrong_precursor",
    )


def test_suit_delta_on_a_precursor_the_manifest_does_not_name_is_refused(
    signing_key: Any, builds: Builds
) -> None:
    _suit_run(
        signing_key,
        builds,
        installed=builds.old,
        delta=deltas.create_delta(builds.old, builds.new),
        precursors=(hashlib.sha256(builds.other).digest(),),
        expect=FwResult.UNSUPPORTED_PACKAGE_TYPE,
        event="refused device.wrong_precursor",
        refusal="wrong_precursor",
    )


def test_suit_delta_whose_result_digest_differs_is_refused(
    signing_key: Any, builds: Builds
) -> None:
    """A delta to another image than the signed one (the server's or a proxy's substitution)."""
    _suit_run(
        signing_key,
        builds,
        installed=builds.old,
        delta=deltas.create_delta(builds.old, builds.other),
        precursors=(hashlib.sha256(builds.old).digest(),),
        expect=FwResult.INTEGRITY_CHECK_FAILURE,
        event="refused device.image_digest_mismatch",
    )


# --- the drafts' form in the standard profile (source component + image-match) -------------


def test_standard_profile_suit_device_applies_a_delta_on_its_source_component(
    signing_key: Any, builds: Builds
) -> None:
    _suit_run(
        signing_key,
        builds,
        installed=builds.old,
        delta=deltas.create_delta(builds.old, builds.new),
        precursors=(hashlib.sha256(builds.old).digest(),),
        expect=FwResult.SUCCESS,
        event="delta applied",
        profile="standard",
    )


def test_standard_profile_delta_to_the_wrong_base_is_refused_before_patching(
    signing_key: Any, builds: Builds
) -> None:
    """The running slot (source component) fails the signed image-match: wrong precursor, and
    nothing is patched (no "delta applied", the installed image is untouched)."""
    _suit_run(
        signing_key,
        builds,
        installed=builds.other,
        delta=deltas.create_delta(builds.old, builds.new),
        precursors=(hashlib.sha256(builds.old).digest(),),
        expect=FwResult.UNSUPPORTED_PACKAGE_TYPE,
        event="refused device.wrong_precursor",
        refusal="wrong_precursor",
        profile="standard",
    )


def test_standard_profile_delta_whose_result_digest_differs_is_refused(
    signing_key: Any, builds: Builds
) -> None:
    _suit_run(
        signing_key,
        builds,
        installed=builds.old,
        delta=deltas.create_delta(builds.old, builds.other),
        precursors=(hashlib.sha256(builds.old).digest(),),
        expect=FwResult.INTEGRITY_CHECK_FAILURE,
        event="refused device.image_digest_mismatch",
        profile="standard",
    )


@pytest.mark.parametrize("profile", ["standard", "extended"])
def test_delta_with_no_source_component_condition_is_not_patched(
    signing_key: Any, builds: Builds, profile: str
) -> None:
    """The installed image IS the delta's base, but the signed manifest fetches the patch onto
    the source component without conditioning it: the device refuses, it never patches an
    unconditioned source."""
    _suit_run(
        signing_key,
        builds,
        installed=builds.old,
        delta=deltas.create_delta(builds.old, builds.new),
        precursors=(hashlib.sha256(builds.old).digest(),),
        expect=FwResult.UNSUPPORTED_PACKAGE_TYPE,
        event="refused device.wrong_precursor",
        refusal="wrong_precursor",
        profile=profile,
        unconditioned=True,
    )


# --- image (MCUboot) profile ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mcuboot(tmp_path_factory: pytest.TempPathFactory, builds: Builds) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("boot")
    key = imgtool.keygen(tmp / "boot.pem")
    rogue = imgtool.keygen(tmp / "rogue.pem")
    ids = {"vendor_id": str(VENDOR_ID), "class_id": str(CLASS_ID)}

    def build(program: bytes, version: str, key_path: Any = key) -> bytes:
        return imgtool.build_image(
            program, version=version, security_counter=2, key_path=key_path, **ids
        )

    return {
        "public_pem": imgtool.public_key_pem(key).decode(),
        "old": build(builds.old, "1.0.0"),
        "new": build(builds.new, "1.1.0"),
        "other": build(builds.other, "1.0.1"),
        "rogue": build(builds.new, "1.1.0", key_path=rogue),
    }


def _image_run(
    mcuboot: dict[str, Any],
    *,
    installed: str,
    delta: bytes,
    expect: FwResult,
    event: str,
    refusal: str | None = None,
) -> None:
    firmware = DictFirmware(images={_sha(delta): delta})

    async def scenario(h: Harness) -> None:
        device = h.fleet.devices[EP]
        device.installed_image = mcuboot[installed]
        args = {
            "manifest_digest": _sha(mcuboot["new"]),
            "delivery": "image",
            "image_sha256": _sha(mcuboot["new"]),
            "delta_sha256": _sha(delta),
        }
        if expect is FwResult.SUCCESS:
            outcome = await h.gateway.run_operation(EP, "fw_update", args)
            assert outcome["phase"] == "succeeded"
            assert device.installed_image == mcuboot["new"]
            assert device.state.version == "1.1.0"
            await eventually(
                lambda: any(e["firmware_version"] == "1.1.0" for e in h.sink.of("device_info"))
            )
        else:
            with pytest.raises(DeviceOperationError) as info:
                await h.gateway.run_operation(EP, "fw_update", args)
            assert info.value.result["result"] == expect  # type: ignore[attr-defined]
            # The wrong base is told apart from any other Result 6 by the Package Name the
            # device reports beside it (docs/lwm2m.md).
            assert info.value.result.get("refusal") == refusal  # type: ignore[attr-defined]
            assert device.installed_image == mcuboot[installed]
            assert device.fw.state is FwState.IDLE
        assert any(e.startswith(event) for e in device.events), device.events

    run_with_fleet(
        scenario,
        count=1,
        anchors=[],
        firmware=firmware,
        spec_kwargs={"delivery": "image", "bootloader_key": mcuboot["public_pem"]},
    )


def test_image_device_applies_a_delta_and_mcuboot_boots_the_result(
    mcuboot: dict[str, Any],
) -> None:
    _image_run(
        mcuboot,
        installed="old",
        delta=deltas.create_delta(mcuboot["old"], mcuboot["new"]),
        expect=FwResult.SUCCESS,
        event="delta applied",
    )


def test_image_delta_to_the_wrong_base_is_refused_on_the_device(
    mcuboot: dict[str, Any],
) -> None:
    _image_run(
        mcuboot,
        installed="other",
        delta=deltas.create_delta(mcuboot["old"], mcuboot["new"]),
        expect=FwResult.UNSUPPORTED_PACKAGE_TYPE,
        event="refused device.wrong_precursor",
        refusal="wrong_precursor",
    )


def test_image_device_result_6_without_the_package_name_is_no_wrong_precursor_claim(
    mcuboot: dict[str, Any],
) -> None:
    """A package the device does not take at all (as a real MCUboot client answers a delta
    format it does not know): Result 6, and no claim about the base."""
    _image_run(
        mcuboot,
        installed="old",
        delta=b"not a delta, not an MCUboot image",
        expect=FwResult.UNSUPPORTED_PACKAGE_TYPE,
        event="refused device.not_mcuboot",
    )


def test_image_delta_whose_result_is_not_signed_by_the_bootloader_key_is_refused(
    mcuboot: dict[str, Any],
) -> None:
    """The delta applies cleanly, but to an image MCUboot's key did not sign: refused at
    Update (Result 5), the running image stays."""
    _image_run(
        mcuboot,
        installed="old",
        delta=deltas.create_delta(mcuboot["old"], mcuboot["rogue"]),
        expect=FwResult.INTEGRITY_CHECK_FAILURE,
        event="refused",
    )


def test_image_device_applies_an_in_place_delta(mcuboot: dict[str, Any]) -> None:
    _image_run(
        mcuboot,
        installed="old",
        delta=deltas.create_delta(
            mcuboot["old"], mcuboot["new"], patch_type=deltas.PatchType.IN_PLACE
        ),
        expect=FwResult.SUCCESS,
        event="delta applied",
    )
