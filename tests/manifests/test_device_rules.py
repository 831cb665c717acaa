"""Device-side checks (pure): each attack named, each refusal specific, with its Update Result."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import uuid

import pytest

from manifests import device_rules as dc
from manifests.device_rules import FwResult

VENDOR, CLASS = uuid.uuid4(), uuid.uuid4()
PAYLOAD = b"image" * 100
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DEVICE = dc.DeviceIdentity(VENDOR, CLASS, (b"\x00",), "mcuboot", slot_size=4096)
INSTALLED = dc.InstalledFirmware("1.0.0", sequence_number=5, security_counter=3)
GOOD = dc.ManifestFacts(
    vendor_id=VENDOR,
    class_id=CLASS,
    sequence_number=6,
    security_counter=3,
    firmware_version="1.1.0",
    use_before=NOW + dt.timedelta(days=1),
    image_digest=hashlib.sha256(PAYLOAD).digest(),
    image_size=len(PAYLOAD),
    components=((b"\x00",),),
    payload_format="mcuboot",
    uri=None,
)


def check(**changes: object) -> None:
    dc.check_manifest(
        dataclasses.replace(GOOD, **changes), device=DEVICE, installed=INSTALLED, now=NOW
    )


def test_good_manifest_and_payload_pass() -> None:
    check()
    dc.check_payload(PAYLOAD, GOOD)
    dc.require_signature([b"kid"])


@pytest.mark.parametrize(
    ("changes", "error", "result"),
    [
        ({"vendor_id": uuid.uuid4()}, dc.VendorMismatchError, FwResult.UNSUPPORTED_PACKAGE_TYPE),
        ({"class_id": uuid.uuid4()}, dc.ClassMismatchError, FwResult.UNSUPPORTED_PACKAGE_TYPE),
        (
            {"components": ((b"\x01",),)},
            dc.ComponentMismatchError,
            FwResult.UNSUPPORTED_PACKAGE_TYPE,
        ),
        ({"payload_format": "raw"}, dc.ComponentMismatchError, FwResult.UNSUPPORTED_PACKAGE_TYPE),
        ({"sequence_number": 5}, dc.RollbackError, FwResult.UNSUPPORTED_PACKAGE_TYPE),
        ({"sequence_number": 1}, dc.RollbackError, FwResult.UNSUPPORTED_PACKAGE_TYPE),
        ({"security_counter": 2}, dc.SecurityCounterError, FwResult.UNSUPPORTED_PACKAGE_TYPE),
        ({"use_before": NOW}, dc.ExpiredManifestError, FwResult.UNSUPPORTED_PACKAGE_TYPE),
        ({"image_size": 5000}, dc.NoSpaceError, FwResult.NOT_ENOUGH_FLASH),
        ({"image_digest": None}, dc.MissingFieldError, FwResult.UNSUPPORTED_PACKAGE_TYPE),
        ({"sequence_number": None}, dc.MissingFieldError, FwResult.UNSUPPORTED_PACKAGE_TYPE),
    ],
    ids=[
        "wrong_vendor",
        "wrong_class",
        "wrong_component",
        "wrong_format",
        "replay_same_sequence",
        "rollback_to_lower_sequence",
        "security_counter_below_device",
        "expired_manifest",
        "no_space",
        "missing_digest",
        "missing_sequence",
    ],
)
def test_attack_is_refused(changes: dict[str, object], error: type, result: FwResult) -> None:
    with pytest.raises(error) as info:
        check(**changes)
    assert info.value.fw_result is result


def test_security_counter_may_be_equal_for_roll_forward() -> None:
    check(security_counter=3, sequence_number=7)


def test_tampered_payload_is_refused() -> None:
    with pytest.raises(dc.ImageDigestMismatchError) as info:
        dc.check_payload(b"x" + PAYLOAD[1:], GOOD)
    assert info.value.fw_result is FwResult.INTEGRITY_CHECK_FAILURE


def test_truncated_payload_is_refused() -> None:
    with pytest.raises(dc.ImageSizeMismatchError):
        dc.check_payload(PAYLOAD[:-1], GOOD)


def test_unsigned_manifest_is_refused() -> None:
    with pytest.raises(dc.SignatureCheckError) as info:
        dc.require_signature([])
    assert info.value.fw_result is FwResult.INTEGRITY_CHECK_FAILURE


def test_expiry_uses_the_device_clock_not_ours() -> None:
    skewed_device_now = GOOD.use_before + dt.timedelta(seconds=1)  # type: ignore[operator]
    with pytest.raises(dc.ExpiredManifestError):
        dc.check_manifest(GOOD, device=DEVICE, installed=INSTALLED, now=skewed_device_now)
