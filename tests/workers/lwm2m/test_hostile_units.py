"""The pure cores behind the gateway's hostile-input handling: the datagram screen, the Block1
assembler, the endpoint-name rules, log escaping and rate limiting, the admission rules; and the
settings defaults (provisioned admission and no NoSec unless DEBUG)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.lwm2m import admission, logsafe, names, wire
from workers.lwm2m.block1 import Block1Assembler, BlockOptionError, IncompleteBodyError
from workers.lwm2m.errors import PayloadTooLargeError
from workers.lwm2m.fuzzcorpus import coap_request

REPO = Path(__file__).resolve().parents[3]


# --- wire.screen ------------------------------------------------------------------------------


def test_the_fuzzers_six_bytes_are_refused_with_a_piggybacked_400() -> None:
    verdict = wire.screen(bytes.fromhex("40011234b1ff"))
    assert not verdict.ok and verdict.kind == "malformed"
    assert verdict.reply is not None
    assert verdict.reply[:4] == bytes([0x60, 0x80, 0x12, 0x34])  # ACK 4.00, same message id


def test_truncated_datagram_gets_413_with_size1() -> None:
    verdict = wire.screen(coap_request(2, 7, path=[b"rd"]), truncated=True, limit=17408)
    assert verdict.kind == "oversize" and verdict.reply is not None
    assert verdict.reply[1] == wire.REQUEST_ENTITY_TOO_LARGE
    assert verdict.reply[4 + 1 : 4 + 1 + 4] == bytes([0xD2, 47]) + (17408).to_bytes(2, "big")


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (coap_request(1, 1, path=[b"x" * 256]), "option 11 of 256 bytes"),
        (coap_request(1, 1, extra=[(27, b"\x01\x02\x03\x04")]), "option 27 of 4 bytes"),
        (bytes.fromhex("4f011234") + b"\x00" * 15, "bad token length"),
        (bytes.fromhex("40011234ff"), "payload marker without payload"),
        (bytes.fromhex("40011234f0"), "reserved option nibble 15"),
        (bytes.fromhex("40c11234"), "reserved code class 6"),
        (bytes.fromhex("60011234"), "code and message type do not fit"),
    ],
)
def test_malformed_datagrams_are_refused_with_the_reason(datagram: bytes, reason: str) -> None:
    verdict = wire.screen(datagram)
    assert not verdict.ok and verdict.reason == reason


def test_non_confirmable_and_responses_get_no_reply() -> None:
    assert wire.screen(coap_request(1, 1, path=[b"\xff"], mtype=1)).reply is None
    response = bytes([0x40, 0x45, 0, 1, 0xB1, 0xFF])  # CON 2.05 with a bad Uri-Path
    assert not wire.screen(response).ok and wire.screen(response).reply is None


def test_valid_requests_pass() -> None:
    assert wire.screen(coap_request(2, 1, path=[b"rd"], query=[b"ep=urn:imei:1"])).ok
    assert wire.screen(bytes([0x40, 0, 0, 1])).ok  # CoAP ping


# --- Block1Assembler --------------------------------------------------------------------------


def feed(asm: Block1Assembler, num: int, more: bool, payload: bytes, **kw: object) -> bytes | None:
    args = {"key": "k", "peer": "p", "szx": 0, "size1": None, "now": 0.0, **kw}
    return asm.feed(
        args.pop("key"),
        num=num,
        more=more,
        payload=payload,
        **args,  # type: ignore[arg-type]
    )


def test_block1_assembles_in_order() -> None:
    asm = Block1Assembler(max_bytes=64)
    assert feed(asm, 0, True, b"a" * 16) is None
    assert feed(asm, 1, False, b"bc") == b"a" * 16 + b"bc"
    assert len(asm) == 0


def test_block1_gap_and_missing_start_are_incomplete() -> None:
    asm = Block1Assembler(max_bytes=1024)
    feed(asm, 0, True, b"a" * 16)
    with pytest.raises(IncompleteBodyError):
        feed(asm, 5, False, b"x")
    assert len(asm) == 0
    with pytest.raises(IncompleteBodyError):
        feed(asm, 1, False, b"x")


def test_block1_size1_over_the_limit_is_refused_before_anything_is_kept() -> None:
    asm = Block1Assembler(max_bytes=64)
    with pytest.raises(PayloadTooLargeError):
        feed(asm, 0, True, b"a" * 16, size1=10**6)
    assert len(asm) == 0 and asm.held_bytes == 0


def test_block1_body_cannot_grow_past_the_limit() -> None:
    asm = Block1Assembler(max_bytes=40)
    feed(asm, 0, True, b"a" * 16)
    feed(asm, 1, True, b"a" * 16)
    with pytest.raises(PayloadTooLargeError):
        feed(asm, 2, True, b"a" * 16)
    assert len(asm) == 0


def test_block1_wrong_block_size_and_bert_are_refused() -> None:
    asm = Block1Assembler(max_bytes=1024)
    with pytest.raises(BlockOptionError):
        feed(asm, 0, True, b"short")
    with pytest.raises(BlockOptionError):
        feed(asm, 0, True, b"a" * 1024, szx=7)


def test_block1_holds_a_bounded_number_of_bodies_per_peer_and_in_all() -> None:
    asm = Block1Assembler(max_bytes=1024, max_assemblies=8, max_per_peer=2, ttl=10)
    for i in range(5):
        feed(asm, 0, True, b"a" * 16, key=f"one-{i}", peer="one")
    assert len(asm) == 2
    for i in range(20):
        feed(asm, 0, True, b"a" * 16, key=f"many-{i}", peer=f"peer-{i}")
    assert len(asm) == 8
    feed(asm, 0, True, b"a" * 16, key="late", peer="late", now=11.0)
    assert len(asm) == 1  # the others expired


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["acme.example-dev01", "urn:imei:490154203237518", "urn:dev:os:00A0C9-01%2F"]
)
def test_endpoint_name_rules_accept_real_names(name: str) -> None:
    assert names.check_endpoint_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "missing"),
        ("a" * 129, "129 characters"),
        ("\u0430cme", "non-ASCII"),
        ("a/b", "'/'"),
        ("a%zz", "'%'"),
        (".hidden", "start and end"),
        ("a..b", "'..'"),
    ],
)
def test_endpoint_name_rules_refuse_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(names.EndpointNameError, match=reason):
        names.check_endpoint_name(name)


def test_device_text_strips_controls_bidi_and_bounds_length() -> None:
    assert names.device_text("Evil\x1b[31mCorp\r\n") == "Evil[31mCorp"
    assert names.device_text("a\u202eb\u2028c") == "abc"
    assert names.device_text("M\u00fcller GmbH") == "M\u00fcller GmbH"
    assert names.device_text("x" * 1000) == "x" * 255
    assert names.device_text(42) == ""


# --- logsafe ----------------------------------------------------------------------------------


def test_shown_escapes_line_breaks_and_escape_sequences() -> None:
    assert logsafe.shown("a\r\nb\x1b[31m") == "'a\\x0d\\x0ab\\x1b[31m'"
    assert logsafe.shown(b"\xff\n") == "'\\\\xff\\x0a'"
    assert logsafe.shown("x" * 100, limit=4) == "'xxxx'...(100 chars)"


def test_one_line_filter_escapes_a_message_that_forgot_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logsafe.guard(logging.getLogger("tests.logsafe"))
    caplog.set_level(logging.INFO, logger="tests.logsafe")
    logger.warning("path %s", "x\r\nCRITICAL forged")
    assert caplog.records[0].getMessage() == "path x\\x0d\\x0aCRITICAL forged"


def test_rate_limiter_passes_a_burst_then_reports_what_it_held() -> None:
    limiter = logsafe.RateLimiter(interval=10, burst=2)
    assert [limiter.allow("k", now=0)[0] for _ in range(5)] == [True, True, False, False, False]
    assert limiter.allow("k", now=10.5) == (True, 3)


# --- admission ----------------------------------------------------------------------------------


def test_same_peer_rules() -> None:
    a, b = ("192.0.2.1", 5683), ("192.0.2.1", 40000)
    assert admission.same_peer(reg_identity=None, reg_address=a, identity=None, address=a)
    assert not admission.same_peer(reg_identity=None, reg_address=a, identity=None, address=b)
    assert admission.same_peer(reg_identity="dev", reg_address=a, identity="dev", address=b)
    assert not admission.same_peer(reg_identity="dev", reg_address=a, identity=None, address=a)


def test_reregistration_rule() -> None:
    old, new = ("192.0.2.1", 5683), ("192.0.2.1", 40000)
    rule = admission.reregistration_rule
    assert rule(mode="open", old_address=old, new_address=new, old_expired=False).value == "replace"
    assert (
        rule(mode="provisioned", old_address=old, new_address=old, old_expired=False).value
        == "replace"
    )
    assert (
        rule(mode="provisioned", old_address=old, new_address=new, old_expired=True).value
        == "replace"
    )
    assert (
        rule(mode="provisioned", old_address=old, new_address=new, old_expired=False).value
        == "probe"
    )


def test_provisioned_endpoints_come_from_device_and_psk_rows(db: None) -> None:
    from campaigns import device_services
    from campaigns.models import Device
    from workers.lwm2m.selectors import provisioned_endpoints

    Device.objects.create(endpoint="operator-made")
    device_services.device_psk_set(endpoint="with-psk", key=b"k" * 16)
    assert provisioned_endpoints() == {"operator-made", "with-psk"}


# --- settings defaults --------------------------------------------------------------------------


def _settings(debug: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWM2M_")}
    env.update(DJANGO_DEBUG=debug, DJANGO_SETTINGS_MODULE="config.settings")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from django.conf import settings as s;print(s.LWM2M_ADMISSION, s.LWM2M_ACCEPT_NOSEC)",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_production_defaults_are_provisioned_admission_without_nosec() -> None:
    assert _settings("0") == ["provisioned", "False"]


def test_debug_defaults_stay_open_for_the_demo() -> None:
    assert _settings("1") == ["open", "True"]


def test_a_late_answer_to_a_finished_request_is_counted_not_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiocoap raises InvalidStateError when a response arrives for a request whose future is
    already done (a retransmitted answer): not hostile input, so no WARNING line."""
    import asyncio as _asyncio
    import logging as _logging

    from workers.lwm2m.transport import InputGuard, ScreenedUDP6

    class Context:
        def dispatch_message(self, message: object) -> None:
            raise _asyncio.InvalidStateError("invalid state")

    transport = ScreenedUDP6.__new__(ScreenedUDP6)
    transport._ctx = Context()
    transport.guard = InputGuard()
    datagram = bytes([0x60, 0x45, 0x12, 0x34])  # ACK 2.05, message id 0x1234, no token
    with caplog.at_level(_logging.INFO, logger="workers.lwm2m"):
        transport.datagram_msg_received(datagram, [], 0, ("::1", 5683, 0, 0))
    assert transport.guard.counts["late"] == 1
    assert not [r for r in caplog.records if r.levelno >= _logging.WARNING]
    assert "late datagram" in caplog.text
