"""Encrypted SUIT payloads on simulated devices, through the gateway on loopback: the device
verifies the manifest, fetches the ciphertext the manifest's URI names, decrypts it with its key,
checks the plaintext's digest, and refuses every tampering with its own reason and Update Result 5.
No bytes the gateway serves under /fw contain the plaintext."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from manifests import suit
from manifests.images import imgtool
from tests.workers.lwm2m.conftest import (
    CLASS_ID,
    VENDOR_ID,
    DictFirmware,
    Harness,
    run_with_fleet,
)
from workers.lwm2m.errors import DeviceOperationError
from workers.lwm2m.object5 import FwResult, FwState

MARKER = b"SECRET-FIRMWARE-MARKER"
PLAINTEXT = (b"\x7fELF-firmware " + MARKER) * 300
KEK = bytes(range(32, 48))
KEK_KID = b"acme-class-kek-1"


def _release(
    key: Any, sealed: suit.EncryptedPayload, *, info: bytes | None = None
) -> tuple[bytes, str]:
    cipher_sha = hashlib.sha256(sealed.ciphertext).hexdigest()
    params = suit.ManifestParams(
        vendor_id=VENDOR_ID,
        class_id=CLASS_ID,
        sequence_number=2,
        version="1.1.0",
        security_counter=2,
        image_digest=hashlib.sha256(PLAINTEXT).digest(),
        image_size=len(PLAINTEXT),
        uri=f"/fw/i/{cipher_sha}",
        component_id=(b"\x00",),
        payload_format="mcuboot",
        encryption_info=info if info is not None else sealed.encryption_info,
    )
    envelope = suit.create_envelope(params, keys=[key])
    return envelope, suit.decode_envelope(envelope).manifest_digest.hex()


def _firmware(envelope: bytes, digest: str, ciphertext: bytes) -> DictFirmware:
    return DictFirmware(
        envelopes={digest: envelope},
        images={hashlib.sha256(ciphertext).hexdigest(): ciphertext},
    )


def _class_kek_fleet() -> dict[str, Any]:
    return {"decryption_kid": KEK_KID.hex(), "decryption_key": KEK.hex()}


def test_class_key_devices_decrypt_install_and_fw_never_serves_the_plaintext(
    signing_key: Any,
) -> None:
    sealed = suit.encrypt_payload(PLAINTEXT, [suit.KEKRecipient(KEK_KID, KEK)])
    envelope, digest = _release(signing_key, sealed)
    firmware = _firmware(envelope, digest, sealed.ciphertext)

    async def scenario(h: Harness) -> None:
        served = []
        for endpoint in h.fleet.devices:
            result = await h.gateway.run_operation(
                endpoint, "fw_update", {"manifest_digest": digest}
            )
            assert (result["phase"], result["result"]) == ("succeeded", 1)
        for device in h.fleet.devices.values():
            assert device.state.version == "1.1.0"
            assert device.fw.state is FwState.IDLE
        # Everything the gateway publishes for this release, fetched over CoAP as a device does.
        device = next(iter(h.fleet.devices.values()))
        base = h.gateway.config.base_uri.rstrip("/")
        served.append(await device.fetch(f"{base}/fw/m/{digest}"))
        served.append(
            await device.fetch(f"{base}/fw/i/{hashlib.sha256(sealed.ciphertext).hexdigest()}")
        )
        assert served[1] == sealed.ciphertext
        assert all(MARKER not in data for data in served)

    run_with_fleet(
        scenario,
        count=2,
        anchors=[signing_key.public_key()],
        firmware=firmware,
        spec_kwargs=_class_kek_fleet(),
    )


def test_per_device_keys_decrypt_with_ecdh_es(signing_key: Any) -> None:
    async def scenario(h: Harness) -> None:
        recipients = [
            suit.ECDHRecipient(kid, serialization.load_pem_public_key(pem.encode()))  # type: ignore[arg-type]
            for kid, pem in h.fleet.decryption_public_keys().values()
        ]
        assert len(recipients) == 2
        sealed = suit.encrypt_payload(PLAINTEXT, recipients)
        envelope, digest = _release(signing_key, sealed)
        fw = _firmware(envelope, digest, sealed.ciphertext)
        h.firmware.envelopes.update(fw.envelopes)
        h.firmware.images.update(fw.images)
        for endpoint in h.fleet.devices:
            result = await h.gateway.run_operation(
                endpoint, "fw_update", {"manifest_digest": digest}
            )
            assert (result["phase"], result["result"]) == ("succeeded", 1)

    run_with_fleet(
        scenario,
        count=2,
        anchors=[signing_key.public_key()],
        spec_kwargs={"device_keys": True},
    )


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _tampered_wrap(info: bytes) -> bytes:
    body = list(cbor2.loads(info).value)
    recipient = list(body[3][0])
    recipient[2] = _flip(recipient[2], 5)
    body[3] = [recipient]
    return cbor2.dumps(cbor2.CBORTag(96, body))


@pytest.mark.parametrize(
    "attack",
    ["wrong_key", "not_a_recipient", "tampered_ciphertext", "tampered_wrapped_key", "bad_tag"],
)
def test_tampered_encrypted_payload_is_refused_on_the_device(signing_key: Any, attack: str) -> None:
    sealed = suit.encrypt_payload(PLAINTEXT, [suit.KEKRecipient(KEK_KID, KEK)])
    ciphertext, info = sealed.ciphertext, sealed.encryption_info
    fleet = _class_kek_fleet()
    expected = {
        "wrong_key": "device.decryption_key_unwrap",
        "not_a_recipient": "device.decryption_no_recipient",
        "tampered_ciphertext": "device.decryption_tag",
        "tampered_wrapped_key": "device.decryption_key_unwrap",
        "bad_tag": "device.decryption_tag",
    }[attack]
    if attack == "wrong_key":
        fleet["decryption_key"] = bytes(16).hex()
    elif attack == "not_a_recipient":
        fleet["decryption_kid"] = b"another-kid".hex()
    elif attack == "tampered_ciphertext":
        ciphertext = _flip(ciphertext, 40)
    elif attack == "bad_tag":
        ciphertext = _flip(ciphertext, len(ciphertext) - 2)
    else:
        info = _tampered_wrap(info)
    # The manifest still names the (tampered) bytes the server serves: only decryption fails.
    tampered = dataclasses.replace(sealed, ciphertext=ciphertext)
    envelope, digest = _release(signing_key, tampered, info=info)
    firmware = _firmware(envelope, digest, ciphertext)

    async def scenario(h: Harness) -> None:
        with pytest.raises(DeviceOperationError) as raised:
            await h.gateway.run_operation("sim-00000", "fw_update", {"manifest_digest": digest})
        assert raised.value.result["result"] == FwResult.INTEGRITY_CHECK_FAILURE  # type: ignore[attr-defined]
        device = h.fleet.devices["sim-00000"]
        assert f"refused {expected}" in device.events
        assert device.state.version == "1.0.0"

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=firmware,
        spec_kwargs=fleet,
    )


@pytest.mark.parametrize("tampered", [False, True], ids=["intact", "tampered_ciphertext"])
def test_aes_ctr_release_installs_and_a_tampered_one_fails_the_plaintext_digest(
    signing_key: Any, tampered: bool
) -> None:
    sealed = suit.encrypt_payload(
        PLAINTEXT, [suit.KEKRecipient(KEK_KID, KEK)], content_alg="A128CTR"
    )
    if tampered:
        sealed = dataclasses.replace(sealed, ciphertext=_flip(sealed.ciphertext, 99))
    envelope, digest = _release(signing_key, sealed)

    async def scenario(h: Harness) -> None:
        device = h.fleet.devices["sim-00000"]
        if not tampered:
            result = await h.gateway.run_operation(
                "sim-00000", "fw_update", {"manifest_digest": digest}
            )
            assert (result["phase"], result["result"]) == ("succeeded", 1)
            return
        with pytest.raises(DeviceOperationError) as raised:
            await h.gateway.run_operation("sim-00000", "fw_update", {"manifest_digest": digest})
        assert raised.value.result["result"] == FwResult.INTEGRITY_CHECK_FAILURE  # type: ignore[attr-defined]
        assert "refused device.image_digest_mismatch" in device.events

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=_firmware(envelope, digest, sealed.ciphertext),
        spec_kwargs=_class_kek_fleet(),
    )


def test_device_without_a_key_refuses_an_encrypted_release_as_unsupported(
    signing_key: Any,
) -> None:
    sealed = suit.encrypt_payload(PLAINTEXT, [suit.KEKRecipient(KEK_KID, KEK)])
    envelope, digest = _release(signing_key, sealed)

    async def scenario(h: Harness) -> None:
        with pytest.raises(DeviceOperationError) as raised:
            await h.gateway.run_operation("sim-00000", "fw_update", {"manifest_digest": digest})
        assert raised.value.result["result"] == FwResult.UNSUPPORTED_PACKAGE_TYPE  # type: ignore[attr-defined]
        assert "refused device.unsupported_manifest" in h.fleet.devices["sim-00000"].events

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=_firmware(envelope, digest, sealed.ciphertext),
    )


# --- MCUboot encrypted images (image delivery profile) ----------------------------------------


@pytest.fixture(scope="module")
def mcuboot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("mcuboot-enc")
    signing = imgtool.keygen(tmp / "boot.pem")
    device_key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp / "enc.pub.pem"
    pub.write_bytes(
        device_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    image = imgtool.build_image(
        PLAINTEXT,
        version="1.1.0",
        security_counter=2,
        key_path=signing,
        vendor_id=str(VENDOR_ID),
        class_id=str(CLASS_ID),
        extra_args=["--encrypt", str(pub)],
    )
    return {
        "image": image,
        "bootloader_key": imgtool.public_key_pem(signing).decode(),
        "device_key": device_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    }


def _pull_image(h: Harness, image: bytes) -> Any:
    digest = hashlib.sha256(image).hexdigest()
    return h.gateway.run_operation(
        "sim-00000",
        "fw_update",
        {"manifest_digest": digest, "uri": f"{h.gateway.config.base_uri}/fw/i/{digest}"},
    )


@pytest.mark.parametrize("attack", [None, "wrong_key", "tampered_ciphertext"])
def test_mcuboot_device_decrypts_during_the_swap_and_checks_hash_and_signature(
    mcuboot: dict[str, Any], attack: str | None
) -> None:
    image, key = mcuboot["image"], mcuboot["device_key"]
    assert MARKER not in image
    if attack == "wrong_key":
        key = (
            ec.generate_private_key(ec.SECP256R1())
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            .decode()
        )
    elif attack == "tampered_ciphertext":
        at = imgtool.DEFAULT_HEADER_SIZE + 50
        image = image[:at] + bytes([image[at] ^ 1]) + image[at + 1 :]
    firmware = DictFirmware(images={hashlib.sha256(image).hexdigest(): image})

    async def scenario(h: Harness) -> None:
        device = h.fleet.devices["sim-00000"]
        if attack is None:
            result = await _pull_image(h, image)
            assert (result["phase"], result["result"]) == ("succeeded", 1)
            assert device.state.version == "1.1.0"
            return
        with pytest.raises(DeviceOperationError) as raised:
            await _pull_image(h, image)
        assert raised.value.result["result"] == FwResult.INTEGRITY_CHECK_FAILURE  # type: ignore[attr-defined]
        expected = "image.key_unwrap" if attack == "wrong_key" else "image.hash_mismatch"
        assert any(e == f"refused {expected}" for e in device.events), device.events
        assert device.state.version == "1.0.0"

    run_with_fleet(
        scenario,
        count=1,
        anchors=[],
        firmware=firmware,
        spec_kwargs={
            "delivery": "image",
            "bootloader_key": mcuboot["bootloader_key"],
            "decryption_key": key,
        },
    )
