"""End to end, a trust-policy campaign: the real gateway serving from the database and simulated
SUIT devices holding their class's policy v1 (security: sec alone). A release approved by qa and
sec2 is refused by every device (v1 does not list sec2); policy v2 (security: sec or sec2) goes
out through a staged campaign, stage 1 (one device) then stage 2 (the rest), each device's
install confirmed by its signed report and recorded in the registry; afterwards the same release
installs on the whole fleet through an ordinary campaign."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns import device_services, engine, planning, services
from campaigns.models import (
    Campaign,
    CampaignStatus,
    CommandStatus,
    Device,
    DeviceCommand,
    Rollout,
    RolloutState,
)
from campaigns.spec import parse_spec
from tests.campaigns.support import (
    Catalog,
    make_release,
    release_trust_policy,
    spec_text,
    wait_for,
)
from workers.embedded import EmbeddedFleet
from workers.lwm2m.object5 import FwResult
from workers.lwm2m.simulator import FleetSpec

DEVICES = 4
STAGES = "  - name: first\n    size: 1\n  - name: rest\n    size: rest\n"


@pytest.fixture
def fleet(transactional_db: None, eager_celery: None, catalog: Catalog) -> Any:
    v1 = release_trust_policy(catalog, security=("sec",))
    embedded = EmbeddedFleet(trust_anchors=[catalog.author_public_key])
    embedded.add(
        FleetSpec(
            count=DEVICES,
            manufacturer="Acme Sensors",
            model="thermo-v2",
            vendor_id=str(catalog.vendor.uuid),
            class_id=str(catalog.thermo.uuid),
            sequence_number=1,
            security_counter=1,
            trust_policy=bytes(v1.document).hex(),
        )
    )
    embedded.start()
    try:
        wait_for(
            lambda: Device.objects.filter(online=True, firmware_version="1.0.0").count() == DEVICES,
            what="fleet registered",
        )
        yield embedded
    finally:
        embedded.stop()


def _reconcile_until(campaign: Campaign, done: Any, *, what: str) -> None:
    wait_for(
        lambda: done(Campaign.objects.get(pk=campaign.pk)),
        timeout=90,
        tick=lambda: engine.campaign_reconcile(campaign.pk),
        what=what,
    )


def test_policy_rotation_through_a_staged_campaign_then_the_release_needing_it_installs(
    fleet: EmbeddedFleet, catalog: Catalog
) -> None:
    assert fleet.fleet is not None
    devices = list(fleet.fleet.devices.values())
    later = make_release(
        catalog,
        name="thermo-1.2.0",
        version="1.2.0",
        sequence=6,
        counter=2,
        payload=b"\x43" * 4096,
        approvers=(("qa", "qa"), ("sec2", "security")),
    )

    # 1. Under v1 the release's security signature (sec2) is not one the devices trust.
    probe = device_services.device_command_create(
        endpoint=devices[0].state.endpoint,
        operation="fw_update",
        args={"manifest_digest": later.manifest.manifest_digest, "delivery": "suit"},
    )
    wait_for(
        lambda: DeviceCommand.objects.get(pk=probe.pk).status == CommandStatus.FAILED,
        what="the release refused under v1",
    )
    assert devices[0].fw.result == FwResult.INTEGRITY_CHECK_FAILURE
    assert "refused device.trust_threshold" in devices[0].events

    # 2. v2 lists sec2; it goes out as a staged trust-policy campaign.
    v2 = release_trust_policy(catalog, security=("sec", "sec2"))
    campaign, outcome = services.campaign_apply(
        spec=parse_spec(spec_text("rotate-v2", trust_policy=2, stages=STAGES)),
        actor=catalog.ops,
    )
    assert outcome == "created"
    assert (campaign.trust_policy_id, campaign.release_id) == (v2.pk, None)
    assert list(campaign.stages.order_by("index").values_list("planned_devices", flat=True)) == [
        1,
        DEVICES - 1,
    ]
    _reconcile_until(campaign, lambda c: c.current_stage == 1, what="stage first completed")
    first = Rollout.objects.get(campaign=campaign, stage=0)
    assert first.state == RolloutState.SUCCEEDED
    assert first.report_verdict == "verified"
    assert first.manifest_id is None
    assert Device.objects.get(pk=first.device_id).trust_policy_version == 2
    by_endpoint = {d.state.endpoint: d for d in devices}
    assert by_endpoint[first.device.endpoint].state.trust_policy == bytes(v2.document).hex()

    _reconcile_until(
        campaign, lambda c: c.status == CampaignStatus.COMPLETED, what="rotation complete"
    )
    assert set(Rollout.objects.filter(campaign=campaign).values_list("state", flat=True)) == {
        RolloutState.SUCCEEDED
    }
    assert {d.state.trust_policy for d in devices} == {bytes(v2.document).hex()}
    assert set(Device.objects.values_list("trust_policy_version", "trust_policy_sha256")) == {
        (2, v2.sha256)
    }

    # 3. A second campaign of v2 finds every device already holding it.
    plan = planning.campaign_plan(
        spec=parse_spec(spec_text("rotate-v2-again", trust_policy=2, stages=STAGES))
    ).as_dict()
    assert plan["excluded"] == {"trust_policy_held": DEVICES}
    assert sum(s["already_held"] for s in plan["stages"]) == DEVICES

    # 4. The release that needed v2 now installs on every device.
    install, _ = services.campaign_apply(
        spec=parse_spec(spec_text("install-v120", release="thermo-1.2.0")), actor=catalog.ops
    )
    _reconcile_until(
        install, lambda c: c.status == CampaignStatus.COMPLETED, what="1.2.0 installed"
    )
    assert {d.state.version for d in devices} == {"1.2.0"}
