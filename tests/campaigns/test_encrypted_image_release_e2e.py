"""Encrypted MCUboot images in a campaign, end to end: the server builds the release image with
``imgtool sign --encrypt`` for the class's image encryption key, the gateway serves it on
``/fw/i`` (ciphertext only), simulated MCUboot devices holding the class's private key decrypt
it during the swap and boot it after checking its hash and signature; one device holding
another key cannot unwrap the image key, refuses it with Update Result 5, and the campaign
counts that failure with its reason."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import engine, services
from campaigns.models import (
    IN_FLIGHT_STATES,
    Campaign,
    CampaignStatus,
    Device,
    Rollout,
    RolloutState,
)
from campaigns.spec import parse_spec
from manifests import services as release_services
from manifests import suit
from manifests.images import imgtool
from manifests.images.encryption import decrypt_image
from manifests.selectors import manifest_params
from tests.campaigns.support import Catalog, spec_text, wait_for
from tests.helpers.deployment import DEFAULT_APPROVERS, release_from_envelope
from workers.embedded import EmbeddedFleet
from workers.lwm2m.simulator import FleetSpec

MARKER = b"ENCRYPTED-MCUBOOT-IMAGE-MARKER"
BAD = "badkey-00000"


def _private_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _encrypted_image_release(catalog: Catalog, signing_key: Path, class_key: Any) -> Any:
    """The class takes MCUboot images encrypted for ``class_key``; the author's image is built
    by the server's imgtool for it, uploaded and released like any image."""
    admin, author = catalog.admin, catalog.users["author"]
    release_services.device_class_update(device_class=catalog.thermo, delivery="image", actor=admin)
    key_row = release_services.image_encryption_key_set(
        device_class=catalog.thermo, public_key_pem=_public_pem(class_key), actor=admin
    )
    data = release_services.image_build_encrypted(
        device_class=catalog.thermo,
        payload=MARKER * 200,
        version="1.2.0",
        security_counter=3,
        signing_key_path=signing_key,
    )
    image = release_services.image_upload(data=data, actor=author)
    params = manifest_params(
        device_class=catalog.thermo,
        image=image,
        sequence_number=7,
        security_counter=3,
        version="1.2.0",
        use_before=timezone.now() + dt.timedelta(days=30),
    )
    envelope = suit.create_envelope(params, keys=[catalog.keys["author"]])
    release_from_envelope(catalog, envelope, name="thermo-1.2.0-img", approvers=DEFAULT_APPROVERS)
    return image, key_row


def test_encrypted_mcuboot_campaign_completes_and_a_wrong_key_fails_with_its_reason(
    transactional_db: None, eager_celery: None, catalog: Catalog, tmp_path: Path
) -> None:
    signing_key = imgtool.keygen(tmp_path / "boot.pem")
    class_key = ec.generate_private_key(ec.SECP256R1())
    image, key_row = _encrypted_image_release(catalog, signing_key, class_key)
    stored = release_services.image_storage().read(image.sha256)
    # What /fw/i serves is the ciphertext: no trace of the plaintext, and it decrypts (with the
    # class's private key, independently of the simulator) to an image imgtool verifies.
    assert MARKER not in stored
    assert image.info["encryption"]["tlvs"] == ["ENC_EC256"]
    plain = decrypt_image(stored, class_key)
    assert MARKER in plain
    verified = tmp_path / "plain.bin"
    verified.write_bytes(plain)
    assert "validated" in imgtool.run_imgtool("verify", "--key", signing_key, verified)

    common = {
        "manufacturer": "Acme Sensors",
        "model": "thermo-v2",
        "vendor_id": str(catalog.vendor.uuid),
        "class_id": str(catalog.thermo.uuid),
        "delivery": "image",
        "bootloader_key": imgtool.public_key_pem(signing_key).decode(),
    }
    embedded = EmbeddedFleet(trust_anchors=[catalog.author_public_key], fw_poll_seconds=0.3)
    embedded.add(FleetSpec(count=4, decryption_key=_private_pem(class_key), **common))
    other = ec.generate_private_key(ec.SECP256R1())
    embedded.add(FleetSpec(count=1, prefix="badkey", decryption_key=_private_pem(other), **common))
    embedded.start()
    try:
        wait_for(
            lambda: Device.objects.filter(online=True, firmware_version="1.0.0").count() == 5,
            what="fleet registered",
        )
        spec = parse_spec(spec_text("img-enc", release="thermo-1.2.0-img"), source="s.yaml")
        campaign, _ = services.campaign_apply(spec=spec, actor=catalog.ops, source="s.yaml")

        def settled() -> bool:
            unfinished = Rollout.objects.filter(
                campaign=campaign, state__in=[RolloutState.PENDING, *IN_FLIGHT_STATES]
            ).exists()
            status = Campaign.objects.get(pk=campaign.pk).status
            return not unfinished and status != CampaignStatus.RUNNING

        wait_for(settled, timeout=120, tick=lambda: engine.campaign_reconcile(campaign.pk))
        states = dict(
            Rollout.objects.filter(campaign=campaign).values_list("device__endpoint", "state")
        )
        assert states == {
            **{f"sim-{i:05d}": RolloutState.SUCCEEDED for i in range(4)},
            BAD: RolloutState.FAILED,
        }
        failed = Rollout.objects.get(campaign=campaign, device__endpoint=BAD)
        assert (failed.fw_result, failed.reason) == (5, "integrity_check_failed")
        assert embedded.fleet is not None
        devices = embedded.fleet.devices
        assert "refused image.key_unwrap" in devices[BAD].events
        assert devices[BAD].state.version == "1.0.0"
        for endpoint in (f"sim-{i:05d}" for i in range(4)):
            # Decrypted during the swap: the device runs the plaintext image, not the bytes served.
            running = devices[endpoint].installed_image
            assert running is not None and MARKER in running
            assert hashlib.sha256(running).hexdigest() != image.sha256
        assert Device.objects.filter(firmware_version="1.2.0").count() == 4
        final = Campaign.objects.get(pk=campaign.pk)
        assert final.status == CampaignStatus.PAUSED
        assert "4/5 succeeded" in final.pause_reason and "1 failed" in final.pause_reason
        # The audit log names the class key by its kid only.
        key_events = AuditEvent.objects.filter(action="image_key.set")
        assert [e.details["kid"] for e in key_events] == [key_row.kid]
        assert not any(_private_pem(class_key) in str(e.details) for e in AuditEvent.objects.all())
    finally:
        embedded.stop()
