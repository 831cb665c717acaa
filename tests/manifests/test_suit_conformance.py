"""SUIT conformance: what independent checkers found, one named case per finding.

Sources: draft-ietf-suit-manifest-37, update-management-14, firmware-encryption-24,
trust-domains-11 and the MTI profiles (ESP256 / Ed25519 / HMAC-256).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import uuid
from typing import Any

import cbor2
import pytest

from manifests import device_rules, suit
from manifests.suit.fastpath import decode_fast

VENDOR = suit.vendor_id("acme.example")
CLASS = suit.class_id(VENDOR, "thermo")
IMAGE = b"\x5a" * 600
ES_KEY = suit.generate_private_key("ES256")
ED_KEY = suit.generate_private_key("Ed25519")
MAC_KEY = bytes(range(32))


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Overrides the Django storage fixture: the codec tests need no settings."""


def make_params(**changes: Any) -> suit.ManifestParams:
    base = suit.ManifestParams(
        vendor_id=VENDOR,
        class_id=CLASS,
        sequence_number=42,
        version="1.2.3+42",
        security_counter=5,
        image_digest=hashlib.sha256(IMAGE).digest(),
        image_size=len(IMAGE),
        uri="coap://fw.example/fw/1",
        component_id=(b"\x00",),
        payload_format="mcuboot",
    )
    return dataclasses.replace(base, **changes)


