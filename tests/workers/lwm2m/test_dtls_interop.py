"""DTLS-PSK interop with libcoap's command-line clients (Debian libcoap3-bin, installed by
scripts/install-system-deps.sh): ``coap-client-openssl`` and ``coap-client-gnutls`` (the
``-notls`` one cannot do DTLS). Our side, tinydtls, negotiates TLS_PSK_WITH_AES_128_CCM_8 (the
suite LwM2M mandates for PSK) or TLS_PSK_WITH_AES_128_CCM, whichever the client lists first:
OpenSSL's client gets CCM_8, GnuTLS's CCM (seen with tshark). Both signal secure renegotiation;
clients that do not (tinydtls before 2023, Wakaama's) are covered by test_dtls_handshake_shapes.

The key is provisioned through ``device_psk_set`` and read back from the database by the gateway.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaigns import device_services
from tests.workers.lwm2m.conftest import DictFirmware, ListSink
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.dtls import dtls_missing
from workers.lwm2m.gateway import Gateway, GatewayConfig, GatewayThread

CLIENTS = ["coap-client-openssl", "coap-client-gnutls"]
pytestmark = pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))

PAYLOAD = hashlib.sha256(b"dtls-seed").digest() * 700  # 22400 bytes: 88 blocks of 256
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
IDENTITY = "libcoap-dtls-1"
KEY = b"interop-key-0001"  # 16 bytes, ASCII so it can go on the command line


def _client(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (run scripts/install-system-deps.sh as root)")
    return path


@pytest.fixture
def gateway(transactional_db: None) -> Iterator[GatewayThread]:
    device_services.device_psk_set(endpoint=IDENTITY, key=KEY)
    gw = Gateway(
        GatewayConfig(
            gateway_id="gw-dtls-interop",
            port=0,
            dtls_host="127.0.0.1",
            dtls_port=0,
            request_timeout=1,
            dtls_handshake_timeout=1,
        ),
        bus=InMemoryCommandBus(),
        sink=ListSink(),
        firmware=DictFirmware(images={DIGEST: PAYLOAD}),
    )
    thread = GatewayThread(gw).start()
    # Load the image into the gateway's cache first. Otherwise, on a busy machine, the first
    # load can take longer than aiocoap's empty-ACK delay, the first block then goes out as a
    # separate response, and libcoap 4.3.1's client stalls on that ("large body receive
    # internal issue"): a libcoap quirk, not a DTLS one.
    assert thread.call(gw.published_file("i", DIGEST)).data == PAYLOAD
    yield thread
    thread.stop()


def _run(client: str, args: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [client, "-B", "5", "-v", "6", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("name", CLIENTS)
def test_libcoap_client_registers_over_dtls_psk(gateway: GatewayThread, name: str) -> None:
    client = _client(name)
    base = gateway.gateway.config.dtls_base_uri
    proc = _run(
        client,
        [
            "-u",
            IDENTITY,
            "-k",
            KEY.decode(),
            "-m",
            "post",
            "-t",
            "40",
            "-e",
            "</1/0>,</3/0>,</5/0>",
            f"{base}/rd?ep={IDENTITY}&lt=60&lwm2m=1.1&b=U",
        ],
    )
    assert proc.returncode == 0, proc.stderr
    reg = gateway.gateway.by_endpoint[IDENTITY]
    assert reg.identity == IDENTITY and reg.lifetime == 60 and reg.objects.has_object(5)


@pytest.mark.parametrize("name", CLIENTS)
def test_libcoap_client_downloads_blockwise_over_dtls_with_digest_check(
    gateway: GatewayThread, name: str, tmp_path: Path
) -> None:
    client = _client(name)
    out = tmp_path / "payload.bin"
    base = gateway.gateway.config.dtls_base_uri
    proc = _run(
        client,
        ["-u", IDENTITY, "-k", KEY.decode(), "-b", "256", "-o", str(out), f"{base}/fw/i/{DIGEST}"],
    )
    assert proc.returncode == 0 and out.exists(), proc.stdout + proc.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == DIGEST


def test_libcoap_client_with_wrong_key_gets_nothing(
    gateway: GatewayThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client("coap-client-openssl")
    out = tmp_path / "payload.bin"
    base = gateway.gateway.config.dtls_base_uri
    with caplog.at_level(logging.WARNING, logger="workers.lwm2m.dtls"):
        proc = _run(
            client,
            ["-u", IDENTITY, "-k", "not-the-key-0001", "-o", str(out), f"{base}/fw/i/{DIGEST}"],
        )
    # libcoap exits 0 here; it says so in its log (on stdout) and writes no payload.
    assert "cannot send CoAP pdu" in proc.stdout + proc.stderr
    assert not out.exists() or out.read_bytes() == b""
    assert f"for identity '{IDENTITY}' failed, bad_record_mac" in caplog.text
    assert "wrong key?" not in caplog.text
