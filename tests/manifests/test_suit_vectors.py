"""The IETF SUIT examples (draft-ietf-suit-manifest Appendix B) decode to the published facts."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from manifests import suit

VECTORS = Path(__file__).resolve().parents[1] / "data" / "suit-vectors"
VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
IMAGE_DIGEST = bytes.fromhex("00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210")
FACTS = {
    "example0_secure_boot": (
        0,
        None,
        "6658ea560262696dd1f13b782239a064da7c6c5cbaf52fded428a6fc83c7e5af",
    ),
    "example1_download_install": (
        1,
        "http://example.com/file.bin",
        "1f2e7acca0dc2786f2fe4eb947f50873a6a3cfaa98866c5b02e621f42074daf2",
    ),
    "example2_download_install_secureboot_severed": (
        2,
        "http://example.com/very/long/path/to/file/file.bin",  # only with the severed install
        "6a5197ed8f9dccf733d1c89a359441708e070b4c6dcb9a1c2c82c6165f609b90",
    ),
}
FILES = sorted(p.name for p in VECTORS.glob("*.hex"))


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Overrides the Django storage fixture: the codec tests need no settings."""


def _load(name: str) -> bytes:
    return suit.read_envelope_input((VECTORS / name).read_bytes())


@pytest.fixture(scope="module")
def example_public_key() -> suit.PublicKey:
    return suit.load_public_key_pem((VECTORS / "suit_examples_public_key.pem").read_bytes())


def test_vectors_are_present() -> None:
    assert len(FILES) == 7, f"expected the 7 IETF example envelopes in {VECTORS}"


@pytest.mark.parametrize("name", FILES)
def test_vector_decodes_to_published_facts(name: str) -> None:
    prefix = name.split(".")[0]
    sequence, uri, manifest_digest = FACTS[prefix]
    env = suit.decode_envelope(_load(name), cache=False)
    m = env.manifest
    assert m.manifest_version == 1
    assert m.sequence_number == sequence
    assert m.vendor_id == VENDOR
    assert m.class_id == CLASS
    assert m.image_size == 34768
    assert m.image_digest == IMAGE_DIGEST
    assert m.image_digest_alg == -16
    assert m.components == ((b"\x00",),)
    assert env.manifest_digest.hex() == manifest_digest
    # The digest covers the manifest bstr including its CBOR head.
    head = cbor2.dumps(env.manifest_bytes)
    assert hashlib.sha256(head).hexdigest() == manifest_digest
    if ".2_" in name or prefix != "example2_download_install_secureboot_severed":
        assert m.uri == uri
    else:
        assert m.uri is None  # the install sequence holding it was severed away
    assert {1, 2, 3} <= m.conditions  # vendor, class and image-match are checked


@pytest.mark.parametrize("name", [n for n in FILES if ".0_" not in n])
def test_signed_vector_verifies_with_the_published_key(
    name: str, example_public_key: suit.PublicKey
) -> None:
    env = suit.decode_envelope(_load(name))
    assert len(env.signatures) == 1
    block = env.signatures[0]
    assert block.alg == -7
    assert block.kid is None
    assert block.protected == bytes.fromhex("a10126")
    assert suit.verify_signature_block(env, block, example_public_key)
    result = suit.verify_envelope(env, [example_public_key])
    assert result.ok
    assert result.valid_kids == (suit.kid_for_public_key(example_public_key),)


@pytest.mark.parametrize("name", [n for n in FILES if ".0_" in n])
def test_unsigned_vector_has_no_signature_and_does_not_verify(
    name: str, example_public_key: suit.PublicKey
) -> None:
    env = suit.decode_envelope(_load(name))
    assert env.signatures == ()
    result = suit.verify_envelope(env, [example_public_key])
    assert not result.ok
    assert "no signature" in result.reasons[0]


def test_example2_severable_members_are_checked_against_their_digests() -> None:
    env = suit.decode_envelope(_load(FILES[-1]))
    assert set(env.severed) == {"install", "text"}
    assert all(member.present for member in env.severed.values())
    assert env.manifest.text["vendor-domain"] == "arm.com"
    assert "install" in env.manifest.sequences
    assert env.to_json_dict()["severed"] == {"install": "present", "text": "present"}


def test_example2_without_severable_members_reports_them_absent() -> None:
    name = next(n for n in FILES if n.startswith("example2") and ".1_" in n)
    env = suit.decode_envelope(_load(name))
    assert {k: v.present for k, v in env.severed.items()} == {"install": False, "text": False}
    assert env.manifest.text == {}
    assert "install" not in env.manifest.sequences


@pytest.mark.parametrize("member", [20, 23])
def test_tampered_severed_member_is_detected(member: int) -> None:
    raw = _load(FILES[-1])
    top = cbor2.loads(raw)
    envelope = dict(top.value)
    content = bytearray(envelope[member])
    content[-1] ^= 0x01
    envelope[member] = bytes(content)
    tampered = cbor2.dumps(cbor2.CBORTag(107, envelope))
    with pytest.raises(suit.SUITDigestMismatchError) as info:
        suit.decode_envelope(tampered)
    assert info.value.code == "suit.digest_mismatch"
    assert {20: "envelope/install", 23: "envelope/text"}[member] in str(info.value)


def test_tampered_manifest_is_detected() -> None:
    raw = _load(FILES[1])
    top = cbor2.loads(raw)
    envelope = dict(top.value)
    manifest = bytearray(envelope[3])
    manifest[4] ^= 0x01  # the sequence number
    envelope[3] = bytes(manifest)
    with pytest.raises(suit.SUITDigestMismatchError, match="authentication-wrapper/digest"):
        suit.decode_envelope(cbor2.dumps(cbor2.CBORTag(107, envelope)))


def test_vendor_id_is_uuid5_of_the_domain() -> None:
    assert suit.vendor_id("arm.com") == VENDOR
    assert str(suit.vendor_id("arm.com")) == "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"


def test_class_id_is_uuid5_in_the_vendor_namespace() -> None:
    assert suit.class_id(VENDOR, "thermo") == uuid.uuid5(VENDOR, "thermo")
    assert suit.class_id(VENDOR, "thermo") != suit.class_id(VENDOR, "thermo-v2")


def test_kid_matches_the_rfc_9679_example() -> None:
    x = int("65eda5a12577c2bae829437fe338701a10aaa375e1bb5b5de108de439c08551d", 16)
    y = int("1e52ed75701163f7f9e40ddf9f341b3dc9ba860af7e0ca7ca7e9eecd0084d19c", 16)
    key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    assert (
        suit.kid_for_public_key(key).hex()
        == "496bd8afadf307e5b08c64b0421bf9dc01528a344a43bda88fadd1669da253ec"
    )


def test_hex_and_binary_inputs_are_equivalent() -> None:
    text = (VECTORS / FILES[0]).read_bytes()
    binary = suit.read_envelope_input(text)
    assert suit.read_envelope_input(binary) == binary
    assert suit.read_envelope_input(b"  " + binary.hex().upper().encode() + b"\n") == binary
