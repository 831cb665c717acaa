"""The SUIT report codec (draft-ietf-suit-report-22 as profiled in docs/suit.md): what a device
signs round-trips, and every way a report can fail to be the device's word on this attempt is
refused with its own error."""

from __future__ import annotations

import os
from typing import Any

import cbor2
import pytest

from manifests.suit import keys
from manifests.suit import report as R
from manifests.suit.cbor import dumps
from manifests.suit.cose import sig_structure

DIGEST = bytes(range(32))
NONCE = bytes(range(100, 116))


@pytest.fixture(params=["Ed25519", "ES256"])
def key(request: Any) -> Any:
    return keys.generate_private_key(request.param)


def _verify(data: bytes, key: Any, **overrides: Any) -> R.SUITReport:
    args = {"public_key": key.public_key(), "manifest_digest": DIGEST, "nonce": NONCE}
    return R.verify_report(data, **{**args, **overrides})


def test_a_success_report_round_trips(key: Any) -> None:
    data = R.sign_report(R.SUITReport(DIGEST, NONCE), key)
    report = _verify(data, key)
    assert report.success and report.manifest_digest == DIGEST and report.nonce == NONCE


def test_a_failure_report_names_the_failing_command_and_reason(key: Any) -> None:
    failure = R.failure_for("device.class_mismatch")
    report = _verify(R.sign_report(R.SUITReport(DIGEST, NONCE, failure), key), key)
    assert report.failure == failure
    assert (failure.command, failure.reason_name) == (2, "condition-failed")
    assert "condition-failed" in report.describe()


def test_a_wrong_precursor_refusal_is_told_apart_from_an_image_mismatch(key: Any) -> None:
    """Both fail suit-condition-image-match in install; the wrong base's record carries the
    precursor parameter (-259) with the device's running image, the result's does not."""
    running = bytes(range(32, 64))
    wrong = R.failure_for("device.wrong_precursor", running_digest=running)
    mismatch = R.failure_for("device.image_digest_mismatch")
    assert (wrong.section, wrong.command, wrong.reason) == (
        mismatch.section,
        mismatch.command,
        mismatch.reason,
    )
    report = _verify(R.sign_report(R.SUITReport(DIGEST, NONCE, wrong), key), key)
    assert report.failure is not None and report.failure.wrong_precursor
    assert report.failure.precursor == running
    assert "wrong precursor" in report.describe()
    body = cbor2.loads(R.encode_report(R.SUITReport(DIGEST, NONCE, wrong)))
    assert cbor2.loads(body[4][6][4][-259]) == [[-16, running]]
    other = _verify(R.sign_report(R.SUITReport(DIGEST, NONCE, mismatch), key), key)
    assert other.failure is not None and not other.failure.wrong_precursor
    unnamed = R.failure_for("device.wrong_precursor")
    assert _verify(R.sign_report(R.SUITReport(DIGEST, NONCE, unnamed), key), key).failure == (
        unnamed
    )


def test_the_report_map_uses_the_drafts_keys() -> None:
    body = cbor2.loads(R.encode_report(R.SUITReport(DIGEST, NONCE)))
    assert body == {2: NONCE, 3: [], 4: True, 99: [[-16, DIGEST]]}


def test_forged_report_signed_by_another_key_is_refused(key: Any) -> None:
    data = R.sign_report(R.SUITReport(DIGEST, NONCE), keys.generate_private_key("Ed25519"))
    with pytest.raises(R.ReportForgedError):
        _verify(data, key)


def test_a_tampered_report_is_refused_as_forged(key: Any) -> None:
    tag = cbor2.loads(R.sign_report(R.SUITReport(DIGEST, NONCE), key))
    protected, unprotected, _payload, signature = tag.value
    other = R.encode_report(R.SUITReport(DIGEST, NONCE, R.failure_for("x")))
    data = dumps(cbor2.CBORTag(18, [protected, dict(unprotected), other, signature]))
    with pytest.raises(R.ReportForgedError):
        _verify(data, key)


