"""Deltas in campaigns: the plan counts per stage how many devices get a delta and the bytes it
saves; a device whose installed image the server does not know exactly gets the full image; a
delta is computed once per (source, target) pair and stored content-addressed; the dispatcher
sends it, and a failed delta falls back to the full image once, as one attempt."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import sys
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import delivery, engine, planning, rollouts, selectors, services
from campaigns.device_services import (
    device_fw_installed,
    device_info_record,
    device_installed_images_record,
)
from campaigns.events import CommandResult, DeviceInfo, FwInstalled, FwStatus
from campaigns.models import Device, DeviceCommand, Rollout, RolloutState
from campaigns.spec import parse_spec
from campaigns.wording import rollout_text
from manifests import services as release_services
from manifests import suit
from manifests.errors import DeltaSettingError, PermissionDeniedError
from manifests.images import delta as deltas
from manifests.images import imgtool
from manifests.models import DeviceClass, FirmwareDelta
from manifests.selectors import manifest_params
from tests.campaigns.support import Catalog, make_devices, signed_report, spec_text
from tests.conftest import REPO_ROOT
from tests.helpers.deployment import DEFAULT_APPROVERS, release_from_envelope
from workers.tasks import device_event_task

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from _firmware_builds import build_program

sys.path.remove(str(REPO_ROOT / "benchmarks"))

pytestmark = pytest.mark.django_db

STAGES = "  - name: first\n    size: 50%\n  - name: rest\n    size: 50%\n"


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    work = tmp_path_factory.mktemp("programs")
    return build_program(work, release=1, functions=40), build_program(
        work, release=2, functions=40
    )


def _upload(catalog: Catalog, program: bytes, version: str) -> Any:
    return release_services.image_upload(
        data=imgtool.build_image(program, version=version, security_counter=2),
        actor=catalog.users["author"],
    )


def _release(catalog: Catalog, image: Any, *, precursors: tuple[bytes, ...]) -> Any:
    params = manifest_params(
        device_class=catalog.thermo,
        image=image,
        sequence_number=6,
        security_counter=2,
        version="1.2.0",
        use_before=timezone.now() + dt.timedelta(days=30),
    )
    envelope = suit.create_envelope(
        dataclasses.replace(params, precursor_digests=precursors), keys=[catalog.keys["author"]]
    )
    return release_from_envelope(
        catalog, envelope, name="thermo-1.2.0", approvers=DEFAULT_APPROVERS
    )


def _plan(catalog: Catalog) -> planning.Plan:
    return planning.campaign_plan(
        spec=parse_spec(spec_text("deltas", release="thermo-1.2.0", stages=STAGES)),
        now=timezone.now(),
    )


def test_plan_counts_deltas_and_bytes_saved_per_stage(
    catalog: Catalog, programs: tuple[bytes, bytes]
) -> None:
    old = _upload(catalog, programs[0], "1.0.0")
    unsigned = _upload(catalog, programs[0] + b"\x00" * 64, "1.0.0")
    new = _upload(catalog, programs[1], "1.2.0")
    _release(catalog, new, precursors=(bytes.fromhex(old.sha256),))
    make_devices(catalog, 6, prefix="known", installed_image_digest=old.sha256)
    make_devices(catalog, 3, prefix="unknown")  # installed image not known exactly
    make_devices(catalog, 2, prefix="unsigned", installed_image_digest=unsigned.sha256)

    plan = _plan(catalog)
    assert plan.cohort == 11
    assert plan.stage_delta == [0, 0]  # the class has not declared delta support
    assert FirmwareDelta.objects.count() == 0

    release_services.device_class_set_delta(
        device_class=catalog.thermo, delta_updates=True, compression="lzma", actor=catalog.admin
    )
    plan = _plan(catalog)
    delta = FirmwareDelta.objects.get()
    assert (delta.source, delta.target, delta.compression) == (old, new, "lzma")
    assert 0 < delta.size < new.size // 4
    assert sum(plan.stage_delta) == 6
    assert sum(plan.stage_saved) == 6 * (new.size - delta.size)
    first, rest = plan.as_dict()["stages"]
    assert first["delta"]["devices"] + rest["delta"]["devices"] == 6
    assert first["delta"]["bytes_saved"] == first["delta"]["devices"] * (new.size - delta.size)
    assert plan.as_dict()["image_size"] == new.size
    # The stored delta turns the old image into the new one.
    storage = release_services.image_storage()
    assert deltas.apply_delta(storage.read(old.sha256), storage.read(delta.sha256)) == storage.read(
        new.sha256
    )
    # Computed once per pair: planning again reuses it.
    _plan(catalog)
    assert FirmwareDelta.objects.count() == 1
    assert AuditEvent.objects.filter(action="delta.create").count() == 1


def test_standard_profile_class_plans_deltas_on_signed_source_components(
    catalog: Catalog, programs: tuple[bytes, bytes]
) -> None:
    """A class whose envelopes carry no custom keys gets deltas too: its manifest names the
    source in the drafts' form (source component + image-match), which the catalog takes."""
    # The fixture's class has a live extended release, which the profile service rightly
    # refuses to strand; this test only needs the class's profile, so set it on the row.
    DeviceClass.objects.filter(pk=catalog.thermo.pk).update(manifest_profile="standard")
    catalog.thermo.refresh_from_db()
    release_services.device_class_set_delta(
        device_class=catalog.thermo, delta_updates=True, actor=catalog.admin
    )
    old = _upload(catalog, programs[0], "1.0.0")
    new = _upload(catalog, programs[1], "1.2.0")
    release = _release(catalog, new, precursors=(bytes.fromhex(old.sha256),))
    manifest = suit.decode_envelope(bytes(release.manifest.envelope)).manifest
    assert manifest.profile == "standard" and manifest.security_counter is None
    assert len(manifest.components) == 2
    make_devices(catalog, 4, prefix="known", installed_image_digest=old.sha256)
    plan = _plan(catalog)
    assert sum(plan.stage_delta) == 4
    assert sum(plan.stage_saved) == 4 * (new.size - FirmwareDelta.objects.get().size)


