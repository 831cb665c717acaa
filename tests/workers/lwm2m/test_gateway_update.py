"""Firmware updates of simulated devices through gateway commands, on loopback (no database:
events go to a list; the DB path is covered in test_gateway_registry.py)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from tests.workers.lwm2m.conftest import (
    DictFirmware,
    Harness,
    eventually,
    make_release,
    run_with_fleet,
)
from workers.lwm2m.errors import (
    DeviceOperationError,
    UnsupportedProtocolError,
    UpdateFailedError,
)
from workers.lwm2m.object5 import FwResult, FwState
from workers.lwm2m.simulator import Faults


def _firmware(release: Any) -> DictFirmware:
    import hashlib

    return DictFirmware(
        envelopes={release.digest: release.envelope},
        images={hashlib.sha256(release.payload).hexdigest(): release.payload},
    )


def test_full_update_of_several_devices(signing_key: Any) -> None:
    release = make_release(signing_key)

    async def scenario(h: Harness) -> None:
        import asyncio

        results = await asyncio.gather(
            *(
                h.gateway.run_operation(ep, "fw_update", {"manifest_digest": release.digest})
                for ep in h.fleet.devices
            )
        )
        assert all(r["phase"] == "succeeded" and r["result"] == 1 for r in results)
        for device in h.fleet.devices.values():
            assert device.state.version == "1.1.0"
            assert device.state.sequence_number == 2
            assert device.state.security_counter == 2
            assert device.fw.state is FwState.IDLE and device.fw.result is FwResult.SUCCESS
            assert device.boots == 1
        installed = {e["endpoint"] for e in h.sink.of("fw_installed")}
        assert installed == set(h.fleet.devices)
        # Re-registered after the reboot, and the gateway read the new version.
        await eventually(
            lambda: (
                {
                    e["endpoint"]
                    for e in h.sink.of("device_info")
                    if e["firmware_version"] == "1.1.0"
                }
                == set(h.fleet.devices)
            )
        )

    run_with_fleet(
        scenario, count=3, anchors=[signing_key.public_key()], firmware=_firmware(release)
    )


def test_standard_profile_devices_install_a_standard_envelope_and_extended_ones_refuse_it(
    signing_key: Any,
) -> None:
    release = make_release(signing_key, profile="standard")

    async def standard(h: Harness) -> None:
        result = await h.gateway.run_operation(
            next(iter(h.fleet.devices)), "fw_update", {"manifest_digest": release.digest}
        )
        assert (result["phase"], result["result"]) == ("succeeded", 1)
        device = next(iter(h.fleet.devices.values()))
        assert (device.state.version, device.state.sequence_number) == ("1.1.0", 2)
        assert device.state.security_counter == 1  # no counter in a standard manifest

    run_with_fleet(
        standard,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=_firmware(release),
        spec_kwargs={"manifest_profile": "standard"},
    )

    async def extended(h: Harness) -> None:
        endpoint = next(iter(h.fleet.devices))
        with pytest.raises(UpdateFailedError, match="result 6"):  # unsupported package type
            await h.gateway.run_operation(
                endpoint, "fw_update", {"manifest_digest": release.digest}
            )
        assert "refused device.component_mismatch" in h.fleet.devices[endpoint].events

    run_with_fleet(
        extended, count=1, anchors=[signing_key.public_key()], firmware=_firmware(release)
    )


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        (Faults(download_drop=True), FwResult.CONNECTION_LOST),
        (Faults(digest_mismatch=True), FwResult.INTEGRITY_CHECK_FAILURE),
        (Faults(no_space=True), FwResult.NOT_ENOUGH_FLASH),
        (Faults(boot_fail=True), FwResult.UPDATE_FAILED),
        (Faults(wrong_class=True), FwResult.UNSUPPORTED_PACKAGE_TYPE),
    ],
    ids=["download_drop", "digest_mismatch", "no_space", "boot_fail", "wrong_class"],
)
def test_fault_is_reported_with_its_update_result(
    signing_key: Any, faults: Faults, expected: FwResult
) -> None:
    release = make_release(signing_key)

    async def scenario(h: Harness) -> None:
        with pytest.raises(DeviceOperationError) as info:
            await h.gateway.run_operation(
                "sim-00000", "fw_update", {"manifest_digest": release.digest}
            )
        assert info.value.result["result"] == expected  # type: ignore[attr-defined]
        device = h.fleet.devices["sim-00000"]
        assert device.fw.result is expected
        assert device.state.version == "1.0.0"
        assert device.state.security_counter == 1

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=_firmware(release),
        faults={"sim-00000": faults},
    )


def test_unsigned_by_anchor_manifest_is_refused_by_device(signing_key: Any) -> None:
    from manifests import suit

    rogue = suit.generate_private_key("Ed25519")
    release = make_release(rogue)

    async def scenario(h: Harness) -> None:
        with pytest.raises(DeviceOperationError) as info:
            await h.gateway.run_operation(
                "sim-00000", "fw_update", {"manifest_digest": release.digest}
            )
        assert info.value.result["result"] == FwResult.INTEGRITY_CHECK_FAILURE  # type: ignore[attr-defined]

    run_with_fleet(
        scenario, count=1, anchors=[signing_key.public_key()], firmware=_firmware(release)
    )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"sequence_number": 1}, "rollback"),
        ({"security_counter": 0, "sequence_number": 5}, "security counter"),
        ({"use_before": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}, "expired"),
        ({"class_id": uuid.uuid4()}, "class"),
    ],
    ids=["rollback", "security_counter", "expired", "other_class"],
)
def test_device_refuses_bad_manifest(signing_key: Any, kwargs: dict[str, Any], reason: str) -> None:
    release = make_release(signing_key, **kwargs)

    async def scenario(h: Harness) -> None:
        with pytest.raises(DeviceOperationError) as info:
            await h.gateway.run_operation(
                "sim-00000", "fw_update", {"manifest_digest": release.digest}
            )
        assert info.value.result["result"] == FwResult.UNSUPPORTED_PACKAGE_TYPE  # type: ignore[attr-defined]
        assert any(e.startswith("refused") for e in h.fleet.devices["sim-00000"].events), reason

    run_with_fleet(
        scenario, count=1, anchors=[signing_key.public_key()], firmware=_firmware(release)
    )


def test_uri_scheme_device_did_not_list_is_never_written(signing_key: Any) -> None:
    release = make_release(signing_key)

    async def scenario(h: Harness) -> None:
        await eventually(lambda: len(h.sink.of("device_info")) == 1)
        with pytest.raises(UnsupportedProtocolError):
            await h.gateway.run_operation(
                "sim-00000",
                "fw_update",
                {"manifest_digest": release.digest, "uri": "https://example.invalid/x"},
            )
        assert h.fleet.devices["sim-00000"].fw.package_uri == ""
        assert not any(e.startswith("write_uri") for e in h.fleet.devices["sim-00000"].events)

    run_with_fleet(
        scenario, count=1, anchors=[signing_key.public_key()], firmware=_firmware(release)
    )


def test_cancel_writes_empty_uri(signing_key: Any) -> None:
    release = make_release(signing_key)

    async def scenario(h: Harness) -> None:
        device = h.fleet.devices["sim-00000"]
        device.state.faults.slow_link_seconds = 0.2
        await h.gateway.run_operation(
            "sim-00000", "write_uri", {"uri": h.gateway.package_uri(release.digest)}
        )
        assert device.fw.state is FwState.DOWNLOADING
        await h.gateway.run_operation("sim-00000", "fw_cancel", {})
        assert device.fw.state is FwState.IDLE
        assert device.fw.package_uri == ""

    run_with_fleet(
        scenario, count=1, anchors=[signing_key.public_key()], firmware=_firmware(release)
    )
