"""Dispatch checks (pure): each attack or mistake is refused with its reason."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from campaigns import checks
from manifests import device_rules as dc
from manifests.services.releases import ReleaseDispatchState

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, "acme.example")
CLASS = uuid.uuid5(VENDOR, "thermo-v2")
IDENTITY = dc.DeviceIdentity(
    vendor_id=VENDOR, class_id=CLASS, component_id=(b"\x00",), payload_format="mcuboot"
)
MANIFEST = dc.ManifestFacts(
    vendor_id=VENDOR,
    class_id=CLASS,
    sequence_number=10,
    security_counter=3,
    firmware_version="2.0.0",
    use_before=NOW + dt.timedelta(days=1),
    image_digest=b"\x01" * 32,
    image_size=4096,
    components=((b"\x00",),),
    payload_format="mcuboot",
    uri=None,
)
DEVICE = checks.DeviceFacts(
    endpoint="dev-1",
    identity=IDENTITY,
    installed=dc.InstalledFirmware(version="1.0.0", sequence_number=5, security_counter=2),
    installed_version=(1, 0, 0, 0),
    clock_offset_seconds=1.5,
)
APPROVED = ReleaseDispatchState(revoked=False, approved=True, summary="ok", rollback=False)


def run(manifest=MANIFEST, version=(2, 0, 0, 0), device=DEVICE, release=APPROVED):
    return checks.check_dispatch(
        manifest,
        version,
        device=device,
        release=release,
        now=NOW,
        max_clock_skew=dt.timedelta(minutes=5),
    )


def test_eligible_device_passes():
    assert run() is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"release": dataclasses.replace(APPROVED, revoked=True)}, checks.RELEASE_REVOKED),
        ({"release": dataclasses.replace(APPROVED, approved=False)}, checks.NOT_APPROVED),
        ({"device": dataclasses.replace(DEVICE, identity=None)}, checks.UNMAPPED_DEVICE),
        (
            {"manifest": dataclasses.replace(MANIFEST, vendor_id=uuid.uuid4())},
            checks.VENDOR_MISMATCH,
        ),
        ({"manifest": dataclasses.replace(MANIFEST, class_id=uuid.uuid4())}, checks.CLASS_MISMATCH),
        (
            {"manifest": dataclasses.replace(MANIFEST, components=((b"\x01",),))},
            checks.COMPONENT_MISMATCH,
        ),
        (
            # a second component that is not the delta source (the running slot)
            {"manifest": dataclasses.replace(MANIFEST, components=((b"\x00",), (b"\x00", b"x")))},
            checks.COMPONENT_MISMATCH,
        ),
        (
            {"manifest": dataclasses.replace(MANIFEST, payload_format="raw")},
            checks.COMPONENT_MISMATCH,
        ),
        ({"manifest": dataclasses.replace(MANIFEST, sequence_number=5)}, checks.ALREADY_CURRENT),
        ({"manifest": dataclasses.replace(MANIFEST, sequence_number=4)}, checks.ROLLBACK_SEQUENCE),
        ({"manifest": dataclasses.replace(MANIFEST, security_counter=1)}, checks.ROLLBACK_COUNTER),
        ({"manifest": dataclasses.replace(MANIFEST, use_before=NOW)}, checks.EXPIRED),
        ({"device": dataclasses.replace(DEVICE, clock_offset_seconds=-301.0)}, checks.CLOCK_SKEW),
        ({"version": (0, 9, 0, 0)}, checks.VERSION_DOWNGRADE),
    ],
    ids=[
        "revoked",
        "not-approved",
        "unmapped",
        "wrong-vendor",
        "wrong-class",
        "wrong-component",
        "second-component-not-the-source-slot",
        "wrong-payload-format",
        "already-current",
        "rollback-to-lower-sequence",
        "rollback-of-security-counter",
        "expired-manifest",
        "clock-skew",
        "version-downgrade",
    ],
)
def test_refusals(change, reason):
    refusal = run(**change)
    assert refusal is not None and refusal.reason == reason, refusal


def test_rollback_release_may_install_an_older_version_with_a_higher_sequence():
    rollback = dataclasses.replace(APPROVED, rollback=True)
    assert run(version=(0, 9, 0, 0), release=rollback) is None


def test_unknown_device_clock_does_not_block():
    assert run(device=dataclasses.replace(DEVICE, clock_offset_seconds=None)) is None
