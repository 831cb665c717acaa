"""The gateway's own Prometheus metrics (``lwm2m_gateway --metrics-port``): registrations and
DTLS handshakes by outcome, read from a real gateway with real DTLS clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from prometheus_client.parser import text_string_to_metric_families

from campaigns import device_services
from tests.workers.lwm2m.conftest import wait_for
from tests.workers.lwm2m.test_dtls_gateway import (  # the DTLS gateway fixture and clients
    KEY_A,
    KEY_B,
    LINKS,
    dtls_context,
    register_uri,
    send,
    start_gateway,
)
from workers.lwm2m import metrics
from workers.lwm2m.dtls import dtls_missing
from workers.lwm2m.gateway import GatewayThread

pytestmark = pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))
__all__ = ["start_gateway"]
REPO = Path(__file__).resolve().parents[3]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def served(start_gateway: Callable[..., GatewayThread]) -> Iterator[tuple[GatewayThread, str]]:
    device_services.device_psk_set(endpoint="dev-m", key=KEY_A)  # loaded at start
    thread = start_gateway()
    server, _ = metrics.serve(thread.gateway, port=0, addr="127.0.0.1")
    host, port = server.server_address[:2]
    yield thread, f"http://{host}:{port}/metrics"
    server.shutdown()
    server.server_close()


def handshakes(found: dict[Any, float], result: str) -> float:
    return found[
        ("fwupd_gateway_dtls_handshakes_total", (("gateway", "gw-dtls"), ("result", result)))
    ]


def test_registrations_and_dtls_handshakes_are_counted(served: tuple[GatewayThread, str]) -> None:
    thread, url = served
    base = thread.gateway.config.dtls_base_uri
    before = scrape(url)
    assert handshakes(before, "completed") == 0
    assert before[("fwupd_gateway_registrations_total", (("gateway", "gw-dtls"),))] == 0

    async def register(key: bytes) -> aiocoap.Message:
        context = await dtls_context(base, "dev-m", key)
        try:
            return await send(context, Code.POST, register_uri(base, "dev-m"), LINKS, timeout=2.5)
        finally:
            await context.shutdown()

    assert thread.call(register(KEY_A)).code == Code.CREATED
    found = scrape(url)
    assert handshakes(found, "completed") == 1
    assert found[("fwupd_gateway_registrations_total", (("gateway", "gw-dtls"),))] == 1
    assert found[("fwupd_gateway_registered_devices", (("gateway", "gw-dtls"),))] == 1
    # Every metric docs/operations.md and the alert rules name, and no other (refusals by
    # code have no sample until something is refused).
    names = {name for name, _ in found} | {"fwupd_gateway_refused_total"}
    assert names == set(metrics.GATEWAY_METRICS)

    # The wrong key: the handshake never completes and is counted as failed, once.
    with pytest.raises((TimeoutError, aiocoap.error.Error)):
        thread.call(register(KEY_B))
    wait_for(lambda: handshakes(scrape(url), "failed") == 1, 5)
    found = scrape(url)
    assert handshakes(found, "completed") == 1
    assert found[("fwupd_gateway_registrations_total", (("gateway", "gw-dtls"),))] == 1


def test_gateway_command_serves_metrics_on_its_own_port(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "lwm2m_gateway",
            "--bind",
            "127.0.0.1:0",
            "--gateway-id",
            "gw-metrics",
            "--metrics-port",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "FWUPD_VAR_DIR": str(tmp_path),
            "LWM2M_ACCEPT_NOSEC": "1",
            "LWM2M_ADMISSION": "open",
        },
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("metrics on http://127.0.0.1:"), line + (
            proc.stderr.read() if proc.stderr else ""
        )
        found = scrape(line.split()[-1])
        assert found[("fwupd_gateway_registrations_total", (("gateway", "gw-metrics"),))] == 0
        assert (
            "fwupd_gateway_dtls_handshakes_total",
            (("gateway", "gw-metrics"), ("result", "completed")),
        ) not in found
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0
