"""End to end, with the real gateway serving from the database and simulated SUIT devices that
hold their class's trust policy: a release approved by author, qa and security installs through
a campaign (the devices download the frozen released envelope, not the author-only one); after
a key revocation the next policy goes to the devices, and an envelope whose security threshold
rests on the revoked key, dispatched by a server whose release checks were bypassed, is refused
on every device."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from campaigns import device_services, engine, services
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
from campaigns.trust_delivery import trust_policy_deliver
from manifests import device_trust, suit
from manifests import services as release_services
from manifests.models import DeviceTrustPolicy, SigningKey, TrustPolicyStatus
from tests.campaigns.support import Catalog, make_release, spec_text, wait_for
from workers.embedded import EmbeddedFleet
from workers.lwm2m.object5 import FwResult
from workers.lwm2m.simulator import FleetSpec

DEVICES = 4


def _kid(catalog: Catalog, persona: str) -> str:
    return suit.kid_for_public_key(catalog.keys[persona]).hex()


def _sign(catalog: Catalog, policy: DeviceTrustPolicy, persona: str) -> None:
    block = device_trust.sign_policy(policy.body_bytes, catalog.keys[persona])
    release_services.trust_policy_sign(policy=policy, signer=catalog.users[persona], cose=block)


def _commands_done(commands: list[DeviceCommand]) -> bool:
    done = (CommandStatus.SUCCEEDED, CommandStatus.FAILED)
    return all(DeviceCommand.objects.get(pk=c.pk).status in done for c in commands)


@pytest.fixture
def fleet(transactional_db: None, eager_celery: None, catalog: Catalog) -> Any:
    draft = release_services.trust_policy_draft(
        device_class=catalog.thermo,
        roles={
            "author": (1, [_kid(catalog, "author")]),
            "qa": (1, [_kid(catalog, "qa")]),
            "security": (1, [_kid(catalog, "sec"), _kid(catalog, "sec2")]),
        },
        expires_at=timezone.now() + dt.timedelta(days=365),
        actor=catalog.users["sec"],
    )
    _sign(catalog, draft, "sec")
    draft.refresh_from_db()
    assert draft.status == TrustPolicyStatus.RELEASED
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
            trust_policy=bytes(draft.document).hex(),
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


def test_approved_release_installs_and_after_rotation_the_revoked_key_no_longer_suffices(
    fleet: EmbeddedFleet, catalog: Catalog
) -> None:
    # 1. thermo-1.1.0 was approved by author, qa and sec: the campaign installs it everywhere.
    release = catalog.release
    assert release.released_envelope is not None
    campaign, _ = services.campaign_apply(spec=parse_spec(spec_text("trusted")), actor=catalog.ops)

    def reconcile() -> None:
        engine.campaign_reconcile(campaign.pk)

    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.COMPLETED,
        timeout=90,
        tick=reconcile,
    )
    assert set(Rollout.objects.filter(campaign=campaign).values_list("state", flat=True)) == {
        RolloutState.SUCCEEDED
    }
    assert fleet.fleet is not None
    devices = fleet.fleet.devices.values()
    assert {d.state.version for d in devices} == {"1.1.0"}

    # 2. thermo-1.2.0 is approved by qa and sec and frozen; then sec's key is revoked.
    later = make_release(
        catalog, name="thermo-1.2.0", version="1.2.0", sequence=6, counter=2, payload=b"\x43" * 4096
    )
    frozen_digest = later.manifest.manifest_digest
    assert later.released_envelope is not None
    sec_key = SigningKey.objects.get(kid=_kid(catalog, "sec"))
    release_services.key_revoke(key=sec_key, reason="stolen", actor=catalog.users["sec2"])
    # The revocation drafted v2 without the key; sec2 signs it and it is released.
    v2 = DeviceTrustPolicy.objects.get(device_class=catalog.thermo, version=2)
    _sign(catalog, v2, "sec2")
    v2.refresh_from_db()
    assert v2.status == TrustPolicyStatus.RELEASED

    # 3. v2 goes to every device of the class through the gateway (a trust-policy package);
    # asked twice, no device gets a second command.
    delivered = trust_policy_deliver(policy=v2, actor=catalog.ops)
    assert (delivered.sent, delivered.already) == (DEVICES, 0)
    assert trust_policy_deliver(policy=v2, actor=catalog.ops).sent == 0
    rotation = list(DeviceCommand.objects.filter(args__delivery="trust-policy"))
    assert len(rotation) == DEVICES
    wait_for(lambda: _commands_done(rotation), timeout=60)
    assert {DeviceCommand.objects.get(pk=c.pk).status for c in rotation} == {
        CommandStatus.SUCCEEDED
    }
    assert {d.state.trust_policy for d in devices} == {bytes(v2.document).hex()}
    # Each device signed its report of the install: the registry records v2 as held.
    wait_for(
        lambda: Device.objects.filter(trust_policy_version=2).count() == DEVICES,
        what="policy v2 recorded as held",
    )
    assert set(Device.objects.values_list("trust_policy_sha256", flat=True)) == {v2.sha256}

    # 4. A compromised server sends 1.2.0's frozen envelope (its security signature is sec's,
    # the revoked key) straight through the gateway: every device refuses it (Result 5).
    attack = [
        device_services.device_command_create(
            endpoint=d.state.endpoint,
            operation="fw_update",
            args={"manifest_digest": frozen_digest, "delivery": "suit"},
        )
        for d in devices
    ]
    wait_for(lambda: _commands_done(attack), timeout=60)
    assert {DeviceCommand.objects.get(pk=c.pk).status for c in attack} == {CommandStatus.FAILED}
    assert {d.state.version for d in devices} == {"1.1.0"}
    assert {d.fw.result for d in devices} == {FwResult.INTEGRITY_CHECK_FAILURE}
    assert all("refused device.trust_threshold" in d.events for d in devices)
