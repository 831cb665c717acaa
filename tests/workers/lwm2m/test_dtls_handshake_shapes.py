"""DTLS-PSK handshakes shaped like real tinydtls clients (Eclipse Wakaama's), and what the
gateway logs when a handshake fails.

The peer is :mod:`tests.workers.lwm2m.dtls_peer`, whose ClientHello reproduces the one Wakaama's
example client sends (captured with tshark): TLS_PSK_WITH_AES_128_CCM_8 and the
extended_master_secret extension, no renegotiation_info, no renegotiation SCSV. The gateway's
tinydtls used to refuse that with a fatal handshake_failure. Keys are provisioned through
``device_psk_set``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from campaigns import device_services
from tests.workers.lwm2m.conftest import DictFirmware, ListSink, wait_for
from tests.workers.lwm2m.dtls_peer import (
    ANJAY_MBEDTLS,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    CLIENT_HELLO,
    EMPTY_RENEGOTIATION_INFO_SCSV,
    EXTENDED_MASTER_SECRET,
    HANDSHAKE,
    HELLO_VERIFY_REQUEST,
    PSK_AES_128_CCM,
    PSK_AES_128_CCM_8,
    PSK_AES_128_GCM_SHA256,
    RENEGOTIATION_INFO,
    SERVER_HELLO,
    WAKAAMA_ECC_AND_PSK,
    WAKAAMA_PSK,
    AlertReceived,
    HelloShape,
    PSKClient,
    client_hello_body,
)
from workers.lwm2m.admission import peer_address
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.dtls import dtls_missing
from workers.lwm2m.gateway import Gateway, GatewayConfig, GatewayThread

pytestmark = pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))

IDENTITY = "wakaama-shape-1"
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
FATAL, HANDSHAKE_FAILURE = 2, 40
CONNECTION_ID = 54  # RFC 9146's extension


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
    base = thread.gateway.config.dtls_base_uri
    assert base is not None
    host, _, port = base.removeprefix("coaps://").rpartition(":")
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


def test_anjay_mbedtls_client_hello_with_record_version_fe00_completes_handshake(
    gateway: GatewayThread,
) -> None:
    """Anjay's demo client (mbed TLS 2.28) says ``fe 00`` in its ClientHello record headers;
    tinydtls dropped those records unanswered, so Anjay never registered over DTLS (the gateway
    logged only "not completed in 10 s ... last sent: nothing")."""
    client = _client(gateway, ANJAY_MBEDTLS)
    try:
        client.handshake()
        # tinydtls takes the first of its two CCM suites in the client's list: CCM for Anjay.
        assert client.cipher_suite == PSK_AES_128_CCM
        response = _register(client)
    finally:
        client.close()
    assert response.code == Code.CREATED
    assert gateway.gateway.by_endpoint[IDENTITY].identity == IDENTITY


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


# --- failed handshakes: the alert, and why -------------------------------------------------------


def _refused(thread: GatewayThread, shape: HelloShape) -> AlertReceived:
    client = _client(thread, shape)
    try:
        with pytest.raises(AlertReceived) as refused:
            client.handshake()
    finally:
        client.close()
    return refused.value


def _handshake_goes_unanswered(client: PSKClient) -> None:
    """tinydtls drops a Finished that fails authentication and answers nothing; the client
    hears at most the close_notify sent when the gateway drops the handshake."""
    try:
        client.handshake()
    except TimeoutError:
        pass
    except AlertReceived as alert:
        assert (alert.level, alert.description) == (1, 0)
    else:
        raise AssertionError("the handshake completed")
    finally:
        client.close()


@pytest.mark.parametrize(
    ("shape", "why"),
    [
        (
            HelloShape((PSK_AES_128_CCM_8,), ()),
            "it sends no extended_master_secret extension (RFC 7627), which the gateway requires",
        ),
        (
            HelloShape((PSK_AES_128_GCM_SHA256,), (EXTENDED_MASTER_SECRET,)),
            "it offers no cipher suite the gateway negotiates (TLS_PSK_WITH_AES_128_CCM_8 or "
            "TLS_PSK_WITH_AES_128_CCM); the ClientHello offers cipher suites "
            "[TLS_PSK_WITH_AES_128_GCM_SHA256]",
        ),
        (
            # x25519 only: tinydtls refuses a supported_groups without secp256r1 even for PSK.
            HelloShape((PSK_AES_128_CCM_8,), ((10, b"\x00\x02\x00\x1d"), EXTENDED_MASTER_SECRET)),
            "its supported_groups extension does not list secp256r1",
        ),
    ],
    ids=["no-extended-master-secret", "no-accepted-suite", "supported-groups-without-p256"],
)
def test_refused_client_hello_is_logged_with_the_alert_sent_and_why(
    gateway: GatewayThread, caplog: pytest.LogCaptureFixture, shape: HelloShape, why: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="workers.lwm2m.dtls"):
        refused = _refused(gateway, shape)
        wait_for(lambda: "handshake_failure" in caplog.text, 3)
    assert (refused.level, refused.description) == (FATAL, HANDSHAKE_FAILURE)
    assert "failed, sent fatal alert handshake_failure (40): " + why in caplog.text
    assert "wrong key?" not in caplog.text


def test_wrong_key_from_a_tinydtls_client_is_logged_as_bad_record_mac(
    gateway: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="workers.lwm2m.dtls"):
        _handshake_goes_unanswered(_client(gateway, key=bytes(16)))
        wait_for(lambda: "bad_record_mac" in caplog.text, 3)
    assert (
        f"for identity '{IDENTITY}' failed, bad_record_mac (no alert sent: DTLS drops a record "
        "that fails authentication, RFC 6347 4.1.2.7): its Finished does not authenticate under "
        f"the key stored for '{IDENTITY}': the device holds a different key"
    ) in caplog.text
    assert "wrong key?" not in caplog.text


def test_alert_received_from_the_client_during_the_handshake_is_logged_by_name(
    gateway: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(gateway)
    with caplog.at_level(logging.WARNING, logger="workers.lwm2m.dtls"):
        try:
            client.hello()
            client.server_flight()
            client.send_alert(FATAL, 51)  # decrypt_error, as a client whose check failed
        finally:
            client.close()
        wait_for(lambda: "decrypt_error" in caplog.text, 3)
    assert "failed, received fatal alert decrypt_error (51)" in caplog.text


def test_handshake_that_stalls_is_dropped_with_what_was_last_seen(
    gateway: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(gateway)
    with caplog.at_level(logging.WARNING, logger="workers.lwm2m.dtls"):
        try:
            client.hello()
            client.server_flight()
            client.key_exchange()  # ... and never its ChangeCipherSpec and Finished
            wait_for(lambda: "not completed" in caplog.text, 5)
        finally:
            client.close()
    assert (
        f"for identity '{IDENTITY}' not completed in 1 s (last from the peer: ClientKeyExchange "
    ) in caplog.text
    assert "s ago); last sent: ServerHelloDone): dropped" in caplog.text
    assert "wrong key?" not in caplog.text


def test_repeated_failed_handshakes_are_rate_limited(
    gateway: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="workers.lwm2m.dtls"):
        for _ in range(8):
            _refused(gateway, HelloShape((PSK_AES_128_CCM_8,), ()))
        _handshake_goes_unanswered(_client(gateway, key=bytes(16)))
        wait_for(lambda: "bad_record_mac" in caplog.text, 3)
    sent = [r.getMessage() for r in caplog.records if "handshake_failure" in r.getMessage()]
    # Five lines per kind of failure (the alert) and 10 s; each kind is counted on its own.
    assert len(sent) == 5, sent


def _response(client: PSKClient, request: aiocoap.Message) -> aiocoap.Message:
    """Send ``request`` over the session; its response (the gateway's own requests skipped)."""
    client.send_record(APPLICATION_DATA, request.encode(), epoch=1)
    for _ in range(20):
        for payload in client.receive_application_data():
            message = aiocoap.Message.decode(payload)
            if message.code.is_response() and message.token == request.token:
                return message
    raise AssertionError("no response")


def test_device_whose_source_port_changes_handshakes_again_and_keeps_its_registration(
    gateway: GatewayThread,
) -> None:
    """A NAT rebinding: the device's datagrams come from a new port. Without a Connection ID
    that is a new session (one more handshake); its Update moves the registration there."""
    first = _client(gateway)
    try:
        first.handshake()
        created = _register(first)
        old_port = first.sock.getsockname()[1]
    finally:
        first.close()
    assert created.code == Code.CREATED
    moved = _client(gateway)  # a new socket: a new source port
    try:
        moved.handshake()
        update = aiocoap.Message(
            code=Code.POST, uri="coaps://127.0.0.1/" + "/".join(created.opt.location_path)
        )
        update.mtype, update.mid, update.token = aiocoap.CON, 4712, b"up"
        response = _response(moved, update)
        new_port = moved.sock.getsockname()[1]
    finally:
        moved.close()
    assert response.code == Code.CHANGED
    assert new_port != old_port
    reg = gateway.gateway.by_endpoint[IDENTITY]
    assert peer_address(reg.remote)[1] == new_port
    listener = gateway.gateway.dtls
    assert listener is not None and listener.handshakes["completed"] == 2


def test_connection_id_offered_by_a_client_is_not_negotiated(gateway: GatewayThread) -> None:
    """RFC 9146: the client offers a Connection ID (an empty one of its own: "send me none, I
    will use yours"); tinydtls has no Connection ID, so the ServerHello carries none and the
    session is bound to the peer's address (docs/lwm2m.md, DTLS "Known limits")."""
    shape = HelloShape((PSK_AES_128_CCM_8,), (EXTENDED_MASTER_SECRET, (CONNECTION_ID, b"\x00")))
    client = _client(gateway, shape)
    try:
        client.handshake()
        assert CONNECTION_ID not in client.server_extensions
        response = _register(client)
    finally:
        client.close()
    assert response.code == Code.CREATED


def test_retransmitted_client_hello_does_not_restart_the_handshake(
    gateway: GatewayThread,
) -> None:
    """A client whose timer fires before the server's flight arrives (a loaded gateway) sends
    its ClientHello again. The gateway answers it with the same flight (RFC 6347 4.2.4); tinydtls
    alone started a new handshake with a new server random, so the client's Finished, made from
    the first, failed as bad_record_mac and the device was stuck until its retransmissions ran
    out."""
    client = _client(gateway)
    try:
        client.hello()
        client.retransmit_last_record()
        client.server_flight()
        assert client.drain() >= 1  # the same flight again, for the retransmitted ClientHello
        client.key_exchange()
        client.finish()
        response = _register(client)
    finally:
        client.close()
    assert response.code == Code.CREATED


def test_retransmitted_final_flight_gets_the_servers_finished_again(
    gateway: GatewayThread,
) -> None:
    """The client's ClientKeyExchange, ChangeCipherSpec and Finished come again (our Finished
    did not reach it in time): the gateway sends its ChangeCipherSpec and Finished again, and
    the session stays usable."""
    client = _client(gateway)
    try:
        client.handshake()
        client.retransmit_flight()
        again = client.receive_content_types() + client.receive_content_types()
        assert CHANGE_CIPHER_SPEC in again and HANDSHAKE in again
        response = _register(client)
    finally:
        client.close()
    assert response.code == Code.CREATED


def _send_hello(client: PSKClient, random: bytes, cookie: bytes) -> tuple[int, bytes]:
    """A ClientHello (with ``cookie``, maybe empty): the type and body of the answer."""
    body = client_hello_body(client.shape, random, cookie)
    client.send_record(HANDSHAKE, client._handshake_message(CLIENT_HELLO, body, hashed=False))
    msg_type, answer, _ = client._next_handshake()
    return msg_type, answer


def test_spoofed_client_hellos_get_a_cookie_and_no_session(gateway: GatewayThread) -> None:
    """ClientHellos from a source that never echoes its cookie (a spoofed address never sees
    it) are answered statelessly (RFC 6347 4.2.1): no session, so no slot and no timer each;
    tinydtls alone kept a context per source address until the handshake timeout."""
    listener = gateway.gateway.dtls
    assert listener is not None
    client = _client(gateway)
    try:
        for _ in range(20):
            msg_type, _ = _send_hello(client, os.urandom(32), b"")
            assert msg_type == HELLO_VERIFY_REQUEST
        assert listener.sessions == {}
        wait_for(lambda: listener.interface._pool.cookies_sent >= 20, 5)
    finally:
        client.close()
    client = _client(gateway)  # a real device still gets in
    try:
        client.handshake()
        assert _register(client).code == Code.CREATED
    finally:
        client.close()


def test_cookie_fetched_from_another_address_opens_no_session(gateway: GatewayThread) -> None:
    """A cookie is bound to the address it was sent to: replayed from another source (an
    attacker fetching one cookie to open sessions for spoofed addresses) it gets a fresh
    HelloVerifyRequest, and no session stays open for that source."""
    listener = gateway.gateway.dtls
    assert listener is not None
    fetcher, replayer = _client(gateway), _client(gateway)
    try:
        random = os.urandom(32)
        msg_type, body = _send_hello(fetcher, random, b"")
        assert msg_type == HELLO_VERIFY_REQUEST
        cookie = body[3 : 3 + body[2]]
        msg_type, body = _send_hello(replayer, random, cookie)
        assert msg_type == HELLO_VERIFY_REQUEST  # not a ServerHello
        assert body[3 : 3 + body[2]] != cookie
        wait_for(lambda: listener.sessions == {}, 5)
        # The same cookie from the address it was made for opens the handshake.
        msg_type, _ = _send_hello(fetcher, random, cookie)
        assert msg_type == SERVER_HELLO
        assert len(listener.sessions) == 1
    finally:
        fetcher.close()
        replayer.close()
