"""A DTLS 1.2 PSK client whose ClientHello is chosen field by field: the test peer for clients
whose handshake shape no packaged client reproduces.

libcoap's and OpenSSL's clients always signal secure renegotiation (RFC 5746), so they cannot
show what a tinydtls client older than 2023 does. Eclipse Wakaama's example client (tinydtls
86f23c6, PSK build) sends, as captured with tshark against the gateway:

* cipher suites: TLS_PSK_WITH_AES_128_CCM_8 only (plus TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 and
  its four ECC extensions when built with ECDSA keys);
* compression: null;
* extensions: extended_master_secret only; no renegotiation_info and no
  TLS_EMPTY_RENEGOTIATION_INFO_SCSV;
* each handshake message in a record of its own, one record per datagram; ClientKeyExchange,
  ChangeCipherSpec and Finished as three datagrams; the ClientHello records say DTLS 1.0
  (0xfeff) in their record header, the others DTLS 1.2.

Anjay's demo client (avs_commons 5.8.0 over mbed TLS 2.28, PSK) sends, also captured: 37 cipher
suites (ECDHE/DHE-PSK with ChaCha20, GCM and CCM first; TLS_PSK_WITH_AES_128_CCM before
TLS_PSK_WITH_AES_128_CCM_8), server_name, signature_algorithms, supported_groups,
ec_point_formats, encrypt_then_mac, extended_master_secret and session_ticket, and ``fe 00`` as
the record-layer version of its ClientHellos (its lowest allowed version, which any {254, x}
may be before negotiation); ``ANJAY_MBEDTLS`` below.

This client does the same, with TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655) for the records it
encrypts, the extended master secret (RFC 7627) when it offers the extension, and plain blocking
sockets (the gateway under test runs on its own thread). It checks the server's Finished; it is
a test peer, not a DTLS implementation: no retransmission, fragmentation, reordering or replay
window.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

DTLS_1_2 = b"\xfe\xfd"
DTLS_1_0 = b"\xfe\xff"
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
CLIENT_HELLO, SERVER_HELLO, HELLO_VERIFY_REQUEST = 1, 2, 3
SERVER_KEY_EXCHANGE, SERVER_HELLO_DONE, CLIENT_KEY_EXCHANGE, FINISHED = 12, 14, 16, 20

PSK_AES_128_CCM_8 = 0xC0A8
PSK_AES_128_CCM = 0xC0A4
ECDHE_ECDSA_AES_128_CCM_8 = 0xC0AE
PSK_AES_128_GCM_SHA256 = 0x00A8
EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF

EXTENDED_MASTER_SECRET = (23, b"")
RENEGOTIATION_INFO = (0xFF01, b"\x00")
# What tinydtls adds when it has ECDSA keys: client and server certificate type (raw public
# key), supported_groups (secp256r1), ec_point_formats (uncompressed), signature_algorithms
# (sha256 + ecdsa).
TINYDTLS_ECC_EXTENSIONS = [
    (19, b"\x01\x02"),
    (20, b"\x01\x02"),
    (10, b"\x00\x02\x00\x17"),
    (11, b"\x01\x00"),
    (13, b"\x00\x02\x04\x03"),
]


@dataclass(frozen=True)
class HelloShape:
    """What a client puts in its ClientHello."""

    suites: tuple[int, ...]
    extensions: tuple[tuple[int, bytes], ...]
    # The record-layer version of the ClientHello records (tinydtls clients: DTLS 1.0).
    hello_record_version: bytes = DTLS_1_0


WAKAAMA_PSK = HelloShape(suites=(PSK_AES_128_CCM_8,), extensions=(EXTENDED_MASTER_SECRET,))
ANJAY_MBEDTLS = HelloShape(
    suites=tuple(
        struct.unpack(
            ">38H",
            bytes.fromhex(
                "ccacccad00abc0a7c03800b3c0360091c091c09bc097c0ab00aac0a6c03700b2c0350090c090"
                "c096c09ac0aaccab00a9c0a500af008dc08fc095c0a900a8c0a400ae008cc08ec094c0a800ff"
            ),
        )
    ),
    extensions=(
        (0, bytes.fromhex("000c0000093132372e302e302e31")),
        (13, bytes.fromhex("001006030601050305010403040103030301")),
        (10, bytes.fromhex("001a0019001c0018001b00170016001a0015001400130012001d001e")),
        (11, b"\x01\x00"),
        (22, b""),
        EXTENDED_MASTER_SECRET,
        (35, b""),
    ),
    hello_record_version=b"\xfe\x00",
)
WAKAAMA_ECC_AND_PSK = HelloShape(
    suites=(ECDHE_ECDSA_AES_128_CCM_8, PSK_AES_128_CCM_8),
    extensions=(*TINYDTLS_ECC_EXTENSIONS, EXTENDED_MASTER_SECRET),
)


class AlertReceived(Exception):
    """The server sent an alert instead of the next handshake message."""

    def __init__(self, level: int, description: int) -> None:
        super().__init__(f"alert level {level} description {description}")
        self.level = level
        self.description = description


def prf(secret: bytes, label: bytes, seed: bytes, size: int) -> bytes:
    """TLS 1.2 PRF with SHA-256 (RFC 5246 5)."""
    out, a = b"", label + seed
    while len(out) < size:
        a = hmac.new(secret, a, hashlib.sha256).digest()
        out += hmac.new(secret, a + label + seed, hashlib.sha256).digest()
    return out[:size]


def record(
    content_type: int, epoch: int, sequence: int, fragment: bytes, version: bytes = DTLS_1_2
) -> bytes:
    return (
        struct.pack(">B2sH", content_type, version, epoch)
        + sequence.to_bytes(6, "big")
        + struct.pack(">H", len(fragment))
        + fragment
    )


def parse_records(datagram: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    while len(datagram) >= 13:
        content_type, epoch = datagram[0], int.from_bytes(datagram[3:5], "big")
        sequence = int.from_bytes(datagram[5:11], "big")
        length = int.from_bytes(datagram[11:13], "big")
        out.append((content_type, epoch, sequence, datagram[13 : 13 + length]))
        datagram = datagram[13 + length :]
    return out


def client_hello_body(
    shape: HelloShape, random: bytes, cookie: bytes, *, compression: bytes = b"\x00"
) -> bytes:
    suites = b"".join(struct.pack(">H", s) for s in shape.suites)
    body = DTLS_1_2 + random + b"\x00" + bytes([len(cookie)]) + cookie
    body += struct.pack(">H", len(suites)) + suites
    body += bytes([len(compression)]) + compression
    if shape.extensions:
        extensions = b"".join(struct.pack(">HH", t, len(d)) + d for t, d in shape.extensions)
        body += struct.pack(">H", len(extensions)) + extensions
    return body


@dataclass
class PSKClient:
    """One DTLS session to ``address`` as ``identity`` with ``key``, shaped like ``shape``."""

    address: tuple[str, int]
    identity: bytes
    key: bytes
    shape: HelloShape = WAKAAMA_PSK
    timeout: float = 3.0
    sock: socket.socket = field(init=False)
    _write_sequence: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    _message_sequence: int = 0
    _transcript: bytes = b""
    _keys: tuple[bytes, bytes, bytes, bytes] | None = None
    _client_random: bytes = b""
    _server_random: bytes = b""
    _master: bytes = b""
    cipher_suite: int | None = None
    server_extensions: list[int] = field(default_factory=list)
    _last_sent: tuple[int, bytes, int, bytes] | None = None
    # The records sent since the server last spoke: the client's current flight.
    _flight: list[tuple[int, bytes, int, bytes]] = field(default_factory=list)
    _received_since_send: bool = False

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(self.timeout)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(self.address)

    def close(self) -> None:
        self.sock.close()

    # -- records -----------------------------------------------------------------------------

    def send_record(
        self, content_type: int, fragment: bytes, *, epoch: int = 0, version: bytes = DTLS_1_2
    ) -> None:
        self._last_sent = (content_type, fragment, epoch, version)
        if self._received_since_send:
            self._flight, self._received_since_send = [], False
        self._flight.append(self._last_sent)
        sequence = self._write_sequence[epoch]
        self._write_sequence[epoch] += 1
        if epoch:
            fragment = self._encrypt(content_type, epoch, sequence, fragment)
        self.sock.send(record(content_type, epoch, sequence, fragment, version))

    def send_alert(self, level: int, description: int) -> None:
        self.send_record(ALERT, bytes([level, description]))

    def _handshake_message(self, msg_type: int, body: bytes, *, hashed: bool = True) -> bytes:
        length = len(body).to_bytes(3, "big")
        message = (
            bytes([msg_type])
            + length
            + struct.pack(">H", self._message_sequence)
            + b"\x00\x00\x00"
            + length
            + body
        )
        self._message_sequence += 1
        if hashed:
            self._transcript += message
        return message

    def _receive(self) -> list[tuple[int, int, int, bytes]]:
        records = parse_records(self.sock.recv(65536))
        self._received_since_send = True
        return records

    def _next_handshake(self) -> tuple[int, bytes, bytes]:
        """The server's next handshake message (type, body, whole message); alerts raise.

        tinydtls sends a warning close_notify just before the fatal alert that refuses a
        ClientHello: a warning is held until the next datagram shows whether a fatal one follows.
        """
        warning: AlertReceived | None = None
        while True:
            try:
                records = self._receive()
            except TimeoutError:
                if warning is not None:
                    raise warning from None
                raise
            for content_type, epoch, sequence, fragment in records:
                if epoch:
                    fragment = self._decrypt(content_type, epoch, sequence, fragment)
                if content_type == ALERT:
                    alert = AlertReceived(fragment[0], fragment[1])
                    if alert.level == 2:
                        raise alert
                    warning = alert
                if content_type == HANDSHAKE:
                    return fragment[0], fragment[12:], fragment

    def _encrypt(self, content_type: int, epoch: int, sequence: int, plaintext: bytes) -> bytes:
        assert self._keys is not None
        client_key, _, client_iv, _ = self._keys
        explicit = struct.pack(">H", epoch) + sequence.to_bytes(6, "big")
        aad = explicit + bytes([content_type]) + DTLS_1_2 + struct.pack(">H", len(plaintext))
        ccm = AESCCM(client_key, tag_length=self._tag)
        sealed = ccm.encrypt(client_iv + explicit, plaintext, aad)
        return explicit + sealed

    def _decrypt(self, content_type: int, epoch: int, sequence: int, fragment: bytes) -> bytes:
        assert self._keys is not None
        _, server_key, _, server_iv = self._keys
        explicit, sealed = fragment[:8], fragment[8:]
        header = struct.pack(">H", epoch) + sequence.to_bytes(6, "big")
        aad = header + bytes([content_type]) + DTLS_1_2 + struct.pack(">H", len(sealed) - self._tag)
        return AESCCM(server_key, tag_length=self._tag).decrypt(server_iv + explicit, sealed, aad)

    @property
    def _tag(self) -> int:
        """TLS_PSK_WITH_AES_128_CCM has a 16-byte tag, the _CCM_8 suites an 8-byte one."""
        return 16 if self.cipher_suite == PSK_AES_128_CCM else 8

    # -- the handshake -----------------------------------------------------------------------

    def hello(self) -> None:
        """ClientHello, HelloVerifyRequest, ClientHello with the cookie."""
        self._client_random = os.urandom(32)
        first = client_hello_body(self.shape, self._client_random, b"")
        message = self._handshake_message(CLIENT_HELLO, first, hashed=False)
        self.send_record(HANDSHAKE, message, version=self.shape.hello_record_version)
        msg_type, body, _ = self._next_handshake()
        assert msg_type == HELLO_VERIFY_REQUEST, msg_type
        cookie = body[3 : 3 + body[2]]
        second = client_hello_body(self.shape, self._client_random, cookie)
        message = self._handshake_message(CLIENT_HELLO, second)
        self.send_record(HANDSHAKE, message, version=self.shape.hello_record_version)

    def handshake(self) -> None:
        """A full PSK handshake; raises :class:`AlertReceived` if the server sends an alert."""
        self.hello()
        self.server_flight()
        self.key_exchange()
        self.finish()

    def server_flight(self) -> None:
        """ServerHello up to ServerHelloDone."""
        while True:
            msg_type, body, message = self._next_handshake()
            self._transcript += message
            if msg_type == SERVER_HELLO:
                self._server_random = body[2:34]
                rest = body[34 + 1 + body[34] :]
                self.cipher_suite = int.from_bytes(rest[:2], "big")
                extensions = rest[3 + 2 :] if len(rest) > 3 else b""
                while len(extensions) >= 4:
                    ext_type, size = struct.unpack(">HH", extensions[:4])
                    self.server_extensions.append(ext_type)
                    extensions = extensions[4 + size :]
            elif msg_type == SERVER_HELLO_DONE:
                return

    def key_exchange(self) -> None:
        """ClientKeyExchange (the PSK identity); derives the keys."""
        client_random, server_random = self._client_random, self._server_random
        identity = struct.pack(">H", len(self.identity)) + self.identity
        self.send_record(HANDSHAKE, self._handshake_message(CLIENT_KEY_EXCHANGE, identity))
        size = len(self.key)
        premaster = struct.pack(">H", size) + bytes(size) + struct.pack(">H", size) + self.key
        if EXTENDED_MASTER_SECRET in self.shape.extensions:
            session_hash = hashlib.sha256(self._transcript).digest()
            master = prf(premaster, b"extended master secret", session_hash, 48)
        else:
            master = prf(premaster, b"master secret", client_random + server_random, 48)
        block = prf(master, b"key expansion", server_random + client_random, 40)
        self._keys = (block[:16], block[16:32], block[32:36], block[36:40])
        self._master = master

    def finish(self) -> None:
        """ChangeCipherSpec and Finished; checks the server's Finished."""
        master = self._master
        self.send_record(CHANGE_CIPHER_SPEC, b"\x01")
        verify = prf(master, b"client finished", hashlib.sha256(self._transcript).digest(), 12)
        self.send_record(HANDSHAKE, self._handshake_message(FINISHED, verify), epoch=1)
        expected = prf(master, b"server finished", hashlib.sha256(self._transcript).digest(), 12)
        msg_type, body, _ = self._next_handshake()
        assert (msg_type, body) == (FINISHED, expected), "server Finished does not verify"

    def exchange(self, payload: bytes) -> bytes:
        """Send ``payload`` as application data; the first application data that comes back."""
        self.send_record(APPLICATION_DATA, payload, epoch=1)
        while True:
            for content_type, epoch, sequence, fragment in self._receive():
                if content_type == APPLICATION_DATA and epoch == 1:
                    return self._decrypt(content_type, epoch, sequence, fragment)

    def receive_application_data(self) -> list[bytes]:
        """The application data of the next datagram(s) from the server (decrypted)."""
        return [
            self._decrypt(content_type, epoch, sequence, fragment)
            for content_type, epoch, sequence, fragment in self._receive()
            if content_type == APPLICATION_DATA and epoch == 1
        ]

    def retransmit_last_record(self) -> None:
        """Send the last record again, as a client whose retransmission timer fired does (the
        same message under the next record sequence number)."""
        assert self._last_sent is not None
        content_type, fragment, epoch, version = self._last_sent
        self.send_record(content_type, fragment, epoch=epoch, version=version)

    def drain(self, quiet: float = 0.3) -> int:
        """Read and drop what the server sent until it is quiet for ``quiet`` s; how many
        datagrams."""
        count = 0
        self.sock.settimeout(quiet)
        try:
            while True:
                self.sock.recv(65536)
                count += 1
        except TimeoutError:
            return count
        finally:
            self.sock.settimeout(self.timeout)

    def retransmit_flight(self) -> None:
        """Send the current flight again (each record under its next sequence number)."""
        flight = list(self._flight)
        self._flight, self._received_since_send = [], False
        for content_type, fragment, epoch, version in flight:
            self.send_record(content_type, fragment, epoch=epoch, version=version)

    def receive_content_types(self) -> list[int]:
        """The content types of the records in the server's next datagram."""
        return [content_type for content_type, *_ in self._receive()]