def enc(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def members(raw: bytes) -> dict[int, Any]:
    """The manifest map of an envelope, one level decoded."""
    return cbor2.loads(cbor2.loads(raw).value[3])


def envelope_of(manifest: dict[Any, Any], *, blocks: tuple[bytes, ...] = (), **extra: Any) -> bytes:
    """A tagged envelope around ``manifest`` (digest over the manifest bstr with its head)."""
    manifest_bytes = enc(manifest)
    digest = enc([-16, hashlib.sha256(enc(manifest_bytes)).digest()])
    auth = enc([digest, *blocks])
    env: dict[Any, Any] = {2: auth, 3: manifest_bytes}
    env.update({int(k[1:]) if k.startswith("m") else k: v for k, v in extra.items()})
    return enc(cbor2.CBORTag(107, env))


def foreign_manifest(changes: dict[int, Any] | None = None) -> dict[Any, Any]:
    """A standard SUIT manifest of another tool: shared parameters, install fetches."""
    shared = [
        20,
        {
            1: VENDOR.bytes,
            2: CLASS.bytes,
            3: enc([-16, hashlib.sha256(IMAGE).digest()]),
            14: len(IMAGE),
        },
        1,
        15,
        2,
        15,
    ]
    manifest: dict[Any, Any] = {
        1: 1,
        2: 7,
        3: enc({2: [[b"\x00"]], 4: enc(shared)}),
        20: enc([20, {21: "coap://fw.example/fw/1"}, 21, 2, 3, 15]),
    }
    manifest.update(changes or {})
    return manifest


# --- 1. custom parameters are never in the shared sequence --------------------------------------


def test_custom_parameters_are_written_in_install_not_in_the_shared_sequence() -> None:
    raw = suit.create_envelope(make_params(), keys=[ES_KEY])
    m = members(raw)
    shared = cbor2.loads(cbor2.loads(m[3])[4])
    assert shared[0] == 20
    assert sorted(shared[1]) == [1, 2, 3, 14]  # no -257 / -258
    install = cbor2.loads(m[20])
    assert install[:2] == [20, {21: "coap://fw.example/fw/1", -257: 5, -258: "mcuboot"}]
    assert install[2:] == [-257, 15, -258, 15, 21, 2, 3, 15]
    env = suit.decode_envelope(raw, cache=False)
    assert (env.manifest.security_counter, env.manifest.payload_format) == (5, "mcuboot")
    assert decode_fast(raw, 16) == env  # the exact-layout fast path reads the new layout


def test_old_envelope_with_custom_parameters_in_the_shared_sequence_still_decodes() -> None:
    shared = [
        20,
        {
            1: VENDOR.bytes,
            2: CLASS.bytes,
            3: enc([-16, hashlib.sha256(IMAGE).digest()]),
            14: len(IMAGE),
            -257: 4,
            -258: "mcuboot",
        },
        1,
        15,
        2,
        15,
    ]
    old = foreign_manifest(
        {
            3: enc({2: [[b"\x00"]], 4: enc(shared)}),
            6: enc([1, 2, 3, 42]),
            20: enc([-257, 15, -258, 15, 20, {21: "coap://fw.example/fw/1"}, 21, 2, 3, 15]),
        }
    )
    m = suit.decode_envelope(envelope_of(old), cache=False).manifest
    assert (m.security_counter, m.payload_format) == (4, "mcuboot")
    assert m.firmware_version == "1.2.3+42"  # the old four-integer set-version
    assert m.profile == "extended"


# --- 2. set-version: 1 to 3 integers, no build metadata -------------------------------------------


@pytest.mark.parametrize(
    ("version", "set_version", "full"),
    [
        ("1.2.3+42", [1, 2, 3], "1.2.3+42"),
        ("1.2+7", [1, 2, 0], "1.2.0+7"),
        ("4.5", [4, 5], "4.5"),
        ("9", [9], "9"),
    ],
)
def test_set_version_has_at_most_three_integers_and_the_build_travels_in_text(
    version: str, set_version: list[int], full: str
) -> None:
    raw = suit.create_envelope(make_params(version=version), keys=[ES_KEY])
    assert cbor2.loads(members(raw)[6]) == set_version
    m = suit.decode_envelope(raw, cache=False).manifest
    assert m.set_version == tuple(set_version)
    assert m.firmware_version == full
    assert m.text["current-version"] == version


def test_version_condition_compares_on_the_three_release_integers() -> None:
    raw = suit.create_envelope(
        make_params(version="2.0.1+99", version_comparison="lesser"), keys=[ES_KEY]
    )
    shared = cbor2.loads(cbor2.loads(members(raw)[3])[4])
    assert cbor2.loads(shared[1][28]) == [5, [2, 0, 1]]


def test_current_version_text_that_disagrees_with_set_version_is_only_text() -> None:
    manifest = foreign_manifest({6: enc([1, 2, 3]), 23: enc({"en": {(b"\x00",): {8: "7.7.7+1"}}})})
    m = suit.decode_envelope(envelope_of(manifest), cache=False).manifest
    assert m.firmware_version == "1.2.3"
    assert m.text["current-version"] == "7.7.7+1"


# --- 3. signing algorithms ------------------------------------------------------------------------


def test_signs_with_esp256_and_ed25519_and_still_verifies_es256_and_eddsa() -> None:
    raw = suit.create_envelope(make_params(), keys=[ES_KEY, ED_KEY])
    env = suit.decode_envelope(raw)
    assert [(b.alg, b.alg_name) for b in env.signatures] == [(-9, "ESP256"), (-19, "Ed25519")]
    assert suit.verify_envelope(env, [ES_KEY.public_key(), ED_KEY.public_key()], threshold=2).ok
    # a block the old way (-7 / -8), same key and bytes signed: still verifies
    from manifests.suit.cose import sig_structure

    legacy = []
    for key, alg in ((ES_KEY, -7), (ED_KEY, -8)):
        protected = enc({1: alg, 4: suit.kid_for_public_key(key)})
        tbs = sig_structure(protected, env.digest_bstr)
        if alg == -8:
            signature = key.sign(tbs)
        else:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

            r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        legacy.append(enc(cbor2.CBORTag(18, [protected, {}, None, signature])))
    old = suit.decode_envelope(
        suit.add_signatures(suit.create_envelope(make_params(), keys=[]), legacy)
    )
    assert [b.alg for b in old.signatures] == [-7, -8]
    assert suit.verify_envelope(old, [ES_KEY.public_key(), ED_KEY.public_key()], threshold=2).ok


# --- 4. suit-text-current-version -----------------------------------------------------------------


def test_text_current_version_is_written_for_the_component() -> None:
    raw = suit.create_envelope(make_params(text={"vendor-name": "Acme"}), keys=[ES_KEY])
    text = cbor2.loads(members(raw)[23])
    assert text == {"en": {(b"\x00",): {1: "Acme", 8: "1.2.3+42"}}}
    with pytest.raises(suit.SUITParamsError, match="current-version"):
        suit.create_envelope(make_params(text={"current-version": "9.9.9"}), keys=[])


# --- 5. manifest profiles -------------------------------------------------------------------------


def test_standard_profile_envelope_carries_no_custom_key() -> None:
    raw = suit.create_envelope(make_params(profile="standard"), keys=[ES_KEY])
    m = members(raw)
    assert cbor2.loads(m[20]) == [20, {21: "coap://fw.example/fw/1"}, 21, 2, 3, 15]
    assert b"\x39\x01\x00" not in raw and b"\x39\x01\x01" not in raw  # no -257 / -258 anywhere
    env = suit.decode_envelope(raw, cache=False)
    assert env.manifest.profile == "standard"
    assert (env.manifest.security_counter, env.manifest.payload_format) == (None, None)
    assert not any(c < 0 for c in env.manifest.conditions)
    assert decode_fast(raw, 16) == env
    bare = suit.create_envelope(make_params(profile="standard", uri=None), keys=[])
    assert cbor2.loads(members(bare)[20]) == [3, 15]


def _device(profile: str) -> device_rules.DeviceIdentity:
    return device_rules.DeviceIdentity(
        vendor_id=VENDOR, class_id=CLASS, component_id=(b"\x00",), manifest_profile=profile
    )


def _check(raw: bytes, profile: str, *, sequence: int = 41, counter: int = 5) -> None:
    facts = device_rules.facts_from_manifest(suit.decode_envelope(raw).manifest)
    device_rules.check_manifest(
        facts,
        device=_device(profile),
        installed=device_rules.InstalledFirmware("1.0.0", sequence, counter),
        now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )


def test_standard_profile_device_takes_the_sequence_number_as_the_rollback_floor() -> None:
    raw = suit.create_envelope(make_params(profile="standard"), keys=[ES_KEY])
    _check(raw, "standard", counter=99)  # no counter in the manifest: not compared
    with pytest.raises(device_rules.RollbackError):
        _check(raw, "standard", sequence=42)  # the sequence number is the floor
    with pytest.raises(device_rules.ComponentMismatchError, match="payload format None"):
        _check(raw, "extended")  # an extended device needs the declared format and counter
    # an extended envelope on a standard device is still checked in full
    extended = suit.create_envelope(make_params(), keys=[ES_KEY])
    with pytest.raises(device_rules.SecurityCounterError):
        _check(extended, "standard", counter=6)


@pytest.mark.parametrize("profile", ["bogus", ""])
def test_unknown_profile_is_refused_by_the_builder(profile: str) -> None:
    with pytest.raises(suit.SUITParamsError, match="profile"):
        suit.create_envelope(make_params(profile=profile), keys=[])


# --- 6. suit-coswid -------------------------------------------------------------------------------

COSWID = enc({0: "tag-id", 12: 0, 1: "thermo firmware", 13: "1.2.3"})


def test_suit_coswid_inline_in_the_manifest_is_accepted_and_shown() -> None:
    raw = envelope_of(foreign_manifest({14: COSWID}))
    env = suit.decode_envelope(raw, cache=False)
    assert env.manifest.coswid[1] == "thermo firmware"
    assert env.to_json_dict()["coswid"]["1"] == "thermo firmware"


def test_suit_coswid_severed_into_the_envelope_is_accepted() -> None:
    manifest = foreign_manifest({14: [-16, hashlib.sha256(enc(COSWID)).digest()]})
    raw = envelope_of(manifest, m14=COSWID)
    env = suit.decode_envelope(raw, cache=False)
    assert env.severed["coswid"].present
    assert env.manifest.coswid[13] == "1.2.3"
    stripped = envelope_of(manifest)
    assert not suit.decode_envelope(stripped, cache=False).severed["coswid"].present
    with pytest.raises(suit.SUITDigestMismatchError):
        suit.decode_envelope(envelope_of(manifest, m14=enc({0: "other"})), cache=False)


# --- 7. COSE_Mac0 ---------------------------------------------------------------------------------


def test_cose_mac0_block_verifies_with_the_symmetric_key() -> None:
    unsigned = suit.create_envelope(make_params(), keys=[])
    digest_bstr = suit.decode_envelope(unsigned).digest_bstr
    raw = suit.add_signatures(unsigned, [suit.mac0(digest_bstr, MAC_KEY)])
    env = suit.decode_envelope(raw)
    block = env.signatures[0]
    assert (block.kind, block.alg, block.alg_name) == ("mac0", 5, "HMAC-256")
    assert env.to_json_dict()["signatures"][0]["kind"] == "COSE_Mac0"
    assert suit.verify_envelope(env, [], mac_keys=[MAC_KEY]).ok
    wrong = suit.verify_envelope(env, [], mac_keys=[bytes(32)])
    assert not wrong.ok


def test_cose_mac0_without_a_symmetric_key_is_refused_as_unsupported_not_malformed() -> None:
    unsigned = suit.create_envelope(make_params(), keys=[])
    digest_bstr = suit.decode_envelope(unsigned).digest_bstr
    env = suit.decode_envelope(suit.add_signatures(unsigned, [suit.mac0(digest_bstr, MAC_KEY)]))
    with pytest.raises(suit.SUITUnsupportedError) as info:
        suit.verify_envelope(env, [ES_KEY.public_key()])
    assert info.value.code == "suit.unsupported"
    assert not isinstance(info.value, suit.SUITDecodeError)


def test_cose_mac0_with_a_short_tag_is_malformed() -> None:
    protected = enc({1: 5})
    block = enc(cbor2.CBORTag(17, [protected, {}, None, b"\x00" * 16]))
    with pytest.raises(suit.SUITCOSEError, match="HMAC"):
        suit.decode_envelope(envelope_of(foreign_manifest(), blocks=(block,)), cache=False)


# --- 8. encryption-info and manifest-component-id -------------------------------------------------

ENCRYPTION_INFO = enc(
    cbor2.CBORTag(96, [b"", {5: b"\x01" * 12}, None, [[b"\xa1\x01\x22", {4: b"kid"}, b"w" * 40]]])
)


def test_encryption_info_is_decoded_shown_and_refused_as_unsupported() -> None:
    manifest = foreign_manifest(
        {20: enc([20, {19: ENCRYPTION_INFO, 21: "coap://fw.example/fw/1"}, 21, 2, 3, 15])}
    )
    raw = envelope_of(manifest)
    env = suit.decode_envelope(raw, cache=False)
    assert [info.tag for info in env.manifest.encryption_info] == [96]
    assert env.to_json_dict()["encryption_info"][0]["structure"] == "COSE_Encrypt"
    with pytest.raises(suit.SUITUnsupportedError, match="encrypted"):
        suit.verify_envelope(env, [ES_KEY.public_key()])
    facts = device_rules.facts_from_manifest(env.manifest)
    with pytest.raises(device_rules.UnsupportedManifestError) as info:
        device_rules.check_manifest(
            facts,
            device=_device("standard"),
            installed=device_rules.InstalledFirmware("1.0.0", 0, 0),
            now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        )
    assert info.value.fw_result == device_rules.FwResult.UNSUPPORTED_PACKAGE_TYPE


def test_encryption_info_that_is_not_cose_encrypt_is_malformed() -> None:
    manifest = foreign_manifest({20: enc([20, {19: enc([1, 2])}, 3, 15])})
    with pytest.raises(suit.SUITTypeError, match="encryption-info"):
        suit.decode_envelope(envelope_of(manifest), cache=False)


def test_manifest_component_id_is_accepted_and_shown() -> None:
    raw = envelope_of(foreign_manifest({5: [b"manifest", b"\x01"]}))
    env = suit.decode_envelope(raw, cache=False)
    assert env.manifest.manifest_component_id == (b"manifest", b"\x01")
    assert env.to_json_dict()["manifest_component_id"] == ["6d616e6966657374", "01"]
    _check(raw, "standard", sequence=1)  # nothing there the device must enforce


# --- 9. untagged envelopes ------------------------------------------------------------------------


def test_untagged_envelope_is_named_as_such() -> None:
    raw = suit.create_envelope(make_params(), keys=[ES_KEY])
    untagged = raw[2:]  # drop d8 6b
    with pytest.raises(suit.SUITTagError, match=r"untagged SUIT_Envelope \(tag 107 missing\)"):
        suit.read_envelope_input(untagged)
    with pytest.raises(suit.SUITTagError, match=r"untagged SUIT_Envelope \(tag 107 missing\)"):
        suit.decode_envelope(untagged, cache=False)


def test_fast_path_and_general_decoder_agree_on_every_profile_and_option() -> None:
    from manifests.suit.decode import _decode_envelope

    for profile in suit.PROFILES:
        for uri in (None, "#app", "coap://fw.example/fw/i/" + "ab" * 32):
            for version in ("1", "1.2", "1.2.3", "1.2.3+4"):
                params = make_params(
                    profile=profile,
                    uri=uri,
                    version=version,
                    use_before=dt.datetime(2031, 1, 1, tzinfo=dt.UTC),
                    version_comparison="greater-equal",
                    vendor_id=uuid.uuid4(),
                )
                raw = suit.create_envelope(params, keys=[ES_KEY, ED_KEY])
                fast = decode_fast(raw, 16)
                assert fast is not None, (profile, uri, version)
                assert fast == _decode_envelope(raw, 16)


def test_cose_mac0_interoperates_with_pycose_both_ways() -> None:
    from pycose.algorithms import HMAC256
    from pycose.headers import KID, Algorithm
    from pycose.keys import SymmetricKey
    from pycose.messages import Mac0Message

    unsigned = suit.create_envelope(make_params(), keys=[])
    digest_bstr = suit.decode_envelope(unsigned).digest_bstr
    ours = cbor2.loads(suit.mac0(digest_bstr, MAC_KEY))
    protected, unprotected, payload, tag = ours.value
    message = Mac0Message.from_cose_obj([protected, dict(unprotected), payload, tag], True)
    message.payload = digest_bstr  # detached: the envelope supplies it
    message.key = SymmetricKey(k=MAC_KEY)
    assert message.verify_tag()
    from manifests.suit.cose import symmetric_kid

    theirs = Mac0Message(
        phdr={Algorithm: HMAC256, KID: symmetric_kid(MAC_KEY)},
        payload=digest_bstr,
        key=SymmetricKey(k=MAC_KEY),
    )
    encoded = cbor2.loads(theirs.encode())
    block = cbor2.dumps(cbor2.CBORTag(17, [encoded.value[0], {}, None, encoded.value[3]]))
    env = suit.decode_envelope(suit.add_signatures(unsigned, [block]))
    assert suit.verify_envelope(env, [], mac_keys=[MAC_KEY]).ok


def test_an_uploaded_approval_block_must_be_a_signature_not_a_mac() -> None:
    unsigned = suit.create_envelope(make_params(), keys=[])
    block = suit.mac0(suit.decode_envelope(unsigned).digest_bstr, MAC_KEY)
    with pytest.raises(suit.SUITCOSEError, match="COSE_Mac0 names no signer"):
        suit.parse_signature_block(block)