def test_replayed_report_of_an_earlier_attempt_is_refused(key: Any) -> None:
    data = R.sign_report(R.SUITReport(DIGEST, NONCE), key)
    with pytest.raises(R.ReportReplayedError):
        _verify(data, key, nonce=os.urandom(16))


def test_report_for_another_manifest_is_refused(key: Any) -> None:
    data = R.sign_report(R.SUITReport(DIGEST, NONCE), key)
    with pytest.raises(R.ReportWrongManifestError):
        _verify(data, key, manifest_digest=os.urandom(32))


def _signed_payload(key: Any, payload: bytes) -> bytes:
    """A correctly signed COSE_Sign1 over arbitrary payload bytes (to reach the parser)."""
    info = keys.key_info(key)
    protected = dumps({1: -19, 4: info.kid})
    return dumps(
        cbor2.CBORTag(18, [protected, {}, payload, key.sign(sig_structure(protected, payload))])
    )


GOOD_BODY: dict[int, Any] = {2: NONCE, 3: [], 4: True, 99: [[-16, DIGEST]]}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({k: v for k, v in GOOD_BODY.items() if k != 2}, id="no-nonce"),
        pytest.param({**GOOD_BODY, 2: b"short"}, id="short-nonce"),
        pytest.param({**GOOD_BODY, 99: [[-43, DIGEST]]}, id="not-sha256"),
        pytest.param({**GOOD_BODY, 99: [[-16, DIGEST[:8]]]}, id="short-digest"),
        pytest.param({k: v for k, v in GOOD_BODY.items() if k != 99}, id="no-reference"),
        pytest.param({**GOOD_BODY, 4: False}, id="result-false"),
        pytest.param({**GOOD_BODY, 4: {5: 3, 6: [[], 20, 0, 0, {}], 7: 0}}, id="failure-ok"),
        pytest.param({**GOOD_BODY, 4: {5: 3, 6: [1], 7: 10}}, id="bad-record"),
        pytest.param({**GOOD_BODY, 4: {5: 3, 6: [[], 20, 0, 0, []], 7: 10}}, id="bad-properties"),
        pytest.param(
            {**GOOD_BODY, 4: {5: 3, 6: [[], 20, 0, 0, {-259: b"\xff"}], 7: 10}},
            id="precursor-not-cbor",
        ),
        pytest.param(
            {**GOOD_BODY, 4: {5: 3, 6: [[], 20, 0, 0, {-259: dumps([[-16, b"x"]])}], 7: 10}},
            id="precursor-short-digest",
        ),
        pytest.param({**GOOD_BODY, 3: {}}, id="records-not-list"),
        pytest.param([1, 2], id="not-a-map"),
    ],
)
def test_malformed_reports_are_refused(body: Any) -> None:
    key = keys.generate_private_key("Ed25519")
    with pytest.raises(R.ReportMalformedError):
        _verify(_signed_payload(key, dumps(body)), key)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\x00", id="not-cbor"),
        pytest.param(dumps([b"", {}, b"", b""]), id="untagged"),
        pytest.param(dumps(cbor2.CBORTag(17, [b"", {}, b"", b""])), id="mac0"),
        pytest.param(dumps(cbor2.CBORTag(18, [b"", {}, None, b""])), id="detached"),
        pytest.param(b"\x40" * (R.MAX_REPORT_BYTES + 1), id="too-large"),
    ],
)
def test_non_reports_are_refused_as_malformed(data: bytes) -> None:
    key = keys.generate_private_key("Ed25519")
    with pytest.raises(R.ReportMalformedError):
        _verify(data, key)


def test_a_report_signed_with_an_algorithm_the_key_is_not_for_is_refused() -> None:
    key = keys.generate_private_key("Ed25519")
    data = R.sign_report(R.SUITReport(DIGEST, NONCE), key)
    tag = cbor2.loads(data)
    protected = dumps({1: -9, 4: keys.key_info(key).kid})  # ESP256 on an Ed25519 key
    forged = dumps(cbor2.CBORTag(18, [protected, {}, tag.value[2], tag.value[3]]))
    with pytest.raises(R.ReportForgedError):
        _verify(forged, key)
