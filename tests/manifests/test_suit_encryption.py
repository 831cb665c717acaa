"""Encrypted payloads (draft-ietf-suit-firmware-encryption): what the product writes decrypts
with an independent implementation (``cryptography`` used directly on the COSE structures as the
draft defines them), and every tampering is refused with its own error."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import uuid
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from manifests import device_rules, suit

MARKER = b"PLAINTEXT-MARKER-7f3a"
PLAINTEXT = (b"\x7fELF firmware " + MARKER) * 200
KEK = bytes(range(16))
KEK_KID = b"class-kek-1"


@pytest.fixture(scope="module")
def device_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def sealed(device_key: ec.EllipticCurvePrivateKey) -> suit.EncryptedPayload:
    return suit.encrypt_payload(
        PLAINTEXT,
        [suit.KEKRecipient(KEK_KID, KEK), suit.ECDHRecipient(b"dev-1", device_key.public_key())],
    )


def _enc_structure(protected: bytes) -> bytes:
    return cbor2.dumps(["Encrypt", protected, b""])


def _independent_decrypt(ciphertext: bytes, info: bytes, cek: bytes) -> bytes:
    body = cbor2.loads(info)
    assert body.tag == 96
    protected, unprotected, detached, _ = body.value
    assert detached is None and cbor2.loads(protected) == {1: 1}  # A128GCM
    return AESGCM(cek).decrypt(unprotected[5], ciphertext, _enc_structure(protected))


def test_aes_kw_recipient_decrypts_independently(sealed: suit.EncryptedPayload) -> None:
    body = cbor2.loads(sealed.encryption_info).value
    r_protected, r_unprotected, wrapped = body[3][0]
    assert r_protected == b"" and r_unprotected == {1: -3, 4: KEK_KID}
    cek = aes_key_unwrap(KEK, wrapped)
    assert _independent_decrypt(sealed.ciphertext, sealed.encryption_info, cek) == PLAINTEXT


def test_ecdh_es_recipient_decrypts_independently(
    sealed: suit.EncryptedPayload, device_key: ec.EllipticCurvePrivateKey
) -> None:
    body = cbor2.loads(sealed.encryption_info).value
    r_protected, r_unprotected, wrapped = body[3][1]
    assert cbor2.loads(r_protected) == {1: -29}  # ECDH-ES + A128KW
    assert r_unprotected[4] == b"dev-1"
    eph = r_unprotected[-1]
    assert (eph[1], eph[-1]) == (2, 1)  # EC2, P-256
    ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + eph[-2] + eph[-3]
    )
    context = cbor2.dumps(
        [-3, [None, None, None], [None, None, None], [128, r_protected, b"SUIT Payload Encryption"]]
    )
    kek = HKDF(hashes.SHA256(), 16, None, context).derive(device_key.exchange(ec.ECDH(), ephemeral))
    cek = aes_key_unwrap(kek, wrapped)
    assert _independent_decrypt(sealed.ciphertext, sealed.encryption_info, cek) == PLAINTEXT


def test_product_decrypts_for_each_recipient(
    sealed: suit.EncryptedPayload, device_key: ec.EllipticCurvePrivateKey
) -> None:
    info = sealed.encryption_info
    assert suit.decrypt_payload(sealed.ciphertext, info, kid=KEK_KID, key=KEK) == PLAINTEXT
    assert suit.decrypt_payload(sealed.ciphertext, info, kid=b"dev-1", key=device_key) == PLAINTEXT
    assert [(r.alg, r.kid) for r in suit.recipients_of(info)] == [
        (-3, KEK_KID),
        (-29, b"dev-1"),
    ]


def test_ciphertext_never_contains_the_plaintext(sealed: suit.EncryptedPayload) -> None:
    assert MARKER not in sealed.ciphertext
    assert MARKER not in sealed.encryption_info


def test_each_encryption_uses_a_fresh_content_key() -> None:
    recipients = [suit.KEKRecipient(KEK_KID, KEK)]
    a = suit.encrypt_payload(PLAINTEXT, recipients)
    b = suit.encrypt_payload(PLAINTEXT, recipients)
    cek_a = suit.unwrap_content_key(a.encryption_info, kid=KEK_KID, key=KEK)
    cek_b = suit.unwrap_content_key(b.encryption_info, kid=KEK_KID, key=KEK)
    assert cek_a != cek_b and a.ciphertext != b.ciphertext


def test_a256kw_for_a_32_byte_class_key() -> None:
    kek = os.urandom(32)
    sealed = suit.encrypt_payload(b"x" * 10, [suit.KEKRecipient(b"k", kek)])
    assert suit.recipients_of(sealed.encryption_info)[0].alg == -5
    assert suit.decrypt_payload(sealed.ciphertext, sealed.encryption_info, kid=b"k", key=kek)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _with_wrapped(info: bytes, index: int, wrapped: bytes) -> bytes:
    body = cbor2.loads(info)
    value = list(body.value)
    recipients = [list(r) for r in value[3]]
    recipients[index][2] = wrapped
    value[3] = recipients
    return cbor2.dumps(cbor2.CBORTag(96, value))


def test_wrong_class_key_is_refused(sealed: suit.EncryptedPayload) -> None:
    with pytest.raises(suit.SUITKeyUnwrapError, match="does not unwrap"):
        suit.decrypt_payload(
            sealed.ciphertext, sealed.encryption_info, kid=KEK_KID, key=os.urandom(16)
        )


def test_wrong_device_key_is_refused(sealed: suit.EncryptedPayload) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(suit.SUITKeyUnwrapError):
        suit.decrypt_payload(sealed.ciphertext, sealed.encryption_info, kid=b"dev-1", key=other)


def test_key_not_among_the_recipients_is_refused(sealed: suit.EncryptedPayload) -> None:
    with pytest.raises(suit.SUITNoRecipientError):
        suit.decrypt_payload(sealed.ciphertext, sealed.encryption_info, kid=b"dev-9", key=KEK)


def test_tampered_ciphertext_is_refused(sealed: suit.EncryptedPayload) -> None:
    with pytest.raises(suit.SUITCiphertextError, match="tag does not verify"):
        suit.decrypt_payload(
            _flip(sealed.ciphertext, 100), sealed.encryption_info, kid=KEK_KID, key=KEK
        )


def test_tampered_tag_is_refused(sealed: suit.EncryptedPayload) -> None:
    with pytest.raises(suit.SUITCiphertextError):
        suit.decrypt_payload(
            _flip(sealed.ciphertext, len(sealed.ciphertext) - 1),
            sealed.encryption_info,
            kid=KEK_KID,
            key=KEK,
        )


@pytest.mark.parametrize("index", [0, 1], ids=["aes_kw", "ecdh_es"])
def test_tampered_wrapped_key_is_refused(
    sealed: suit.EncryptedPayload, device_key: ec.EllipticCurvePrivateKey, index: int
) -> None:
    wrapped = cbor2.loads(sealed.encryption_info).value[3][index][2]
    info = _with_wrapped(sealed.encryption_info, index, _flip(wrapped, 3))
    kid, key = [(KEK_KID, KEK), (b"dev-1", device_key)][index]
    with pytest.raises(suit.SUITKeyUnwrapError):
        suit.decrypt_payload(sealed.ciphertext, info, kid=kid, key=key)


@pytest.mark.parametrize(
    "info",
    [
        b"\xff",
        cbor2.dumps(cbor2.CBORTag(16, [b"", {}, None])),
        cbor2.dumps(cbor2.CBORTag(96, [cbor2.dumps({1: 3}), {5: b"x" * 12}, None, []])),
        cbor2.dumps(cbor2.CBORTag(96, [cbor2.dumps({1: 1}), {5: b"x" * 8}, None, []])),
        cbor2.dumps(cbor2.CBORTag(96, [cbor2.dumps({1: 1}), {5: b"x" * 12}, b"ct", []])),
        cbor2.dumps(
            cbor2.CBORTag(96, [cbor2.dumps({1: 1}), {5: b"x" * 12}, None, [[b"", {1: -6}, b""]]])
        ),
    ],
    ids=["not_cbor", "encrypt0", "other_alg", "short_iv", "attached", "unknown_kw"],
)
def test_unsupported_encryption_info_is_named(info: bytes) -> None:
    with pytest.raises(suit.SUITEncryptionInfoError):
        suit.decrypt_payload(b"x" * 32, info, kid=b"k", key=KEK)


def _params(**changes: Any) -> suit.ManifestParams:
    base: dict[str, Any] = {
        "vendor_id": uuid.uuid5(uuid.NAMESPACE_DNS, "acme.example"),
        "class_id": uuid.uuid4(),
        "sequence_number": 2,
        "version": "1.1.0",
        "security_counter": 2,
        "image_digest": hashlib.sha256(PLAINTEXT).digest(),
        "image_size": len(PLAINTEXT),
        "uri": "/fw/i/" + "ab" * 32,
        "payload_format": "mcuboot",
    }
    base.update(changes)
    return suit.ManifestParams(**base)


@pytest.mark.parametrize("profile", ["extended", "standard"])
def test_encryption_info_travels_inside_the_signed_manifest(
    sealed: suit.EncryptedPayload, profile: str
) -> None:
    key = suit.generate_private_key("ES256")
    raw = suit.create_envelope(
        _params(encryption_info=sealed.encryption_info, profile=profile), keys=[key]
    )
    env = suit.decode_envelope(raw)
    assert sealed.encryption_info in env.manifest_bytes  # covered by the manifest digest
    assert cbor2.dumps(env.manifest.encryption_info[0]) == sealed.encryption_info
    with pytest.raises(suit.SUITUnsupportedError, match="encrypted"):
        suit.verify_envelope(env, [key.public_key()])
    assert suit.verify_envelope(env, [key.public_key()], decrypting=True).ok
    # Decrypting from the decoded manifest gives the plaintext the image digest names.
    plain = suit.decrypt_payload(
        sealed.ciphertext, env.manifest.encryption_info[0], kid=KEK_KID, key=KEK
    )
    facts = device_rules.facts_from_manifest(env.manifest)
    assert facts.encrypted
    device_rules.check_payload(plain, facts)


def test_builder_refuses_encryption_info_it_cannot_read() -> None:
    with pytest.raises(suit.SUITParamsError, match="encryption_info"):
        suit.build_manifest(_params(encryption_info=b"\xa0"))


def test_device_without_a_decryption_key_refuses_an_encrypted_manifest(
    sealed: suit.EncryptedPayload,
) -> None:
    params = _params(encryption_info=sealed.encryption_info)
    env = suit.decode_envelope(suit.create_envelope(params, keys=[]))
    facts = device_rules.facts_from_manifest(env.manifest)
    identity = device_rules.DeviceIdentity(
        vendor_id=params.vendor_id, class_id=params.class_id, component_id=(b"00",)
    )
    installed = device_rules.InstalledFirmware("1.0.0", 1, 1)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(device_rules.UnsupportedManifestError):
        device_rules.check_manifest(facts, device=identity, installed=installed, now=now)
    capable = device_rules.DeviceIdentity(
        vendor_id=params.vendor_id,
        class_id=params.class_id,
        component_id=(b"00",),
        can_decrypt=True,
        decryption_kids=frozenset({KEK_KID}),
    )
    device_rules.check_manifest(facts, device=capable, installed=installed, now=now)
    other = dataclasses.replace(capable, decryption_kids=frozenset({b"another"}))
    with pytest.raises(device_rules.DecryptionNoRecipientError):
        device_rules.check_manifest(facts, device=other, installed=installed, now=now)


# --- the draft's own examples (draft-ietf-suit-firmware-encryption, section "Examples") -------
# Keys, encryption infos and ciphertexts as published in the working group's repository
# (suit-wg/suit-firmware-encryption, examples/); the plaintext is "This is a real firmware image."
DRAFT_PLAINTEXT = b"This is a real firmware image."
DRAFT_CIPHERTEXT = bytes.fromhex(
    "758C4B7BBAE2C4C1D462423E0F0DC3164FFA7B85BB94D4BD6D7ED26AB32FEB063385D4D3465927EC82CB5E198A59"
)
DRAFT_AES_KW_INFO = bytes.fromhex(
    "D8608443A10101A1054CF14AAB9D81D51F7AD943FE87F6818340A2012204456B69642D31581875603FFC9518D7"
    "94713C8CA8A115A7FB32565A6D59534D62"
)
DRAFT_ECDH_INFO = bytes.fromhex(
    "D8608443A10101A1054CF14AAB9D81D51F7AD943FE87F6818344A101381CA120A40102200121582073024F415A"
    "A51529A66CCEFD88F3F62A734492FF45F6AD37FD2888E73EAF19DA2258204005B48A6FD091AA6ABFE3CFBEEDE8"
    "8B347E521D43405FDBD7D2CFF0EBC21B265818A06B8E6550F308712B1DF044B21B7D11D9B22792F1DE0997"
)
DRAFT_DEVICE_D = "60FE6DD6D85D5740A5349B6F91267EEAC5BA81B8CB53EE249E4B4EB102C476B3"


def test_the_drafts_aes_kw_example_decrypts() -> None:
    plain = suit.decrypt_payload(
        DRAFT_CIPHERTEXT, DRAFT_AES_KW_INFO, kid=b"kid-1", key=b"aaaaaaaaaaaaaaaa"
    )
    assert plain == DRAFT_PLAINTEXT


def test_the_drafts_ecdh_es_example_decrypts() -> None:
    device = ec.derive_private_key(int(DRAFT_DEVICE_D, 16), ec.SECP256R1())
    # The example's recipient names no key, so the device's key is tried on it.
    assert suit.recipients_of(DRAFT_ECDH_INFO)[0].kid is None
    plain = suit.decrypt_payload(DRAFT_CIPHERTEXT, DRAFT_ECDH_INFO, kid=b"kid-2", key=device)
    assert plain == DRAFT_PLAINTEXT


DRAFT_CTR_CIPHERTEXT = bytes.fromhex("2BB8DB522AE978246CC775C3B0241BD4B0333FFDD2DB70C7EE7A4966E3B7")
DRAFT_AES_KW_CTR_INFO = bytes.fromhex(
    "D8608440A20139FFFD0550DAE613B2E0DC55F4322BE38BDBA9DC68F6818340A2012204456B69642D315818CE"
    "34035CE5C2E2666E46D4C131FC561DD190A6D26CFA1990"
)
DRAFT_ECDH_CTR_INFO = bytes.fromhex(
    "D8608440A20139FFFD0550DAE613B2E0DC55F4322BE38BDBA9DC68F6818344A101381CA120A4010220012158"
    "20EE0718F6B019C29CC611C18CEDE2214066DDCEDC2F0DBEF873CB224C715C1174225820279F2A88E4AB9E2ED3"
    "0C0FCB69515B31B5D36725BFDB9AE02032ED4D5AB52CB85818E28B4502E4F5151884A995405579006E9465C3E9"
    "4E3E0808"
)


def test_the_drafts_aes_ctr_examples_decrypt() -> None:
    device = ec.derive_private_key(int(DRAFT_DEVICE_D, 16), ec.SECP256R1())
    kw = suit.decrypt_payload(
        DRAFT_CTR_CIPHERTEXT, DRAFT_AES_KW_CTR_INFO, kid=b"kid-1", key=b"aaaaaaaaaaaaaaaa"
    )
    ecdh = suit.decrypt_payload(DRAFT_CTR_CIPHERTEXT, DRAFT_ECDH_CTR_INFO, kid=b"x", key=device)
    assert kw == ecdh == DRAFT_PLAINTEXT


def test_aes_ctr_for_streaming_devices_round_trips_and_tampering_fails_the_digest() -> None:
    sealed = suit.encrypt_payload(
        PLAINTEXT, [suit.KEKRecipient(KEK_KID, KEK)], content_alg="A128CTR"
    )
    body = cbor2.loads(sealed.encryption_info).value
    assert body[0] == b"" and body[1][1] == -65534 and len(body[1][5]) == 16
    assert len(sealed.ciphertext) == len(PLAINTEXT) and MARKER not in sealed.ciphertext
    info = sealed.encryption_info
    assert suit.decrypt_payload(sealed.ciphertext, info, kid=KEK_KID, key=KEK) == PLAINTEXT
    # No tag: an altered ciphertext decrypts to another plaintext, which the digest refuses.
    env = suit.decode_envelope(suit.create_envelope(_params(encryption_info=info), keys=[]))
    facts = device_rules.facts_from_manifest(env.manifest)
    garbled = suit.decrypt_payload(_flip(sealed.ciphertext, 7), info, kid=KEK_KID, key=KEK)
    with pytest.raises(device_rules.ImageDigestMismatchError):
        device_rules.check_payload(garbled, facts)
