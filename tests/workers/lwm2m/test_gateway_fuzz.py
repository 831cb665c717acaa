"""A bounded fuzz run against the gateway with its production settings (provisioned admission,
events applied to the database): a few thousand random, mutated and hostile datagrams; then the
gateway must answer a valid registration at once, have logged no traceback, hold no junk rows
and have stayed within a memory bound."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from tests.workers.lwm2m.conftest import DictFirmware
from tests.workers.lwm2m.hostile import Peer, code_of, rss_kib
from workers.lwm2m import fuzzcorpus
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.gateway import Gateway, GatewayConfig, GatewayThread

DATAGRAMS = 3000
# RSS the gateway process may gain over the run (the datagrams themselves are ~100 KB).
RSS_BOUND_KIB = 48 * 1024


def _answer_requests(peer: Peer, stop: threading.Event) -> None:
    """A live device: answers every request from the gateway with 4.04 (enough for a probe)."""
    peer.sock.settimeout(0.05)
    while not stop.is_set():
        try:
            data = peer.sock.recv(4096)
        except (TimeoutError, OSError):
            continue
        if len(data) >= 4 and 1 <= data[1] <= 31:
            tkl = data[0] & 0x0F
            peer.send(bytes([0x60 | tkl, 0x84]) + data[2:4] + data[4 : 4 + tkl])


def test_gateway_survives_a_fuzz_run_with_no_traceback_no_junk_rows_bounded_memory(
    transactional_db: None, eager_celery: None, caplog: Any
) -> None:
    from campaigns.models import Device

    caplog.set_level(logging.INFO)
    Device.objects.create(endpoint="known-0001")
    Device.objects.create(endpoint="known-0002")
    gateway = Gateway(
        GatewayConfig(
            gateway_id="gw-fuzz",
            port=0,
            request_timeout=1,
            nosec_probe_timeout=0.5,
            admission="provisioned",
        ),
        bus=InMemoryCommandBus(),
        firmware=DictFirmware(),
    )
    thread = GatewayThread(gateway).start()
    stop = threading.Event()
    try:
        device = Peer(gateway.config.port)
        device.send(fuzzcorpus.registration(b"known-0001", 1))
        deadline = time.monotonic() + 5
        while "known-0001" not in gateway.by_endpoint:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        held = gateway.by_endpoint["known-0001"]
        responder = threading.Thread(target=_answer_requests, args=(device, stop), daemon=True)
        responder.start()

        fuzzer = Peer(gateway.config.port)
        corpus = fuzzcorpus.datagrams(DATAGRAMS, seed=7, known=b"known-0001")
        rss_before = rss_kib()
        started = time.monotonic()
        for i, datagram in enumerate(corpus):
            fuzzer.send(datagram)
            if i % 200 == 199:
                while fuzzer.recv(0.001) is not None:
                    pass  # drain replies so our own socket does not overflow
        took = time.monotonic() - started

        probe = Peer(gateway.config.port)
        asked = time.monotonic()
        reply = probe.exchange(fuzzcorpus.registration(b"known-0002", 9), timeout=5)
        answered_in = time.monotonic() - asked
        assert code_of(reply) == "2.01"
        assert answered_in < 1.0, f"valid registration answered after {answered_in:.2f} s"
        time.sleep(0.5)  # let the event thread apply what it has
        rss_after = rss_kib()
        assert gateway.by_endpoint["known-0001"] is held, "the fuzzer took over a registration"
        health = gateway.health()
    finally:
        stop.set()
        thread.stop()

    endpoints = set(Device.objects.values_list("endpoint", flat=True))
    assert endpoints == {"known-0001", "known-0002"}, sorted(endpoints)[:20]
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) < 100, f"{len(warnings)} warnings for {DATAGRAMS} datagrams"
    assert rss_after - rss_before < RSS_BOUND_KIB, (rss_before, rss_after)
    assert health["refused"].get("malformed", 0) > DATAGRAMS // 10
    assert health["refused"].get("lwm2m.not_provisioned", 0) > 0
    print(
        f"\n{DATAGRAMS} datagrams in {took:.2f} s; valid registration answered in "
        f"{answered_in * 1000:.0f} ms; RSS {rss_before // 1024} -> {rss_after // 1024} MiB; "
        f"refused {health['refused']}"
    )