def test_device_whose_installed_digest_is_unknown_gets_the_full_image(
    catalog: Catalog, programs: tuple[bytes, bytes]
) -> None:
    old = _upload(catalog, programs[0], "1.0.0")
    new = _upload(catalog, programs[1], "1.2.0")
    release = _release(catalog, new, precursors=(bytes.fromhex(old.sha256),))
    release_services.device_class_set_delta(
        device_class=catalog.thermo, delta_updates=True, actor=catalog.admin
    )
    never_seen = "ab" * 32  # a digest no stored image has
    for installed, reason in (
        ("", deltas.INSTALLED_IMAGE_UNKNOWN),
        (never_seen, deltas.PRECURSOR_NOT_SIGNED),
        (new.sha256, deltas.ALREADY_INSTALLED),
    ):
        offer = release_services.delta_offer(
            device_class=catalog.thermo,
            manifest=release.manifest,
            installed_image_digest=installed,
            signed_precursors=(bytes.fromhex(old.sha256),),
        )
        assert (offer.delta, offer.reason, offer.wire_size) == (None, reason, new.size)
    make_devices(catalog, 4, prefix="unknown")
    assert _plan(catalog).stage_delta == [0, 0]
    assert FirmwareDelta.objects.count() == 0


def test_image_class_offers_a_delta_on_a_known_image_not_in_the_manifest(
    catalog: Catalog, programs: tuple[bytes, bytes]
) -> None:
    """An MCUboot (`image`) device checks the result's own signature, so no signed precursor
    list is needed; a digest whose image is not stored still gets the full image."""
    old = _upload(catalog, programs[0], "1.0.0")
    new = _upload(catalog, programs[1], "1.2.0")
    release = _release(catalog, new, precursors=())
    release_services.device_class_update(
        device_class=catalog.thermo, delivery="image", delta_updates=True, actor=catalog.admin
    )
    offer = release_services.delta_offer(
        device_class=catalog.thermo,
        manifest=release.manifest,
        installed_image_digest=old.sha256,
        signed_precursors=(),
    )
    assert offer.delta is not None and offer.saved == new.size - offer.delta.size
    missing = release_services.delta_offer(
        device_class=catalog.thermo,
        manifest=release.manifest,
        installed_image_digest="cd" * 32,
        signed_precursors=(),
    )
    assert (missing.delta, missing.reason) == (None, deltas.INSTALLED_IMAGE_UNKNOWN)


