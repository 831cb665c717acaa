"""The gateway under a hostile peer (issue "Hostile input: the gateway under independent
checkers"): malformed datagrams, oversize input, Block1 abuse, cross-peer changes, admission,
hostile names and device information, log injection. Each test is named for the attack."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from tests.workers.lwm2m.conftest import ListSink
from tests.workers.lwm2m.hostile import (
    DELETE,
    GET,
    NON,
    POST,
    Peer,
    block1_value,
    code_of,
    gateway_thread,
    payload_of,
    request,
)

REGISTER_QUERY = [b"lt=60", b"lwm2m=1.1", b"b=U"]
LINKS = b"</3/0>,</5/0>"


def register(peer: Peer, endpoint: bytes, payload: bytes = LINKS, **kwargs: Any) -> bytes | None:
    return peer.exchange(
        request(
            POST,
            path=[b"rd"],
            query=[b"ep=" + endpoint, *REGISTER_QUERY],
            payload=payload,
            mid=peer.next_mid(),
            **kwargs,
        )
    )


def location(reply: bytes) -> list[bytes]:
    """Location-Path of a 2.01."""
    return [part.encode() for part in aiocoap.Message.decode(reply).opt.location_path]


def tracebacks(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# --- 1. undecodable options: 4.00, a counter, a rate-limited line; no traceback ------------


@pytest.mark.parametrize(
    "datagram",
    [
        bytes.fromhex("40011234b1ff"),  # Uri-Path 0xff (the fuzzer's six bytes)
        request(GET, query=[b"ep=\xc3\x28"]),  # Uri-Query: invalid UTF-8 continuation
        request(GET, extra=[(3, b"\xfe\xfe")]),  # Uri-Host
    ],
    ids=["uri-path", "uri-query", "uri-host"],
)
def test_non_utf8_string_option_gets_400_not_a_traceback(datagram: bytes, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    with gateway_thread() as thread:
        peer = Peer(thread.gateway.config.port)
        replies = []
        for _ in range(200):
            peer.send(datagram)
            replies.append(peer.recv())
        assert {code_of(r) for r in replies} == {"4.00"}
        assert replies[0][2:4] == datagram[2:4]  # piggybacked: the request's message id
        assert thread.gateway.guard.counts["malformed"] == 200
        valid = register(peer, b"after-flood")
        assert code_of(valid) == "2.01"
    assert tracebacks(caplog) == []
    refusal_lines = [r for r in caplog.records if "malformed datagram" in r.getMessage()]
    assert 1 <= len(refusal_lines) <= 10


# --- 4. oversize input: 4.13 before anything is buffered -----------------------------------


@pytest.mark.parametrize("size", [60_000, 17_000], ids=["60KB-datagram", "17KB-registration"])
def test_oversize_registration_datagram_gets_413_not_a_truncated_registration(
    size: int,
) -> None:
    payload = (b"</3/0>," * (size // 7 + 1))[:size].rstrip(b",")
    with gateway_thread(sink=ListSink()) as thread:
        peer = Peer(thread.gateway.config.port)
        reply = register(peer, b"big", payload=payload)
        assert code_of(reply) == "4.13"
        assert thread.gateway.by_endpoint == {}


def test_block1_body_declared_over_the_limit_is_refused_before_buffering() -> None:
    with gateway_thread(max_payload=4096) as thread:
        peer = Peer(thread.gateway.config.port)
        reply = peer.exchange(
            request(
                POST,
                path=[b"rd"],
                query=[b"ep=blocky", *REGISTER_QUERY],
                payload=b"<" * 1024,
                extra=[(27, block1_value(0, True, 6)), (60, (10**6).to_bytes(3, "big"))],
            )
        )
        assert code_of(reply) == "4.13"
        assert len(thread.gateway.block1) == 0


def test_block1_body_growing_over_the_limit_is_refused_and_dropped() -> None:
    with gateway_thread(max_payload=4096) as thread:
        peer = Peer(thread.gateway.config.port)
        codes = []
        for num in range(6):
            reply = peer.exchange(
                request(
                    POST,
                    path=[b"rd"],
                    query=[b"ep=blocky", *REGISTER_QUERY],
                    payload=b"x" * 1024,
                    mid=peer.next_mid(),
                    extra=[(27, block1_value(num, True, 6))],
                )
            )
            codes.append(code_of(reply))
        assert codes[:4] == ["2.31"] * 4
        assert codes[4] == "4.13"  # the fifth KiB would pass 4096 bytes
        assert len(thread.gateway.block1) == 0


# --- 7. a Block1 gap: 4.08, no traceback -----------------------------------------------------


def test_block1_gap_gets_408_not_500(caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    with gateway_thread() as thread:
        peer = Peer(thread.gateway.config.port)
        first = peer.exchange(
            request(
                POST,
                path=[b"rd"],
                query=[b"ep=gappy", *REGISTER_QUERY],
                payload=b"</3/0>,".ljust(64, b" "),
                mid=peer.next_mid(),
                extra=[(27, block1_value(0, True, 2))],
            )
        )
        assert code_of(first) == "2.31"
        gap = peer.exchange(
            request(
                POST,
                path=[b"rd"],
                query=[b"ep=gappy", *REGISTER_QUERY],
                payload=b"</5/0>",
                mid=peer.next_mid(),
                extra=[(27, block1_value(5, False, 2))],
            )
        )
        assert code_of(gap) == "4.08"
        assert "gappy" not in thread.gateway.by_endpoint
    assert tracebacks(caplog) == []


def test_block1_registration_in_order_is_assembled() -> None:
    body = b",".join([b"</3/0>"] + [b"</9/%d>" % i for i in range(12)])
    blocks = [body[i : i + 32] for i in range(0, len(body), 32)]
    with gateway_thread() as thread:
        peer = Peer(thread.gateway.config.port)
        codes = []
        for num, block in enumerate(blocks):
            last = num == len(blocks) - 1
            reply = peer.exchange(
                request(
                    POST,
                    path=[b"rd"],
                    query=[b"ep=blockwise-ok", *REGISTER_QUERY],
                    payload=block,
                    mid=peer.next_mid(),
                    extra=[(27, block1_value(num, not last, 1))],
                )
            )
            codes.append(code_of(reply))
        assert codes == ["2.31"] * (len(blocks) - 1) + ["2.01"]
        reg = thread.gateway.by_endpoint["blockwise-ok"]
        assert "/9/11" in reg.object_links()


# --- 2. cross-peer changes and admission ------------------------------------------------------


def test_update_or_deregister_from_another_nosec_address_is_forbidden() -> None:
    with gateway_thread() as thread:
        owner, other = Peer(thread.gateway.config.port), Peer(thread.gateway.config.port)
        created = register(owner, b"victim")
        assert code_of(created) == "2.01"
        where = location(created)
        update = request(POST, path=where, query=[b"lt=5", b"b=UQ"], mid=other.next_mid())
        assert code_of(other.exchange(update)) == "4.03"
        delete = request(DELETE, path=where, mid=other.next_mid())
        assert code_of(other.exchange(delete)) == "4.03"
        reg = thread.gateway.by_endpoint["victim"]
        assert reg.lifetime == 60 and not reg.queue_mode
        assert reg.remote.hostinfo.endswith(f":{owner.sock.getsockname()[1]}")
        # The owner still can.
        mine = request(POST, path=where, query=[b"lt=120"], mid=owner.next_mid())
        assert code_of(owner.exchange(mine)) == "2.04"
        assert code_of(owner.exchange(request(DELETE, path=where, mid=owner.next_mid()))) == "2.02"


def test_unknown_endpoint_is_refused_under_provisioned_admission() -> None:
    sink = ListSink()
    with gateway_thread(sink=sink, provisioned={"known-1"}) as thread:
        peer = Peer(thread.gateway.config.port)
        assert code_of(register(peer, b"stranger")) == "4.03"
        assert code_of(register(peer, b"known-1")) == "2.01"
        assert thread.gateway.guard.counts["lwm2m.not_provisioned"] == 1
        assert set(thread.gateway.by_endpoint) == {"known-1"}
        time.sleep(0.2)
    assert {e["endpoint"] for e in sink.events} == {"known-1"}


def test_endpoint_provisioned_after_start_gets_in_at_its_next_attempt() -> None:
    with gateway_thread(provisioned={"known-1"}) as thread:
        peer = Peer(thread.gateway.config.port)
        assert code_of(register(peer, b"late")) == "4.03"
        thread.gateway.provisioned.source.known.add("late")  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while code_of(register(peer, b"late")) != "2.01":
            assert time.monotonic() < deadline, "never admitted"
            time.sleep(0.1)


def test_impostor_reregistration_from_another_port_is_refused_while_the_device_answers() -> None:
    """The fuzzer's takeover: same endpoint from another port while the device is alive."""
    sink = ListSink()
    with gateway_thread(
        sink=sink, provisioned={"dev-7"}, nosec_probe_timeout=1, nosec_probe_memory_seconds=0.3
    ) as thread:
        device, impostor = Peer(thread.gateway.config.port), Peer(thread.gateway.config.port)
        assert code_of(register(device, b"dev-7")) == "2.01"
        original = thread.gateway.by_endpoint["dev-7"]
        # The gateway's probe (and device-information reads) reach the device: it answers 4.04.
        import threading

        stop = threading.Event()

        def answer() -> None:
            device.sock.settimeout(0.1)
            while not stop.is_set():
                try:
                    data = device.sock.recv(2048)
                except (TimeoutError, OSError):
                    continue
                if 1 <= data[1] <= 31:
                    tkl = data[0] & 0x0F
                    device.send(bytes([0x60 | tkl, 0x84]) + data[2:4] + data[4 : 4 + tkl])

        responder = threading.Thread(target=answer, daemon=True)
        responder.start()
        try:
            refused = register(impostor, b"dev-7")
            assert code_of(refused) == "4.03"
            assert b"registration_conflict" in payload_of(refused)
            assert thread.gateway.by_endpoint["dev-7"] is original
        finally:
            stop.set()
            responder.join(2)
        # The device reboots: its old socket is gone, so the probe fails and it gets back in.
        device.close()
        time.sleep(0.5)
        rebooted = Peer(thread.gateway.config.port)
        assert code_of(register(rebooted, b"dev-7")) == "2.01"
        assert thread.gateway.by_endpoint["dev-7"] is not original


