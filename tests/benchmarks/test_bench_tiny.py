"""Every benchmark runs end to end in a tiny mode, so none rots between ``make bench`` runs.

Only that they run and report is checked (machine line, side-by-side figures, one PASS/MISS line
per goal, the exit status strict mode gives): never a figure, which depends on the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks"
VERDICT = re.compile(r"^(PASS|MISS) ", re.MULTILINE)


def _run(script: str, *args: str, strict: bool, timeout: float = 300) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["BENCH_STRICT"] = "1" if strict else "0"
    # Throwaway databases of this run's own (the benchmark drops them).
    env["BENCH_DB_PREFIX"] = f"fwupd_bench_test{os.getpid()}"
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def _check(status: int, out: str, *, strict: bool, goals: int) -> None:
    assert out.startswith("machine: "), out
    assert " cores, load average " in out.splitlines()[0]
    verdicts = VERDICT.findall(out)
    assert len(verdicts) == goals, out
    assert "ERROR " not in out, out
    missed = "MISS" in verdicts
    assert status == (1 if strict and missed else 0), out


def _postgres_reachable() -> bool:
    import psycopg

    sys.path.insert(0, str(BENCH))
    try:
        import _campaign_world as cw

        with psycopg.connect(cw.ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False
    finally:
        sys.path.remove(str(BENCH))


def _need_postgres() -> None:
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail("the benchmark needs PostgreSQL (BENCH_POSTGRES_URL), which CI starts")
        pytest.skip("no PostgreSQL at BENCH_POSTGRES_URL")


@pytest.mark.parametrize("strict", [False, True])
def test_bench_suit_tiny(strict: bool) -> None:
    status, out = _run("bench_suit.py", "--iterations", "20", "--repeats", "1", strict=strict)
    assert re.search(r"^  ES256 medians +raw [\d.]+ µs \| cold ", out, re.MULTILINE), out
    assert re.search(r"^  Ed25519 medians +raw [\d.]+ µs \| cold ", out, re.MULTILINE), out
    _check(status, out, strict=strict, goals=2)


def test_bench_campaigns_tiny_dispatch_and_queries() -> None:
    _need_postgres()
    args = (
        "--sections",
        "dispatch,queries",
        "--dispatch-rollouts",
        "200",
        "--dispatch-rounds",
        "1",
    )
    status, out = _run("bench_campaigns.py", *args, strict=True)
    assert "round 1: 200 pending rollouts: engine 196 dispatched + 4 skipped" in out, out
    assert "raw UPDATE ... FROM / INSERT ... SELECT 196 + 4 in" in out, out
    assert "rows identical to the raw reference" in out, out
    assert "rows differ" not in out, out
    assert re.search(r"^(PASS|MISS) dispatch: decisions/s = ", out, re.MULTILINE), out
    assert re.search(r"^(PASS|MISS) dispatch: engine / raw set-based ", out, re.MULTILINE), out
    assert "PASS queries per dispatch pass: [" in out, out
    _check(status, out, strict=True, goals=3)


def test_bench_gateway_tiny_with_libcoap_and_rss() -> None:
    _need_postgres()
    if not any(shutil.which(n) for n in ("coap-server", "coap-server-notls")):
        if os.environ.get("CI"):
            pytest.fail("the benchmark needs libcoap's coap-server (libcoap3-bin)")
        pytest.skip("libcoap's coap-server is not installed (libcoap3-bin)")
    args = ("--devices", "8", "--rounds", "1", "--image-kib", "4", "--rss-devices", "20")
    status, out = _run("bench_gateway.py", *args, strict=False)
    for side in ("libcoap", "bare", "gateway"):
        assert re.search(rf"round {side} +[\d.]+ s, 0 failed", out), out
    assert re.search(r"^bytes/s +libcoap .* \| gateway .*x of libcoap\)$", out, re.MULTILINE), out
    assert re.search(r"^Block2 responses/s +libcoap ", out, re.MULTILINE), out
    assert "INFO gateway RSS per registered device: " in out, out
    assert "after 20 registrations)" in out, out
    assert "payload bytes/s gateway / libcoap coap-server = " in out, out
    _check(status, out, strict=False, goals=2)


def test_bench_gateway_soak_tiny() -> None:
    status, out = _run(
        "bench_gateway_soak.py", "--datagrams", "300", "--seconds", "5", strict=False
    )
    _check(status, out, strict=False, goals=3)


def test_bench_dtls_tiny() -> None:
    _need_postgres()
    status, out = _run("bench_dtls.py", "--devices", "20", "--deadline", "60", strict=True)
    assert "20 DTLS devices provisioned in " in out, out
    assert re.search(r"^got in: 20 of 20 registered within 60 s ", out, re.MULTILINE), out
    assert re.search(r"^gateway handshakes: completed 20\b", out, re.MULTILINE), out
    assert "INFO handshakes/s per gateway core: " in out, out
    # The devices came from the load simulator's DTLS clients (the default).
    assert re.search(r"^device side \(load simulator\): 20 handshakes, ", out, re.M), out
    assert re.search(r"^INFO gateway memory: RSS grew .* KiB per device in ", out, re.M), out
    _check(status, out, strict=True, goals=1)


def test_bench_dtls_tiny_with_the_full_simulator() -> None:
    _need_postgres()
    args = ("--devices", "10", "--deadline", "60", "--simulator", "full")
    status, out = _run("bench_dtls.py", *args, strict=True)
    assert re.search(r"^got in: 10 of 10 registered within 60 s ", out, re.MULTILINE), out
    _check(status, out, strict=True, goals=1)


def test_bench_dtls_stacks_tiny() -> None:
    status, out = _run("bench_dtls_stacks.py", "--handshakes", "20", strict=True)
    for stack in ("tinydtls (DTLSSocket 0.2.3)", "mbed TLS (python-mbedtls 2.10.1)"):
        line = rf"^INFO {re.escape(stack)}: 20 handshakes .* handshakes per server CPU-second"
        assert re.search(line, out, re.MULTILINE), out
    assert "mbed TLS (python-mbedtls 2.10.1): 32-byte key: yes; 64-byte identity: yes" in out
    _check(status, out, strict=True, goals=0)


def test_bench_fleet_tiny_over_dtls() -> None:
    """The fleet benchmark with DTLS devices prints handshakes per gateway."""
    _need_postgres()
    args = ("--devices", "12", "--workers", "1", "--register-only", "--dtls", "--timeout", "300")
    status, out = _run("bench_fleet.py", *args, strict=False, timeout=900)
    for gateways in (1, 2):
        assert f"{gateways} gateway process(es), 12 devices" in out, out
    line = r"^    gateway \d DTLS +[\d,]+ handshakes, [\d,]+/s, [\d,]+ per gateway CPU-second"
    assert len(re.findall(line, out, re.MULTILINE)) == 3, out  # 1 + 2 gateways
    assert re.search(r"^    devices' side +12 handshakes, ", out, re.MULTILINE), out
    _check(status, out, strict=False, goals=0)


@pytest.mark.parametrize("strict", [False, True])
def test_bench_delta_tiny(strict: bool) -> None:
    status, out = _run("bench_delta.py", "--devices", "3", "--functions", "40", strict=strict)
    assert re.search(r"^delta \(heatshrink, sequential\): [\d,]+ bytes ", out, re.MULTILINE), out
    for profile in ("image", "suit"):
        for side in ("full", "delta"):
            line = rf"^  {profile} +{side} +3 devices: .* 3 booted 1\.1\.0, 0 failed$"
            assert re.search(line, out, re.M), out
        line = rf"^{profile} bytes on the wire +full [\d,]+ B \| delta .*x of full\)$"
        assert re.search(line, out, re.M), out
        assert re.search(rf"^{profile} end-to-end time +full [\d.]+ s \| delta ", out, re.M), out
    _check(status, out, strict=strict, goals=4)


def test_bench_fleet_tiny_with_one_and_two_gateways() -> None:
    """Gateways, workers and the load simulator in processes of their own, at 24 devices."""
    _need_postgres()
    args = ("--devices", "24", "--max-in-flight", "8", "--workers", "1", "--timeout", "400")
    status, out = _run("bench_fleet.py", *args, strict=False, timeout=900)
    for gateways in (1, 2):
        assert f"{gateways} gateway process(es), 24 devices" in out, out
    assert re.search(r"^  registration +[\d.]+ s +\([\d,]+/s; registry ", out, re.MULTILINE), out
    assert re.search(r"registrations/s$", out, re.MULTILINE), out
    assert "24 of 24 succeeded" in out, out
    assert re.search(r"^  plain download +[\d.]+ s +\(24 ok, 0 failed\)", out, re.MULTILINE), out
    assert re.search(r"^  events applied +[\d,]+ \([\d,]+/s into PostgreSQL", out, re.MULTILINE)
    assert re.search(r"^  CPU during the campaign .*gateways .*workers ", out, re.MULTILINE) or (
        re.search(r"^  CPU during the campaign .*workers .*gateways ", out, re.MULTILINE)
    ), out
    assert "B/device registered" in out, out
    assert re.search(r"^registrations/s +1 gateway ", out, re.MULTILINE), out
    _check(status, out, strict=False, goals=3)