def test_delta_setting_is_admin_only_and_checked(catalog: Catalog) -> None:
    with pytest.raises(PermissionDeniedError):
        release_services.device_class_set_delta(
            device_class=catalog.thermo, delta_updates=True, actor=catalog.users["author"]
        )
    with pytest.raises(DeltaSettingError):
        release_services.device_class_set_delta(
            device_class=catalog.thermo, compression="zip", actor=catalog.admin
        )
    catalog.thermo.refresh_from_db()
    assert (catalog.thermo.delta_updates, catalog.thermo.delta_compression) == (
        False,
        "heatshrink",
    )
    assert not AuditEvent.objects.filter(action="device_class.set_delta").exists()


def test_installed_digest_is_recorded_on_confirmed_install_and_cleared_on_another_version(
    catalog: Catalog,
) -> None:
    (device,) = make_devices(catalog, 1, prefix="d", firmware_version="1.1.0")
    manifest = catalog.release.manifest
    device_fw_installed(endpoint=device.endpoint, manifest_digest=manifest.manifest_digest)
    device.refresh_from_db()
    assert device.installed_image_digest == manifest.image_digest
    device_info_record(endpoint=device.endpoint, firmware_version="9.9.9")
    device.refresh_from_db()
    assert device.installed_image_digest == ""


# The three events a confirmed install brings: the gateway's command result (Update Result 1,
# with the device's signed report), its fw_installed, and the device information read at the
# registration after the reboot (the new version). Their order varies: the gateway follows the
# update and reads the new registration concurrently, and event batches may be applied by
# concurrent workers.
SUCCESS_EVENTS = ("command_result", "fw_installed", "device_info")


@pytest.mark.parametrize("order", list(itertools.permutations(SUCCESS_EVENTS)))
def test_installed_digest_is_recorded_whatever_order_the_success_events_arrive_in(
    catalog: Catalog, order: tuple[str, ...], django_capture_on_commit_callbacks: Any
) -> None:
    (device,) = make_devices(
        catalog, 1, prefix="d", model="thermo-v2", installed_image_digest="ab" * 32
    )
    now = timezone.now()
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("order")), actor=catalog.ops, now=now
    )
    rollout = _dispatch(catalog, now, campaign)
    manifest = catalog.release.manifest
    stamp = {"gateway_id": "gw-none", "at": now.timestamp()}
    events = {
        "command_result": CommandResult(
            command_id=str(rollout.command_id),
            ok=True,
            result={"phase": "succeeded", "result": 1},
            suit_report=signed_report(rollout),
            endpoint=device.endpoint,
            **stamp,
        ),
        "fw_installed": FwInstalled(
            endpoint=device.endpoint, manifest_digest=manifest.manifest_digest, **stamp
        ),
        "device_info": DeviceInfo(
            endpoint=device.endpoint,
            manufacturer="Acme Sensors",
            model="thermo-v2",
            firmware_version=manifest.version,
            **stamp,
        ),
    }
    for kind in order:
        with django_capture_on_commit_callbacks(execute=True):
            device_event_task.run(events[kind].to_dict())
    rollout.refresh_from_db()
    device.refresh_from_db()
    assert rollout.state == RolloutState.SUCCEEDED
    assert (device.firmware_version, device.installed_image_digest) == (
        manifest.version,
        manifest.image_digest,
    )


