"""What the gateway reads of DTLS records to explain a failed handshake (pure functions of
``workers.lwm2m.dtls``), and the guard around the tinydtls configuration.

The ClientHello vectors are the records Eclipse Wakaama's example client (tinydtls 86f23c6, PSK
build) sent to the gateway, captured with tshark; random and cookie are from that capture.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.workers.lwm2m.dtls_peer import (
    CLIENT_HELLO,
    DTLS_1_0,
    HANDSHAKE,
    WAKAAMA_PSK,
    PSKClient,
    client_hello_body,
    record,
)
from workers.lwm2m.dtls import (
    ClientHello,
    DTLSUnavailableError,
    alert_name,
    alert_of_result,
    configure_tinydtls,
    describe_records,
    dtls_missing,
    hello_refusal,
    normalise_hello_record_version,
    parse_client_hello,
    psk_identity,
    read_records,
)

WAKAAMA_HELLO_WITH_COOKIE = bytes.fromhex(
    "16feff0000000000000001004c010000400001000000000040fefd53a555f962a29c0f25285c7505c1492c72"
    "5864cf29bf3fb7cbc49917880124d10010f4d227c8584958d12690543b26703d060002c0a80100000400170000"
)
WAKAAMA_HELLO_WITHOUT_COOKIE = bytes.fromhex(
    "16feff0000000000000000003c010000300000000000000030fefd53a555f962a29c0f25285c7505c1492c72"
    "5864cf29bf3fb7cbc49917880124d100000002c0a80100000400170000"
)
RANDOM = bytes.fromhex("53a555f962a29c0f25285c7505c1492c725864cf29bf3fb7cbc49917880124d1")
COOKIE = bytes.fromhex("f4d227c8584958d12690543b26703d06")


def test_wakaamas_client_hello_is_read_field_by_field() -> None:
    [only] = read_records(WAKAAMA_HELLO_WITH_COOKIE)
    hello = parse_client_hello(only.fragment)
    assert hello == ClientHello(
        cookie=COOKIE, suites=(0xC0A8,), compression=b"\x00", extensions=((23, b""),)
    )
    assert hello.describe() == (
        "cipher suites [TLS_PSK_WITH_AES_128_CCM_8], extensions [extended_master_secret]"
    )
    assert describe_records([only]) == "ClientHello with cookie"
    assert describe_records(read_records(WAKAAMA_HELLO_WITHOUT_COOKIE)) == (
        "ClientHello without cookie"
    )


def test_wakaamas_client_hello_is_one_the_gateway_accepts() -> None:
    # It signals no secure renegotiation; the gateway no longer requires that (see dtls.py).
    hello = parse_client_hello(read_records(WAKAAMA_HELLO_WITH_COOKIE)[0].fragment)
    assert hello is not None and not hello.has(0xFF01) and 0x00FF not in hello.suites
    assert hello_refusal(hello) is None


def test_test_peer_sends_wakaamas_client_hello_byte_for_byte() -> None:
    peer = PSKClient(("127.0.0.1", 9), b"x", b"k", shape=WAKAAMA_PSK)
    try:
        peer._message_sequence = 1
        message = peer._handshake_message(
            CLIENT_HELLO, client_hello_body(WAKAAMA_PSK, RANDOM, COOKIE)
        )
    finally:
        peer.close()
    assert record(HANDSHAKE, 0, 1, message, DTLS_1_0) == WAKAAMA_HELLO_WITH_COOKIE


def _hello(
    suites: tuple[int, ...], *extensions: tuple[int, bytes], compression: bytes = b"\0"
) -> ClientHello:
    return ClientHello(b"c", suites, compression, extensions)


@pytest.mark.parametrize(
    ("hello", "why"),
    [
        (_hello((0xC0A8,)), "no extended_master_secret extension (RFC 7627)"),
        (_hello((0x00A8, 0xC0AE), (23, b"")), "offers no cipher suite the gateway negotiates"),
        (_hello((0xC0A8,), (23, b""), compression=b"\x01"), "does not offer null compression"),
        (_hello((0xC0A8,), (10, b"\x00\x02\x00\x1d"), (23, b"")), "supported_groups"),
        (_hello((0xC0A8,), (10, b"\x00\x04\x00\x17"), (23, b"")), "supported_groups"),
        (_hello((0xC0A8,), (11, b"\x01\x01"), (23, b"")), "ec_point_formats"),
        (_hello((0xC0A8,), (13, b"\x00\x02\x04\x01"), (23, b"")), "signature_algorithms"),
        (_hello((0xC0A8,), (19, b"\x01\x00"), (23, b"")), "client_certificate_type"),
        (_hello((0xC0A8,), (0xFF01, b"\x01\x00"), (23, b"")), "renegotiation_info is not empty"),
        (ClientHello(b"", (0xC0A8,), b"\0", (), True), "extensions block does not parse"),
    ],
)
def test_why_tinydtls_refuses_a_client_hello(hello: ClientHello, why: str) -> None:
    assert why in (hello_refusal(hello) or "")


@pytest.mark.parametrize(
    "hello",
    [
        _hello((0xC0A8,), (23, b"")),
        _hello((0x00FF, 0xC0AE, 0xC0A4), (23, b""), (0xFF01, b"\x00")),
        # OpenSSL's and GnuTLS's shapes: many suites, ECDSA-friendly extension lists.
        _hello(
            (0xC0A8, 0x00A8),
            (10, b"\x00\x04\x00\x1d\x00\x17"),
            (13, b"\x00\x02\x04\x03"),
            (23, b""),
        ),
    ],
)
def test_client_hellos_the_gateway_takes_have_no_refusal(hello: ClientHello) -> None:
    assert hello_refusal(hello) is None


def test_alert_names_and_tinydtls_results() -> None:
    assert alert_name(2, 40) == "fatal alert handshake_failure (40)"
    assert alert_name(1, 0) == "warning alert close_notify (0)"
    assert alert_name(9, 250) == "level-9 alert unknown (250)"
    assert alert_of_result(-(2 << 8 | 51)) == (2, 51)
    assert alert_of_result(-1) == (2, 80)  # tinydtls sends internal_error for a bare -1
    assert alert_of_result(0) is None and alert_of_result(-2) is None


def test_records_in_both_directions_are_described() -> None:
    datagram = (
        record(HANDSHAKE, 0, 2, bytes([16]) + b"\0" * 11 + b"\x00\x03abc")
        + record(20, 0, 3, b"\x01")
        + record(HANDSHAKE, 1, 0, b"\x99" * 40)
    )
    records = read_records(datagram)
    assert describe_records(records) == (
        "ClientKeyExchange + ChangeCipherSpec + encrypted handshake (epoch 1)"
    )
    assert psk_identity(records[0]) == b"abc"
    assert describe_records(read_records(record(21, 0, 1, b"\x02\x28"))) == (
        "fatal alert handshake_failure (40)"
    )
    assert describe_records([]) == "no DTLS record"


@pytest.mark.parametrize(
    ("datagram", "count"),
    [
        (b"", 0),
        (b"\x16" * 12, 0),  # shorter than a record header
        (record(22, 0, 0, b"x" * 20)[:-1], 0),  # the record is cut short
        (b"\x16\xfe\xfd" + b"\xff" * 10, 0),  # claims 65535 bytes
        (record(22, 0, 0, b"ok") + b"\x17\xfe", 1),  # a good record, then a fragment
    ],
)
def test_truncated_records_are_left_out(datagram: bytes, count: int) -> None:
    assert len(read_records(datagram)) == count


def test_a_datagram_of_many_records_is_described_briefly() -> None:
    assert len(read_records(record(23, 1, 0, b"") * 500)) == 8


@given(st.binary(max_size=300))
def test_hostile_bytes_never_raise(data: bytes) -> None:
    for rec in read_records(data) + read_records(b"\x16\xfe\xfd" + data):
        rec.describe()
        psk_identity(rec)
    fragment = bytes([CLIENT_HELLO]) + data
    hello = parse_client_hello(fragment)
    if hello is not None:
        hello_refusal(hello)
        hello.describe()


@pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))
def test_tinydtls_is_configured_only_through_the_object_it_was_checked_on() -> None:
    from DTLSSocket import dtls

    context = dtls.DTLS(pskId=b"-", pskStore={})
    configure_tinydtls(context)
    configure_tinydtls(context)  # idempotent
    with pytest.raises(DTLSUnavailableError, match=r"it is a builtins\.bytearray"):
        configure_tinydtls(bytearray(200))


def _hello_record(version: bytes, *, epoch: int = 0) -> bytes:
    body = client_hello_body(WAKAAMA_PSK, bytes(32), b"")
    fragment = bytes([CLIENT_HELLO]) + len(body).to_bytes(3, "big") + bytes(5)
    fragment += len(body).to_bytes(3, "big") + body
    return record(HANDSHAKE, epoch, 0, fragment, version)


def test_client_hello_record_version_fe00_is_read_as_dtls_1_2() -> None:
    """Anjay over mbed TLS 2.28 puts ``fe 00`` there; tinydtls drops anything but 1.0 and 1.2."""
    datagram = _hello_record(b"\xfe\x00")
    assert normalise_hello_record_version(datagram) == b"\x16\xfe\xfd" + datagram[3:]


@pytest.mark.parametrize(
    "datagram",
    [
        _hello_record(DTLS_1_0),
        _hello_record(b"\xfe\xfd"),
        _hello_record(b"\xfe\x00", epoch=1),  # encrypted: not a ClientHello we can read
        _hello_record(b"\x03\x03"),  # not DTLS at all
        record(23, 0, 0, b"\x01abc", b"\xfe\x00"),  # application data
        b"\x16\xfe\x00",  # truncated header
    ],
    ids=["dtls-1.0", "dtls-1.2", "epoch-1", "tls", "application-data", "truncated"],
)
def test_other_records_are_passed_on_unchanged(datagram: bytes) -> None:
    assert normalise_hello_record_version(datagram) == datagram


@given(st.binary(max_size=300))
def test_normalising_hostile_bytes_never_raises_nor_changes_length(data: bytes) -> None:
    assert len(normalise_hello_record_version(data)) == len(data)
    assert len(normalise_hello_record_version(b"\x16\xfe\x00" + data)) == len(data) + 3


def test_only_a_plaintext_client_hello_opens_a_session() -> None:
    from workers.lwm2m.dtls import _opens_session

    hello = _hello_record(DTLS_1_0)
    assert _opens_session(hello)
    assert not _opens_session(_hello_record(DTLS_1_0, epoch=1))
    key_exchange = record(HANDSHAKE, 0, 3, bytes([16]) + bytes(11) + b"\x00\x02id", DTLS_1_0)
    assert not _opens_session(key_exchange)  # a later flight of a handshake dropped here
    assert not _opens_session(record(23, 1, 0, b"\x01abc", DTLS_1_0))
    assert not _opens_session(hello[:13])


@pytest.mark.parametrize(
    ("started", "last_in", "expired"),
    [
        (0.0, 0.0, True),  # silent for the whole timeout
        (0.0, 5.0, False),  # the peer spoke 5 s ago: still shaking hands
        (-25.0, 9.0, False),
        (-30.0, 9.9, True),  # four timeouts in all, however active
    ],
)
def test_handshake_expires_on_silence_or_after_four_timeouts(
    started: float, last_in: float, expired: bool
) -> None:
    from types import SimpleNamespace

    from workers.lwm2m.dtls import _handshake_expired

    session = SimpleNamespace(started=started, last_in_at=last_in)
    assert _handshake_expired(session, now=10.0, timeout=10.0) is expired
