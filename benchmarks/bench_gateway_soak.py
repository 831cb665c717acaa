"""Gateway soak under hostile traffic (issue "Hostile input", item 5): how many datagrams per
second the gateway survives, what it holds afterwards, and how long a valid device waits.

Plain script: ``python benchmarks/bench_gateway_soak.py [--datagrams N] [--seconds S]``.
Loopback only, bounded in count (default 30,000 datagrams, the fuzzer's run) and time (default
60 s). One process: the gateway on its own thread and loop (provisioned admission, NoSec on,
events to an in-memory sink so the figure is the gateway's, not the database's), fuzzer threads
sending the mixed corpus of :mod:`workers.lwm2m.fuzzcorpus` as fast as they can, and a probe
thread that registers a provisioned device and sends it an Update every 0.25 s, timing each
answer.

Prints datagrams/s sent and survived (every reply counted), RSS before/after (the whole
process), the slowest probe and the gateway's refusal counters, after the machine line, and a
PASS/MISS line per goal (``_report``): every probe answered, the slowest within 2 s, RSS growth
<= 100 MiB. Exit status 1 on a MISS only with ``BENCH_STRICT=1``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import Report  # noqa: E402

SLOWEST_PROBE_GOAL = 2.0
RSS_GROWTH_GOAL_MIB = 100
FUZZERS = 3
PROBE_INTERVAL = 0.25


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Sink:
    def __init__(self) -> None:
        self.count = 0

    def emit(self, event: dict[str, Any]) -> None:
        self.count += 1


class _NoFirmware:
    def envelope(self, manifest_digest: str) -> bytes | None:
        return None

    def image(self, sha256: str) -> bytes | None:
        return None


class _Known:
    def endpoints(self) -> set[str]:
        return {"soak-probe", "known-0001"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datagrams", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    # The fuzzer's run: 30,000 datagrams in 11 s. 0 = as fast as the fuzzer threads can send
    # (the kernel then drops most before the gateway reads them: see "read by the gateway").
    parser.add_argument("--rate", type=float, default=3000.0, help="datagrams/s, all fuzzers")
    args = parser.parse_args()
    report = Report()
    report.machine()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

    import logging

    from aiocoap import Message

    from workers.lwm2m import fuzzcorpus
    from workers.lwm2m.bus import InMemoryCommandBus
    from workers.lwm2m.gateway import Gateway, GatewayConfig, GatewayThread

    class _Count(logging.Handler):
        lines = 0

        def emit(self, record: logging.LogRecord) -> None:
            _Count.lines += 1

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().addHandler(_Count(level=logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers[:-1]:
        handler.setLevel(logging.ERROR)
    gateway = Gateway(
        GatewayConfig(gateway_id="soak", port=0, request_timeout=2, admission="provisioned"),
        bus=InMemoryCommandBus(),
        sink=_Sink(),
        firmware=_NoFirmware(),
        provisioned_source=_Known(),
    )
    thread = GatewayThread(gateway).start()
    target = ("127.0.0.1", gateway.config.port)
    corpus = fuzzcorpus.datagrams(min(args.datagrams, 5000), seed=11)
    deadline = time.monotonic() + args.seconds
    sent = [0] * FUZZERS
    replies = [0] * FUZZERS
    latencies: list[float] = []
    unanswered = [0]
    done = threading.Event()

    def fuzz(index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        share = args.datagrams // FUZZERS
        gap = FUZZERS / args.rate if args.rate else 0.0
        next_at = time.monotonic()
        for i in range(share):
            if time.monotonic() > deadline:
                break
            if gap:
                next_at += gap
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            try:
                sock.sendto(corpus[(i * FUZZERS + index) % len(corpus)], target)
                sent[index] += 1
            except BlockingIOError:
                time.sleep(0.001)
            while True:
                try:
                    sock.recv(65536)
                    replies[index] += 1
                except (BlockingIOError, ConnectionRefusedError):
                    break
        sock.close()

    def probe() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        mid = 1

        def ask(data: bytes) -> bytes | None:
            started = time.monotonic()
            sock.sendto(data, target)
            while True:
                try:
                    reply = sock.recv(4096)
                except TimeoutError:
                    unanswered[0] += 1
                    return None
                if 1 <= reply[1] <= 31:
                    continue  # the gateway reading the probe device: not answered here
                if reply[2:4] == data[2:4]:
                    latencies.append(time.monotonic() - started)
                    return reply

        created = ask(fuzzcorpus.registration(b"soak-probe", mid))
        where = [p.encode() for p in Message.decode(created).opt.location_path] if created else []
        while not done.is_set():
            mid += 1
            ask(fuzzcorpus.coap_request(2, mid, path=where, query=[b"lt=60"]))
            time.sleep(PROBE_INTERVAL)
        sock.close()

    rss_before = rss_mib()
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.monotonic()
    fuzzers = [threading.Thread(target=fuzz, args=(i,)) for i in range(FUZZERS)]
    for fuzzer in fuzzers:
        fuzzer.start()
    for fuzzer in fuzzers:
        fuzzer.join()
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # a few probes after the storm
    done.set()
    prober.join(10)
    rss_after = rss_mib()
    health = gateway.health()
    thread.stop()

    total = sum(sent)
    slowest = max(latencies) if latencies else float("inf")
    read = health["datagrams_received"]
    print(
        f"soak: {total} hostile datagrams sent in {elapsed:.1f} s ({total / elapsed:,.0f}/s), "
        f"{read} read by the gateway ({read / elapsed:,.0f}/s survived), {sum(replies)} replies; "
        f"probes {len(latencies)} answered, {unanswered[0]} unanswered, slowest "
        f"{slowest * 1000:.0f} ms; RSS {rss_before:.0f} -> {rss_after:.0f} MiB (one process: "
        f"gateway + fuzzers); {_Count.lines} log lines at WARNING or above"
    )
    print(
        f"soak: gateway refused {health['refused']}; registrations held {health['registrations']}"
    )
    report.goal("soak: unanswered probes", unanswered[0], at_most=0)
    report.goal("soak: slowest probe (s)", slowest, at_most=SLOWEST_PROBE_GOAL)
    report.goal("soak: RSS growth (MiB)", rss_after - rss_before, at_most=RSS_GROWTH_GOAL_MIB)
    return report.exit_status()


if __name__ == "__main__":
    sys.exit(main())