def test_installed_digest_is_recorded_when_the_engine_confirms_the_success(
    catalog: Catalog, django_capture_on_commit_callbacks: Any
) -> None:
    """Two events applied in concurrent transactions each saw half of the success (the result
    without the version, the version without the result): the engine's pass confirms it, and
    the image is recorded then."""
    (device,) = make_devices(catalog, 1, prefix="d", model="thermo-v2")
    now = timezone.now()
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("skew")), actor=catalog.ops, now=now
    )
    rollout = _dispatch(catalog, now, campaign)
    manifest = catalog.release.manifest
    Rollout.objects.filter(pk=rollout.pk).update(
        state=RolloutState.UPDATING, fw_result=1, report_verdict=rollouts.REPORT_VERIFIED
    )
    Device.objects.filter(pk=device.pk).update(firmware_version=manifest.version)
    with django_capture_on_commit_callbacks(execute=True):
        report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.succeeded == 1
    device.refresh_from_db()
    assert device.installed_image_digest == manifest.image_digest


def test_installed_digest_is_not_recorded_for_a_device_reporting_another_version_since(
    catalog: Catalog,
) -> None:
    (device,) = make_devices(catalog, 1, prefix="d", model="thermo-v2")
    now = timezone.now()
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("since")), actor=catalog.ops, now=now
    )
    rollout = _dispatch(catalog, now, campaign)
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.SUCCEEDED)
    # Another version was reported between the confirmation and the recording.
    Device.objects.filter(pk=device.pk).update(firmware_version="1.3.0")
    assert device_installed_images_record(rollout_ids=[rollout.pk]) == 0
    device.refresh_from_db()
    assert device.installed_image_digest == ""
    Device.objects.filter(pk=device.pk).update(firmware_version=catalog.release.manifest.version)
    assert device_installed_images_record(rollout_ids=[rollout.pk]) == 1
    assert device_installed_images_record(rollout_ids=[rollout.pk]) == 0  # already known


def _dispatch(catalog: Catalog, now: dt.datetime, campaign: Any) -> Rollout:
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 1
    return Rollout.objects.get(campaign=campaign)


def test_failed_delta_falls_back_to_the_full_image_once_as_one_attempt(
    catalog: Catalog, programs: tuple[bytes, bytes]
) -> None:
    old = _upload(catalog, programs[0], "1.0.0")
    new = _upload(catalog, programs[1], "1.2.0")
    _release(catalog, new, precursors=(bytes.fromhex(old.sha256),))
    release_services.device_class_set_delta(
        device_class=catalog.thermo, delta_updates=True, actor=catalog.admin
    )
    make_devices(catalog, 1, prefix="known", installed_image_digest=old.sha256)
    now = timezone.now()
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("fallback", release="thermo-1.2.0")), actor=catalog.ops, now=now
    )
    rollout = _dispatch(catalog, now, campaign)
    delta = FirmwareDelta.objects.get()
    args = DeviceCommand.objects.get(pk=rollout.command_id).args
    assert (args["delta_sha256"], args["delta_size"]) == (delta.sha256, delta.size)
    assert (rollout.payload, rollout.attempts) == ("delta", 1)
    assert selectors.campaign_status(campaign)["stages"][0]["payloads"] == {
        "delta": 1,
        "fallback": 0,
    }

    # The device refuses the delta (it reports Update Result 6): no retry policy is set, yet
    # the full image follows at once and the attempt is not counted twice.
    rollouts.rollouts_apply_event(
        event=CommandResult(
            command_id=str(rollout.command_id),
            ok=False,
            result={"phase": "downloading", "result": 6},
            error_code="lwm2m.fw_update_failed",
            permanent=True,
        ),
        now=now,
    )
    rollout.refresh_from_db()
    assert (rollout.state, rollout.payload, rollout.reason) == (
        RolloutState.PENDING,
        "fallback",
        "delta_fallback",
    )
    assert rollout.attempts == 0 and "unsupported_package" in rollout.detail
    assert "the delta failed on the device" in rollout_text(
        state=rollout.state, reason=rollout.reason
    )

    rollout = _dispatch(catalog, now, campaign)
    args = DeviceCommand.objects.get(pk=rollout.command_id).args
    assert "delta_sha256" not in args and args["image_sha256"] == new.sha256
    assert (rollout.payload, rollout.attempts) == ("fallback", 1)
    assert selectors.campaign_status(campaign)["stages"][0]["payloads"] == {
        "delta": 0,
        "fallback": 1,
    }

    # The full image fails too: that is the attempt's failure, with no second fallback.
    rollouts.rollouts_apply_event(
        event=CommandResult(
            command_id=str(rollout.command_id),
            ok=False,
            result={"phase": "downloading", "result": 5},
            error_code="lwm2m.fw_update_failed",
            permanent=True,
        ),
        now=now,
    )
    rollout.refresh_from_db()
    assert (rollout.state, rollout.reason, rollout.payload) == (
        RolloutState.FAILED,
        "integrity_check_failed",
        "fallback",
    )
    assert rollout.attempts == 1


