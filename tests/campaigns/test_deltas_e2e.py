"""Deltas end to end: real gateway on loopback, simulated SUIT devices, Celery tasks applying
their events, the engine reconciling. Devices whose running image the server recorded get a
delta (the plan counts them); one device whose flash is not what the server recorded refuses
the delta as on the wrong base, falls back to the full image once and still succeeds, with one
attempt counted and the fallback reported."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from typing import Any

from django.utils import timezone

from audit.models import AuditEvent
from campaigns import engine, planning, selectors, services
from campaigns.models import Campaign, CampaignStatus, Device, Rollout, RolloutState
from campaigns.spec import parse_spec
from manifests import services as release_services
from manifests import suit
from manifests.images import imgtool
from manifests.models import FirmwareDelta
from manifests.selectors import manifest_params
from tests.campaigns.support import spec_text, wait_for
from tests.conftest import REPO_ROOT
from tests.helpers.deployment import DEFAULT_APPROVERS, release_from_envelope

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from _firmware_builds import build_program

sys.path.remove(str(REPO_ROOT / "benchmarks"))

STRAY = "sim-00003"  # its flash is not the image the server recorded


def test_fleet_gets_deltas_and_a_wrong_base_falls_back_to_the_full_image(
    fleet_factory: Any, catalog: Any, tmp_path: Any
) -> None:
    programs = [build_program(tmp_path, release=r, functions=40) for r in (1, 2, 3)]
    author = catalog.users["author"]
    old, new = (
        release_services.image_upload(
            data=imgtool.build_image(p, version=v, security_counter=2), actor=author
        )
        for p, v in ((programs[0], "1.0.0"), (programs[1], "1.2.0"))
    )
    params = manifest_params(
        device_class=catalog.thermo,
        image=new,
        sequence_number=6,
        security_counter=2,
        version="1.2.0",
        use_before=timezone.now() + dt.timedelta(days=30),
    )
    envelope = suit.create_envelope(
        dataclasses.replace(params, precursor_digests=(bytes.fromhex(old.sha256),)),
        keys=[catalog.keys["author"]],
    )
    release_from_envelope(catalog, envelope, name="thermo-1.2.0", approvers=DEFAULT_APPROVERS)
    release_services.device_class_set_delta(
        device_class=catalog.thermo, delta_updates=True, actor=catalog.admin
    )
    embedded = fleet_factory(catalog, count=4, wrong_class=0)
    storage = release_services.image_storage()
    old_bytes = storage.read(old.sha256)
    for endpoint, device in embedded.fleet.devices.items():
        device.installed_image = (
            old_bytes
            if endpoint != STRAY
            else imgtool.build_image(programs[2], version="1.0.0", security_counter=2)
        )
    Device.objects.update(installed_image_digest=old.sha256)

    spec = parse_spec(spec_text("deltas-e2e", release="thermo-1.2.0"))
    plan = planning.campaign_plan(spec=spec)
    delta = FirmwareDelta.objects.get()
    assert plan.stage_delta == [4]
    assert plan.stage_saved == [4 * (new.size - delta.size)]
    campaign, _ = services.campaign_apply(spec=spec, actor=catalog.ops)

    def reconcile() -> None:
        engine.campaign_reconcile(campaign.pk)

    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.COMPLETED,
        timeout=120,
        tick=reconcile,
    )
    rollouts = {r.device.endpoint: r for r in Rollout.objects.filter(campaign=campaign)}
    assert {r.state for r in rollouts.values()} == {RolloutState.SUCCEEDED}
    assert {ep: r.payload for ep, r in rollouts.items()} == {
        "sim-00000": "delta",
        "sim-00001": "delta",
        "sim-00002": "delta",
        STRAY: "fallback",
    }
    assert {r.attempts for r in rollouts.values()} == {1}
    assert selectors.campaign_status(campaign)["stages"][0]["payloads"] == {
        "delta": 3,
        "fallback": 1,
    }
    devices = embedded.fleet.devices
    assert "refused device.wrong_precursor" in devices[STRAY].events
    # The server recorded the refusal as the wrong base, from the device's signed report.
    refusals = AuditEvent.objects.filter(
        action="rollout.device_report", details__endpoint=STRAY, details__verdict="report_failure"
    )
    assert [e.details["detail"] for e in refusals] == [
        "device report: failure (wrong precursor, condition-failed) at command 3 in section 20"
    ]
    assert all("delta applied" in devices[ep].events for ep in devices if ep != STRAY)
    assert all(d.installed_image == storage.read(new.sha256) for d in devices.values())
    # The server now knows each device's image exactly again: the next release can be a delta
    # (recorded once each success committed, whichever of its events came last; the recording
    # may come just after the campaign's last success was counted).
    wait_for(
        lambda: (
            set(Device.objects.values_list("installed_image_digest", flat=True)) == {new.sha256}
        ),
        timeout=30,
        what="every device's installed image recorded",
    )
    assert FirmwareDelta.objects.count() == 1
