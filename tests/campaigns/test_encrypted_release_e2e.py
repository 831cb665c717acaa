"""Encrypted releases in campaigns: the plan refuses a device whose key is unknown with its
reason, and a campaign of an encrypted release runs end to end on simulated devices that
decrypt it (real gateway on loopback, Celery tasks eagerly, the engine reconciling); a device
holding a wrong key refuses it and the campaign counts that failure with its reason."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from django.core.management import CommandError, call_command
from django.utils import timezone

from campaigns import engine, planning, services, wording
from campaigns.device_services import device_encryption_key_register
from campaigns.models import (
    IN_FLIGHT_STATES,
    Campaign,
    CampaignStatus,
    Device,
    DeviceEncryptionKey,
    Rollout,
    RolloutState,
)
from campaigns.spec import parse_spec
from manifests import payload_keys, suit
from manifests import services as release_services
from manifests.images import imgtool
from manifests.selectors import manifest_params
from tests.campaigns.support import Catalog, spec_text, wait_for
from tests.helpers.deployment import DEFAULT_APPROVERS, make_devices, release_from_envelope
from workers.embedded import EmbeddedFleet
from workers.lwm2m.simulator import FleetSpec

MARKER = b"ENCRYPTED-RELEASE-MARKER"


def _encrypted_release(
    catalog: Catalog, *, name: str, device_keys: list[tuple[str, str]], class_key: bool
) -> Any:
    author = catalog.users["author"]
    image = release_services.image_upload(
        data=imgtool.build_image(MARKER * 200, version="1.2.0", security_counter=3),
        actor=author,
    )
    sealed = release_services.payload_encrypt(
        image=image,
        device_class=catalog.thermo,
        actor=author,
        device_keys=device_keys,
        class_key=class_key,
    )
    params = manifest_params(
        device_class=catalog.thermo,
        image=image,
        sequence_number=7,
        security_counter=3,
        version="1.2.0",
        use_before=timezone.now() + dt.timedelta(days=30),
        uri=f"/fw/i/{sealed.ciphertext_sha256}",
    )
    params = type(params)(**{**params.__dict__, "encryption_info": bytes(sealed.encryption_info)})
    envelope = suit.create_envelope(params, keys=[catalog.keys["author"]])
    return release_from_envelope(catalog, envelope, name=name, approvers=DEFAULT_APPROVERS), sealed


def _public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_device_whose_key_is_unknown_is_refused_at_plan_with_its_reason(
    catalog: Catalog,
) -> None:
    devices = make_devices(catalog, 4)
    ops = catalog.ops
    keyed = devices[0]
    pem = _public_pem()
    device_encryption_key_register(
        endpoint=keyed.endpoint, kid=b"dev-key-0", public_key_pem=pem, actor=ops
    )
    _encrypted_release(
        catalog,
        name="thermo-1.2.0-enc",
        device_keys=[(b"dev-key-0".hex(), pem)],
        class_key=False,
    )
    spec = parse_spec(spec_text("enc", release="thermo-1.2.0-enc"), source="spec.yaml")
    plan = planning.campaign_plan(spec=spec)
    assert plan.cohort == 1
    assert plan.excluded == {"encryption_key_unknown": 3}
    campaign, _ = services.campaign_apply(spec=spec, actor=ops, source="spec.yaml")
    refused = Rollout.objects.filter(campaign=campaign, reason="encryption_key_unknown")
    assert refused.count() == 3
    assert all("not registered or not among them" in r.detail for r in refused)
    assert keyed.pk not in set(refused.values_list("device_id", flat=True))
    assert "not known to hold" in wording.REASON_TEXT["encryption_key_unknown"]


def test_encrypted_release_campaign_completes_and_a_wrong_key_fails_with_its_reason(
    transactional_db: None, eager_celery: None, catalog: Catalog
) -> None:
    row = release_services.payload_key_rotate(device_class=catalog.thermo, actor=catalog.admin)
    kek = payload_keys.decrypt_kek(
        bytes(row.key_encrypted), secret=release_services.payload_key_secret()
    )
    _encrypted_release(catalog, name="thermo-1.2.0-enc", device_keys=[], class_key=True)
    common = {
        "manufacturer": "Acme Sensors",
        "model": "thermo-v2",
        "vendor_id": str(catalog.vendor.uuid),
        "class_id": str(catalog.thermo.uuid),
        "sequence_number": 1,
        "security_counter": 1,
        "decryption_kid": row.kid,
    }
    embedded = EmbeddedFleet(trust_anchors=[catalog.author_public_key], fw_poll_seconds=0.3)
    embedded.add(FleetSpec(count=4, decryption_key=kek.hex(), **common))
    embedded.add(FleetSpec(count=1, prefix="badkey", decryption_key=bytes(16).hex(), **common))
    embedded.start()
    try:
        wait_for(
            lambda: Device.objects.filter(online=True, firmware_version="1.0.0").count() == 5,
            what="fleet registered",
        )
        spec = parse_spec(spec_text("enc-rollout", release="thermo-1.2.0-enc"), source="s.yaml")
        campaign, _ = services.campaign_apply(spec=spec, actor=catalog.ops, source="s.yaml")

        def done() -> bool:
            return not Rollout.objects.filter(
                campaign=campaign, state__in=[RolloutState.PENDING, *IN_FLIGHT_STATES]
            ).exists()

        def settled() -> bool:
            # Every rollout final, and the reconcile pass after the last one evaluated the stage.
            status = Campaign.objects.get(pk=campaign.pk).status
            return done() and status != CampaignStatus.RUNNING

        wait_for(settled, timeout=120, tick=lambda: engine.campaign_reconcile(campaign.pk))
        states = dict(
            Rollout.objects.filter(campaign=campaign).values_list("device__endpoint", "state")
        )
        assert {e: s for e, s in states.items() if e.startswith("sim")} == {
            f"sim-{i:05d}": RolloutState.SUCCEEDED for i in range(4)
        }
        failed = Rollout.objects.get(campaign=campaign, device__endpoint="badkey-00000")
        assert (failed.state, failed.fw_result, failed.reason) == (
            RolloutState.FAILED,
            5,
            "integrity_check_failed",
        )
        assert embedded.fleet is not None
        bad = embedded.fleet.devices["badkey-00000"]
        assert "refused device.decryption_key_unwrap" in bad.events
        assert Device.objects.filter(firmware_version="1.2.0").count() == 4
        # The one refusal is counted as a failure: the stage cannot reach its success share.
        final = Campaign.objects.get(pk=campaign.pk)
        assert final.status == CampaignStatus.PAUSED
        assert "4/5 succeeded" in final.pause_reason and "1 failed" in final.pause_reason
    finally:
        embedded.stop()


def test_device_key_that_is_not_a_p256_public_key_is_refused_and_changes_nothing(
    catalog: Catalog, tmp_path: Any
) -> None:
    device = make_devices(catalog, 1)[0]
    pem = tmp_path / "ed.pem"
    pem.write_bytes(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(CommandError, match="P-256"):
        call_command(
            "payload", "device-key", device.endpoint, "--kid", "01",
            "--public-key", str(pem), "--user", catalog.ops.get_username(),
        )  # fmt: skip
    good = tmp_path / "p256.pem"
    good.write_text(_public_pem())
    call_command(
        "payload", "device-key", device.endpoint, "--kid", "01",
        "--public-key", str(good), "--user", catalog.ops.get_username(),
    )  # fmt: skip
    assert DeviceEncryptionKey.objects.get(device=device).kid == "01"
    other = make_devices(catalog, 1, prefix="other")[0]
    with pytest.raises(CommandError, match="another device"):
        call_command(
            "payload", "device-key", other.endpoint, "--kid", "01",
            "--public-key", str(good), "--user", catalog.ops.get_username(),
        )  # fmt: skip