def _delta_rollout(catalog: Catalog, programs: tuple[bytes, bytes], profile: str) -> Rollout:
    """One device of ``profile`` dispatched a delta on its recorded image."""
    old = _upload(catalog, programs[0], "1.0.0")
    new = _upload(catalog, programs[1], "1.2.0")
    suit_class = profile == "suit"
    _release(catalog, new, precursors=(bytes.fromhex(old.sha256),) if suit_class else ())
    release_services.device_class_update(
        device_class=catalog.thermo, delivery=profile, delta_updates=True, actor=catalog.admin
    )
    make_devices(catalog, 1, prefix="known", installed_image_digest=old.sha256)
    now = timezone.now()
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("wrong-base", release="thermo-1.2.0")),
        actor=catalog.ops,
        now=now,
    )
    rollout = _dispatch(catalog, now, campaign)
    assert rollout.payload == "delta"
    return rollout


def _refused(rollout: Rollout, *, report: str = "", refusal: str | None = None) -> Rollout:
    """The device ends the attempt with Update Result 6: its Object 5 report (which decides
    nothing for a delta: Result 6 alone does not say why), then the gateway's command result."""
    state = rollout.state
    endpoint = rollout.device.endpoint
    rollouts.rollouts_apply_event(event=FwStatus(endpoint=endpoint, state=0, result=6))
    rollout.refresh_from_db()
    assert (rollout.state, rollout.payload) == (state, "delta")
    result: dict[str, Any] = {"phase": "downloading", "result": 6}
    if refusal is not None:
        result["refusal"] = refusal
    rollouts.rollouts_apply_event(
        event=CommandResult(
            command_id=str(rollout.command_id),
            ok=False,
            result=result,
            error_code="lwm2m.fw_update_failed",
            error="update downloading with result 6",
            permanent=True,
            suit_report=report,
        ),
        now=timezone.now(),
    )
    rollout.refresh_from_db()
    return rollout


def _delta_failure(rollout: Rollout) -> str:
    """The failed delta's reason, kept as the start of the fallback's detail."""
    assert (rollout.state, rollout.payload, rollout.reason) == (
        RolloutState.PENDING,
        "fallback",
        "delta_fallback",
    )
    return rollout.detail.split(":", 1)[0]


def test_delta_to_the_wrong_base_is_recorded_as_wrong_precursor_from_the_signed_report(
    catalog: Catalog, programs: tuple[bytes, bytes]
) -> None:
    rollout = _delta_rollout(catalog, programs, "suit")
    report = signed_report(rollout, failure_code="device.wrong_precursor")
    rollout = _refused(rollout, report=report, refusal="wrong_precursor")
    assert _delta_failure(rollout) == "wrong_precursor"
    assert rollout.report_verdict == "report_failure"
    audited = AuditEvent.objects.get(action="rollout.device_report")
    assert "wrong precursor" in audited.details["detail"]


