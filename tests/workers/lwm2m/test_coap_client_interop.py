"""Interop with libcoap's command-line client (Debian libcoap3-bin, installed by
scripts/install-system-deps.sh): register an endpoint and download a payload block-wise."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.workers.lwm2m.conftest import DictFirmware, ListSink
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.gateway import Gateway, GatewayConfig, GatewayThread

CLIENT = next(
    (
        shutil.which(name)
        for name in ("coap-client", "coap-client-notls", "coap-client-openssl")
        if shutil.which(name)
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    CLIENT is None,
    reason="libcoap's coap-client is not installed (run scripts/install-system-deps.sh as root)",
)

PAYLOAD = hashlib.sha256(b"seed").digest() * 700  # 22400 bytes
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def gateway() -> GatewayThread:
    gw = Gateway(
        GatewayConfig(gateway_id="gw-interop", port=0, request_timeout=1, admission="open"),
        bus=InMemoryCommandBus(),
        sink=ListSink(),
        firmware=DictFirmware(images={DIGEST: PAYLOAD}),
    )
    thread = GatewayThread(gw).start()
    yield thread
    thread.stop()


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    assert CLIENT is not None
    return subprocess.run([CLIENT, *args], capture_output=True, text=True, timeout=30, check=False)


def test_coap_client_registers(gateway: GatewayThread) -> None:
    base = gateway.gateway.config.base_uri
    proc = _run(
        [
            "-m",
            "post",
            "-t",
            "40",
            "-e",
            "</1/0>,</3/0>,</5/0>",
            f"{base}/rd?ep=libcoap-1&lt=60&lwm2m=1.1&b=U",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    reg = gateway.gateway.by_endpoint["libcoap-1"]
    assert reg.lifetime == 60 and reg.objects.has_object(5)


def test_coap_client_downloads_blockwise_with_digest_check(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    out = tmp_path / "payload.bin"
    base = gateway.gateway.config.base_uri
    proc = _run(["-m", "get", "-b", "256", "-o", str(out), f"{base}/fw/i/{DIGEST}"])
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == DIGEST