def test_registrations_past_the_limit_get_503_and_known_ones_still_update() -> None:
    with gateway_thread(max_registrations=3) as thread:
        peer = Peer(thread.gateway.config.port)
        codes = [code_of(register(peer, b"dev-%d" % i)) for i in range(5)]
        assert codes == ["2.01"] * 3 + ["5.03"] * 2
        assert code_of(register(peer, b"dev-0")) == "2.01"  # re-registration: no new room
        assert thread.gateway.guard.counts["lwm2m.registry_full"] == 2


def test_device_information_reads_in_flight_are_bounded() -> None:
    """Registrations from peers that never answer must not pile up requests without end."""
    with gateway_thread(device_info_concurrency=2, request_timeout=2) as thread:
        gateway = thread.gateway
        in_flight, peak = 0, 0
        original = gateway.read

        async def counting_read(reg: Any, path: Any) -> Any:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await original(reg, path)
            finally:
                in_flight -= 1

        gateway.read = counting_read  # type: ignore[method-assign]
        peers = [Peer(gateway.config.port) for _ in range(10)]
        for i, peer in enumerate(peers):
            assert code_of(register(peer, b"silent-%d" % i, payload=b"</3/0>")) == "2.01"
        time.sleep(1.0)
        assert gateway.health()["device_info_passes_pending"] == 10
        assert peak <= 2 * 5  # two registrations' passes of five /3/0 reads each


