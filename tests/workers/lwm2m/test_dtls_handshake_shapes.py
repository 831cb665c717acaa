"""DTLS-PSK handshakes shaped like real tinydtls clients (Eclipse Wakaama's), and what the
gateway logs when a handshake fails.

The peer is :mod:`tests.workers.lwm2m.dtls_peer`, whose ClientHello reproduces the one Wakaama's
example client sends (captured with tshark): TLS_PSK_WITH_AES_128_CCM_8 and the
extended_master_secret extension, no renegotiation_info, no renegotiation SCSV. The gateway's
tinydtls used to refuse that with a fatal handshake_failure. Keys are provisioned through
``device_psk_set``.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from campaigns import device_services
from tests.workers.lwm2m.conftest import DictFirmware, ListSink
from tests.workers.lwm2m.dtls_peer import (
    EMPTY_RENEGOTIATION_INFO_SCSV,
    EXTENDED_MASTER_SECRET,
    PSK_AES_128_CCM_8,
    RENEGOTIATION_INFO,
    WAKAAMA_ECC_AND_PSK,
    WAKAAMA_PSK,
    HelloShape,
    PSKClient,
)
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.dtls import dtls_missing
from workers.lwm2m.gateway import Gateway, GatewayConfig, GatewayThread

pytestmark = pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))

IDENTITY = "wakaama-shape-1"
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture
def gateway(transactional_db: None) -> Iterator[GatewayThread]:
    device_services.device_psk_set(endpoint=IDENTITY, key=KEY)
    gw = Gateway(
        GatewayConfig(
            gateway_id="gw-dtls-shapes",
            port=0,
            dtls_host="127.0.0.1",
            dtls_port=0,
            request_timeout=1,
            dtls_handshake_timeout=1,
            psk_miss_refresh_seconds=0.1,
        ),
        bus=InMemoryCommandBus(),
        sink=ListSink(),
        firmware=DictFirmware(),
    )
    thread = GatewayThread(gw).start()
    yield thread
    thread.stop()


def _client(
    thread: GatewayThread, shape: HelloShape = WAKAAMA_PSK, *, key: bytes = KEY
) -> PSKClient:
    host, _, port = thread.gateway.config.dtls_base_uri.removeprefix("coaps://").rpartition(":")
    return PSKClient((host, int(port)), IDENTITY.encode(), key, shape=shape)


def _register(client: PSKClient, endpoint: str = IDENTITY) -> aiocoap.Message:
    message = aiocoap.Message(
        code=Code.POST,
        uri=f"coaps://127.0.0.1/rd?ep={endpoint}&lt=60&lwm2m=1.1&b=U",
        payload=b"</1/0>,</3/0>,</5/0>",
        content_format=40,
    )
    message.mtype, message.mid, message.token = aiocoap.CON, 4711, b"wk"
    return aiocoap.Message.decode(client.exchange(message.encode()))


@pytest.mark.parametrize(
    "shape",
    [WAKAAMA_PSK, WAKAAMA_ECC_AND_PSK],
    ids=["wakaama-psk-build", "tinydtls-with-ecdsa-suite-first"],
)
def test_tinydtls_client_without_renegotiation_info_completes_handshake_and_registers(
    gateway: GatewayThread, shape: HelloShape
) -> None:
    client = _client(gateway, shape)
    try:
        client.handshake()
        assert client.cipher_suite == PSK_AES_128_CCM_8
        # The gateway answers with the extended master secret, and no renegotiation_info the
        # client did not ask for.
        assert client.server_extensions == [23]
        response = _register(client)
    finally:
        client.close()
    assert response.code == Code.CREATED and response.mid == 4711
    reg = gateway.gateway.by_endpoint[IDENTITY]
    assert reg.identity == IDENTITY and reg.objects.has_object(5)


@pytest.mark.parametrize(
    "shape",
    [
        HelloShape((PSK_AES_128_CCM_8,), (EXTENDED_MASTER_SECRET, RENEGOTIATION_INFO)),
        HelloShape((PSK_AES_128_CCM_8, EMPTY_RENEGOTIATION_INFO_SCSV), (EXTENDED_MASTER_SECRET,)),
    ],
    ids=["renegotiation_info-extension", "renegotiation-scsv"],
)
def test_client_signalling_secure_renegotiation_still_completes_handshake(
    gateway: GatewayThread, shape: HelloShape
) -> None:
    client = _client(gateway, shape)
    try:
        client.handshake()
        assert 0xFF01 in client.server_extensions  # echoed, as RFC 5746 asks
        assert _register(client).code == Code.CREATED
    finally:
        client.close()