def test_wrong_precursor_claim_of_a_suit_device_without_its_signed_report_is_not_taken(
    catalog: Catalog, programs: tuple[bytes, bytes]
) -> None:
    """The gateway's Package Name reading is no SUIT device's word: its report (here a generic
    failure, then none) decides, and Result 6 stays an unsupported package."""
    rollout = _delta_rollout(catalog, programs, "suit")
    report = signed_report(rollout, failure_code="device.download_failed")
    rollout = _refused(rollout, report=report, refusal="wrong_precursor")
    assert _delta_failure(rollout) == "unsupported_package"


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [("wrong_precursor", "wrong_precursor"), (None, "unsupported_package")],
)
def test_delta_to_the_wrong_base_of_an_image_device_is_recorded_as_wrong_precursor(
    catalog: Catalog, programs: tuple[bytes, bytes], refusal: str | None, reason: str
) -> None:
    """An MCUboot device says it by Result 6 and the Package Name convention (the gateway's
    ``refusal``); Result 6 alone (a real client that cannot take the format) stays
    ``unsupported_package``."""
    rollout = _delta_rollout(catalog, programs, "image")
    assert _delta_failure(_refused(rollout, refusal=refusal)) == reason


def test_device_whose_installed_digest_is_unknown_is_dispatched_the_full_image(
    catalog: Catalog, programs: tuple[bytes, bytes]
) -> None:
    old = _upload(catalog, programs[0], "1.0.0")
    new = _upload(catalog, programs[1], "1.2.0")
    _release(catalog, new, precursors=(bytes.fromhex(old.sha256),))
    release_services.device_class_set_delta(
        device_class=catalog.thermo, delta_updates=True, actor=catalog.admin
    )
    make_devices(catalog, 1, prefix="unknown")
    now = timezone.now()
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("full", release="thermo-1.2.0")), actor=catalog.ops, now=now
    )
    rollout = _dispatch(catalog, now, campaign)
    args = DeviceCommand.objects.get(pk=rollout.command_id).args
    assert "delta_sha256" not in args and rollout.payload == ""
    assert FirmwareDelta.objects.count() == 0


def test_in_place_class_gets_an_in_place_delta_stored_beside_the_sequential_one(
    catalog: Catalog, programs: tuple[bytes, bytes]
) -> None:
    """A class whose devices have one slot takes in-place patches: a delta of its own form,
    computed once, which applies to the same base."""
    old = _upload(catalog, programs[0], "1.0.0")
    new = _upload(catalog, programs[1], "1.2.0")
    release = _release(catalog, new, precursors=(bytes.fromhex(old.sha256),))
    signed = (bytes.fromhex(old.sha256),)
    release_services.device_class_set_delta(
        device_class=catalog.thermo, delta_updates=True, actor=catalog.admin
    )
    sequential = release_services.delta_offer(
        device_class=catalog.thermo,
        manifest=release.manifest,
        installed_image_digest=old.sha256,
        signed_precursors=signed,
    )
    release_services.device_class_update(
        device_class=catalog.thermo, delta_patch_type="in-place", actor=catalog.admin
    )
    in_place = release_services.delta_offer(
        device_class=catalog.thermo,
        manifest=release.manifest,
        installed_image_digest=old.sha256,
        signed_precursors=signed,
    )
    assert sequential.delta is not None and in_place.delta is not None
    assert (sequential.delta.patch_type, in_place.delta.patch_type) == ("sequential", "in-place")
    storage = release_services.image_storage()
    blob = storage.read(in_place.delta.sha256)
    assert deltas.read_header(blob).patch_type is deltas.PatchType.IN_PLACE
    assert deltas.apply_delta(storage.read(old.sha256), blob) == storage.read(new.sha256)
    assert FirmwareDelta.objects.count() == 2
    with pytest.raises(DeltaSettingError):
        release_services.device_class_set_delta(
            device_class=catalog.thermo, patch_type="scattered", actor=catalog.admin
        )


@pytest.mark.parametrize(
    ("profile", "method", "deliverable"),
    [
        ("image", "pull", True),
        ("image", "push", True),
        ("suit", "pull", True),
        ("suit", "push", False),  # a pushed envelope carries no delta
        ("suit-integrated", "pull", False),  # the envelope carries the full payload
    ],
)
def test_plan_and_dispatch_offer_deltas_only_where_they_can_be_delivered(
    profile: str, method: str, deliverable: bool
) -> None:
    assert delivery.delta_deliverable(profile, method) is deliverable