def test_health_announces_nosec_and_counts_refusals(caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    with gateway_thread(accept_nosec=True) as thread:
        peer = Peer(thread.gateway.config.port)
        peer.send(bytes.fromhex("40011234b1ff"))
        peer.recv()
        reply = peer.exchange(request(GET, path=[b"health"], mid=peer.next_mid()))
        assert code_of(reply) == "2.05"
        health = json.loads(payload_of(reply))
        assert health["nosec_accepted"] is True and health["admission"] == "open"
        assert health["refused"]["malformed"] == 1
    assert any("accepts NoSec" in r.getMessage() for r in caplog.records)


# --- 3. log injection ---------------------------------------------------------------------------


def test_crlf_in_a_refused_path_cannot_forge_a_log_line(caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    forged = b"x\r\n2026-01-01 00:00:00,000 CRITICAL workers.lwm2m.gateway: disk wiped\x1b[31m"
    with gateway_thread() as thread:
        peer = Peer(thread.gateway.config.port)
        reply = peer.exchange(request(POST, path=[b"rd", b"abc", forged], mid=peer.next_mid()))
        assert code_of(reply) == "4.04"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("workers.lwm2m")]
    refused = [line for line in lines if "disk wiped" in line]
    assert refused, lines
    for line in refused:
        assert "\r" not in line and "\n" not in line and "\x1b" not in line
        assert "\\x0d\\x0a" in line


# --- 6. names and values --------------------------------------------------------------------


HOSTILE_NAMES = [
    "../../etc/passwd",
    "a/b/c",
    "a\\b",
    ".",
    "..",
    " ",
    "coap://evil/x",
    "<script>alert(1)</script>",
    "x'; DROP TABLE campaigns_device;--",
    "\u0430cme.example-dev01",  # Cyrillic a
    "dev\x1b[31m",
    "dev\r\nx",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_endpoint_name_is_refused_with_a_reason(name: str) -> None:
    with gateway_thread() as thread:
        peer = Peer(thread.gateway.config.port)
        reply = register(peer, name.encode())
        assert code_of(reply) == "4.00"
        assert payload_of(reply).startswith(b"lwm2m.endpoint_name: ")
        assert thread.gateway.by_endpoint == {}


def test_endpoint_name_over_the_coap_option_limit_is_refused() -> None:
    with gateway_thread() as thread:
        peer = Peer(thread.gateway.config.port)
        reply = register(peer, "\U0001f600".encode() * 255)  # 1,020 bytes in one option
        assert code_of(reply) == "4.00"
        assert thread.gateway.by_endpoint == {}


@pytest.mark.parametrize(
    "name",
    [
        "acme.example-dev01",
        "urn:imei:490154203237518",
        "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
        "urn:dev:ops:00A0C9-Thermo%2DV2-0042",
    ],
)
def test_real_endpoint_names_are_accepted(name: str) -> None:
    with gateway_thread() as thread:
        peer = Peer(thread.gateway.config.port)
        assert code_of(register(peer, name.encode())) == "2.01"
        assert name in thread.gateway.by_endpoint


def test_control_characters_in_device_information_are_removed() -> None:
    sink = ListSink()
    with gateway_thread(sink=sink) as thread:
        device = Peer(thread.gateway.config.port)
        values = {
            "0": "Evil\x1b[31mCorp\r\n",
            "1": "model\u202e1",
            "2": "s\x00n",
            "3": "6.6.6\x07",
        }
        assert code_of(register(device, b"ctl-dev", payload=b"</3/0>")) == "2.01"
        deadline = time.monotonic() + 5
        while not sink.of("device_info") and time.monotonic() < deadline:
            device.sock.settimeout(0.2)
            try:
                data = device.sock.recv(2048)
            except TimeoutError:
                continue
            asked = aiocoap.Message.decode(data)
            text = values.get(asked.opt.uri_path[-1])
            if text is None:
                answer = aiocoap.Message(code=Code.NOT_FOUND)
            else:
                answer = aiocoap.Message(code=Code.CONTENT, payload=text.encode())
                answer.opt.content_format = 0
            answer.mtype, answer.mid, answer.token = aiocoap.ACK, asked.mid, asked.token
            device.send(answer.encode())
        time.sleep(0.1)
    info = sink.of("device_info")[0]
    assert info["manufacturer"] == "Evil[31mCorp"
    assert info["model"] == "model1"
    assert info["serial"] == "sn"
    assert info["firmware_version"] == "6.6.6"


# --- NON requests and responses are dropped, never answered ----------------------------------


def test_malformed_non_confirmable_datagram_is_dropped_silently() -> None:
    with gateway_thread() as thread:
        peer = Peer(thread.gateway.config.port)
        peer.send(request(GET, path=[b"\xff"], mtype=NON))
        assert peer.recv(0.5) is None
        assert thread.gateway.guard.counts["malformed"] == 1


# --- 7. transient errors from peers that went away: one line, no traceback ----------------------


def test_late_answer_from_a_closed_peer_logs_one_line_not_a_traceback(caplog: Any) -> None:
    import asyncio

    caplog.set_level(logging.INFO)
    with gateway_thread() as thread:

        async def late_errors() -> None:
            loop = asyncio.get_running_loop()
            loop.call_exception_handler(
                {"message": "Exception in callback", "exception": asyncio.InvalidStateError()}
            )
            try:
                raise aiocoap.error.NetworkError("Connection refused (received through errqueue)")
            except aiocoap.error.NetworkError as exc:
                logging.getLogger("coap-server").error("dispatch_error: %s", exc, exc_info=exc)

        thread.call(late_errors())
    assert tracebacks(caplog) == []
    assert any("transient" in r.getMessage() for r in caplog.records)
