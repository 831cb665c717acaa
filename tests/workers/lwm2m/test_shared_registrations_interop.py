"""Shared registrations with libcoap's command-line clients (Debian libcoap3-bin, installed by
scripts/install-system-deps.sh): ``coap-client`` registers at one gateway, and its registration
Update (``POST /rd/<id>`` from the same local port, ``-p``) is accepted by that gateway restarted
on the same port, and over DTLS (``coap-client-openssl`` with a PSK) by a second gateway.

What Eclipse Wakaama's client does on a 4.04 to its Update is exit (shared/interop/README.md);
these are the acceptance checks that it gets 2.04 instead."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from campaigns import device_services
from campaigns.models import Device
from tests.workers.lwm2m.conftest import wait_for
from workers.lwm2m.bus import bus_for_url
from workers.lwm2m.dtls import dtls_missing
from workers.lwm2m.gateway import CeleryEventSink, Gateway, GatewayConfig, GatewayThread
from workers.lwm2m.ports import claim_udp_port, release_udp_port

PLAIN = next(
    (shutil.which(n) for n in ("coap-client", "coap-client-notls") if shutil.which(n)), None
)
DTLS = shutil.which("coap-client-openssl")
ENDPOINT = "libcoap-shared-1"
KEY = b"interop-key-0002"  # 16 bytes, ASCII so it can go on the command line
LINKS = "</1/0>,</3/0>,</5/0>"


def gateway(gateway_id: str, *, port: int = 0, dtls: bool = False) -> GatewayThread:
    config = GatewayConfig(
        gateway_id=gateway_id,
        port=port,
        request_timeout=1,
        admission="provisioned",
        psk_miss_refresh_seconds=0.1,
    )
    if dtls:
        config.dtls_host, config.dtls_port, config.dtls_handshake_timeout = "127.0.0.1", 0, 2
    return GatewayThread(
        Gateway(config, bus=bus_for_url("memory://"), sink=CeleryEventSink())
    ).start()


@pytest.fixture
def local_port() -> Iterator[int]:
    """A free local port for the client (released so that coap-client can bind it)."""
    port = claim_udp_port("127.0.0.1")
    release_udp_port("127.0.0.1", port)
    yield port


def run(client: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [client, "-B", "5", *args], capture_output=True, text=True, timeout=30, check=False
    )


def registered_id(thread: GatewayThread) -> str:
    """The id the gateway handed out, once the registration is stored in the registry."""
    reg_id = thread.gateway.by_endpoint[ENDPOINT].reg_id
    wait_for(lambda: Device.objects.filter(endpoint=ENDPOINT, registration_id=reg_id).exists())
    return reg_id


def answer(proc: subprocess.CompletedProcess[str]) -> str:
    """libcoap's client prints an error response's code on stderr and nothing for a 2.xx."""
    codes = [w for w in proc.stderr.split() if len(w) == 4 and w[1] == "." and w[0] in "45"]
    return codes[0] if codes else "2.xx"


@pytest.mark.skipif(PLAIN is None, reason="libcoap's coap-client is not installed")
def test_coap_client_update_is_accepted_by_the_restarted_gateway(
    transactional_db: None, eager_celery: None, local_port: int
) -> None:
    assert PLAIN is not None
    Device.objects.create(endpoint=ENDPOINT)  # provisioned
    first = gateway("gw-a")
    port = first.gateway.config.port
    base = first.gateway.config.base_uri
    try:
        proc = run(
            PLAIN,
            ["-p", str(local_port), "-m", "post", "-t", "40", "-e", LINKS,
             f"{base}/rd?ep={ENDPOINT}&lt=60&lwm2m=1.1&b=U"],
        )  # fmt: skip
        assert proc.returncode == 0 and answer(proc) == "2.xx", proc.stderr
        reg_id = registered_id(first)
        wait_for(
            lambda: (
                Device.objects.get(endpoint=ENDPOINT).registration_address
                == f"127.0.0.1:{local_port}"
            )
        )
    finally:
        first.stop()
    restarted = gateway("gw-a", port=port)
    try:
        # From another local port: not the registration's peer.
        moved = run(PLAIN, ["-m", "post", f"{base}/rd/{reg_id}"])
        assert answer(moved) == "4.03", moved.stderr
        proc = run(PLAIN, ["-p", str(local_port), "-m", "post", f"{base}/rd/{reg_id}"])
        assert proc.returncode == 0 and answer(proc) == "2.xx", proc.stderr
        assert restarted.gateway.by_id[reg_id].endpoint == ENDPOINT
        assert restarted.gateway.stats["updates"] == 1
        wait_for(lambda: Device.objects.get(endpoint=ENDPOINT).events.filter(kind="registered")
                 .count() == 1)  # fmt: skip
        deleted = run(PLAIN, ["-p", str(local_port), "-m", "delete", f"{base}/rd/{reg_id}"])
        assert answer(deleted) == "2.xx", deleted.stderr
        wait_for(lambda: not Device.objects.get(endpoint=ENDPOINT).online)
    finally:
        restarted.stop()


@pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))
@pytest.mark.skipif(DTLS is None, reason="libcoap's coap-client-openssl is not installed")
def test_coap_client_openssl_update_over_dtls_is_accepted_by_a_second_gateway(
    transactional_db: None, eager_celery: None, local_port: int
) -> None:
    assert DTLS is not None
    device_services.device_psk_set(endpoint=ENDPOINT, key=KEY)
    first, second = gateway("gw-a", dtls=True), gateway("gw-b", dtls=True)
    psk = ["-u", ENDPOINT, "-k", KEY.decode(), "-p", str(local_port)]
    try:
        proc = run(
            DTLS,
            [*psk, "-m", "post", "-t", "40", "-e", LINKS,
             f"{first.gateway.config.dtls_base_uri}/rd?ep={ENDPOINT}&lt=60&lwm2m=1.1&b=U"],
        )  # fmt: skip
        assert proc.returncode == 0 and answer(proc) == "2.xx", proc.stderr
        reg_id = registered_id(first)
        wait_for(lambda: Device.objects.get(endpoint=ENDPOINT).registration_identity == ENDPOINT)
        # Plain CoAP from the same port is not the registration's peer (its DTLS identity is).
        plain = run(
            PLAIN or DTLS,
            ["-p", str(local_port), "-m", "post", f"{second.gateway.config.base_uri}/rd/{reg_id}"],
        )
        assert answer(plain) == "4.03", plain.stderr
        proc = run(DTLS, [*psk, "-m", "post", f"{second.gateway.config.dtls_base_uri}/rd/{reg_id}"])
        assert proc.returncode == 0 and answer(proc) == "2.xx", proc.stdout + proc.stderr
        held = second.gateway.by_id[reg_id]
        assert held.identity == ENDPOINT and held.objects.has_object(5)
        wait_for(lambda: Device.objects.get(endpoint=ENDPOINT).gateway_id == "gw-b")
    finally:
        first.stop()
        second.stop()
