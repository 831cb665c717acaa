"""The SUIT report object on the wire (docs/lwm2m.md, "SUIT reports"): the ``fw_update``
command's nonce is checked before anything is sent, and a simulated SUIT device takes the nonce
on /26241/0/0 and serves its signed report on /26241/0/1 (opaque)."""

from __future__ import annotations

import pytest

from manifests.suit import keys as suit_keys
from workers.lwm2m import content
from workers.lwm2m.errors import DeviceOperationError
from workers.lwm2m.fwupdate import REPORT_NONCE_PATH, REPORT_PATH, parse_update_args
from workers.lwm2m.simulator import REPORT_OBJECT, DeviceState, SimulatedDevice

DIGEST = "ab" * 32


@pytest.mark.parametrize(
    "nonce", [pytest.param("zz" * 16, id="not-hex"), pytest.param("abc", id="odd"), "ab" * 65]
)
def test_a_bad_report_nonce_fails_the_command_before_anything_is_sent(nonce: str) -> None:
    with pytest.raises(DeviceOperationError) as refused:
        parse_update_args({"manifest_digest": DIGEST, "report_nonce": nonce})
    assert refused.value.permanent


def test_the_nonce_travels_with_the_request() -> None:
    request = parse_update_args({"manifest_digest": DIGEST, "report_nonce": "AB" * 16})
    assert request.report_nonce == "ab" * 16
    assert parse_update_args({"manifest_digest": DIGEST}).report_nonce == ""


def _device(with_key: bool) -> SimulatedDevice:
    key = suit_keys.generate_private_key("Ed25519") if with_key else None
    state = DeviceState(
        endpoint="sim-1",
        manufacturer="Acme",
        model="thermo",
        serial="1",
        vendor_id="00000000-0000-0000-0000-000000000001",
        class_id="00000000-0000-0000-0000-000000000002",
        report_key=suit_keys.private_key_pem(key).decode() if key else "",
    )
    return SimulatedDevice(state, server_uri="coap://127.0.0.1:5683", trust_anchors=[])


def test_a_suit_device_lists_the_report_object_and_serves_its_report_opaque() -> None:
    device = _device(with_key=True)
    assert any(link.object_id == REPORT_OBJECT for link in device._objects())
    device._sign_report(bytes(32), None)  # no nonce yet: no attempt to report on
    assert device.state.report == ""
    device.state.report_nonce = "01" * 16
    device._sign_report(bytes(32), None)
    answer = device.handle_read(REPORT_PATH, None)
    assert answer.opt.content_format == content.CT_OPAQUE
    assert bytes(answer.payload) == bytes.fromhex(device.state.report)


def test_a_device_without_report_key_has_no_report_object() -> None:
    device = _device(with_key=False)
    assert not any(link.object_id == REPORT_OBJECT for link in device._objects())
    assert device.handle_read(REPORT_NONCE_PATH, None).code.is_successful() is False
