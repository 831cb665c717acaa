"""Every envelope the product writes validates against the SUIT drafts' own CDDL.

The schema (tests/data/suit.cddl) is assembled from the published CDDL of
draft-ietf-suit-manifest-37, update-management-14, firmware-encryption-24, trust-domains-11 and
RFC 9052; the validator is cddl-verifier, an implementation independent of this codec. It accepts
all seven IETF example envelopes (Appendix B), which shows the schema is whole.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cddl_verifier import Validator

from manifests import suit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "data" / "suit.cddl"
VECTORS = ROOT / "tests" / "data" / "suit-vectors"
VENDOR = suit.vendor_id("acme.example")
IMAGE = b"\x7f" * 700
ES_KEY = suit.generate_private_key("ES256")
ED_KEY = suit.generate_private_key("Ed25519")


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Overrides the Django storage fixture: the codec tests need no settings."""


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(SCHEMA.read_text())


def check(validator: Validator, raw: bytes) -> None:
    result = validator.validate(raw, root_type="SUIT_Envelope_Tagged")
    assert result.valid, [str(d) for d in result.diagnostics]


def params(**changes: Any) -> suit.ManifestParams:
    base = suit.ManifestParams(
        vendor_id=VENDOR,
        class_id=suit.class_id(VENDOR, "thermo"),
        sequence_number=1042,
        version="2.4.1+17",
        security_counter=12,
        image_digest=hashlib.sha256(IMAGE).digest(),
        image_size=len(IMAGE),
        uri="coap://fw.example/fw/i/" + hashlib.sha256(IMAGE).hexdigest(),
        payload_format="mcuboot",
    )
    return dataclasses.replace(base, **changes)


def test_the_schema_accepts_every_ietf_example_envelope(validator: Validator) -> None:
    files = sorted(VECTORS.glob("*.hex"))
    assert len(files) == 7
    for path in files:
        check(validator, suit.read_envelope_input(path.read_bytes()))


@pytest.mark.parametrize("profile", suit.PROFILES)
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"uri": None},
        {"uri": "#app"},
        {"version": "3"},
        {"version_comparison": "lesser", "use_before": dt.datetime(2031, 1, 1, tzinfo=dt.UTC)},
        {"text": {"vendor-name": "Acme", "manifest-description": "release"}},
        {"component_id": (b"flash", b"\x00")},
        {"precursor_digests": (b"\xaa" * 32, b"\xbb" * 32)},
    ],
    ids=[
        "default",
        "no-uri",
        "fragment-uri",
        "one-part-version",
        "conditions",
        "text",
        "comp",
        "delta-precursors",
    ],
)
def test_envelopes_the_product_writes_validate(
    validator: Validator, profile: str, changes: dict[str, Any]
) -> None:
    raw = suit.create_envelope(params(profile=profile, **changes), keys=[ES_KEY, ED_KEY])
    check(validator, raw)


@pytest.mark.parametrize("profile", suit.PROFILES)
def test_severed_integrated_cosigned_and_mac_envelopes_validate(
    validator: Validator, profile: str
) -> None:
    p = params(profile=profile, uri="#app")
    severed = suit.create_envelope(p, keys=[ES_KEY], sever=["install", "text"])
    check(validator, severed)
    integrated = suit.integrate_payload(suit.create_envelope(p, keys=[ED_KEY]), IMAGE)
    check(validator, integrated)
    unsigned = suit.create_envelope(p, keys=[])
    check(validator, unsigned)
    digest_bstr = suit.decode_envelope(unsigned).digest_bstr
    blocks = [
        suit.sign_manifest_digest(unsigned, key=ES_KEY),
        suit.mac0(digest_bstr, bytes(range(32))),
    ]
    check(validator, suit.add_signatures(unsigned, blocks))


def test_the_validator_refuses_what_the_drafts_forbid(validator: Validator) -> None:
    raw = suit.create_envelope(params(), keys=[ES_KEY])
    top = cbor2.loads(raw)
    manifest = cbor2.loads(top.value[3])
    manifest[2] = "1042"  # a text sequence number
    bad = cbor2.dumps(cbor2.CBORTag(107, {2: top.value[2], 3: cbor2.dumps(manifest)}))
    result = validator.validate(bad, root_type="SUIT_Envelope_Tagged")
    assert not result.valid
    set_version = {**manifest, 2: 1042, 6: cbor2.dumps(["1", 2])}  # not [+int]
    bad = cbor2.dumps(cbor2.CBORTag(107, {2: top.value[2], 3: cbor2.dumps(set_version)}))
    assert not validator.validate(bad, root_type="SUIT_Envelope_Tagged").valid
