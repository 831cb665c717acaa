"""DTLS with per-device pre-shared keys for the gateway: the key cache and the coaps listener.

Transport: aiocoap's tinydtls server (``aiocoap.transports.tinydtls_server``, marked experimental
upstream) on the ``DTLSSocket`` binding of tinydtls, which negotiates TLS_PSK_WITH_AES_128_CCM_8
(the cipher suite LwM2M mandates for PSK mode) or TLS_PSK_WITH_AES_128_CCM. We do not use it as
aiocoap configures it; this module subclasses it to fix what a gateway needs
(docs/architecture.md, "DTLS"):

* tinydtls is told not to require the secure-renegotiation signal (RFC 5746) in a ClientHello:
  tinydtls clients older than 2023 (Wakaama's) do not send it, and were refused with a fatal
  handshake_failure (see "tinydtls's handshake parameters" below);

* it binds exactly the configured port (aiocoap adds 1 to the port it is given, so port 0
  became port 1) without ``SO_REUSEPORT`` (a second gateway on the same port fails loudly);
* the gateway can send requests over a device's session (aiocoap's server transport did not
  recognise its own session objects as remotes, so server-initiated reads would have failed);
* a ClientHello without a cookie is answered by one stateless verifier context (RFC 6347
  4.2.1) and only a ClientHello echoing a cookie made for its address opens a session (each
  session's context takes the verifier's cookie secret), sessions are capped (least recently
  active dropped first), and a handshake is dropped once its peer has been silent for the
  handshake timeout (or after four of them);
* every tinydtls context counts from one clock origin (see "tinydtls's clock"), and a client
  flight that comes again is answered with the flight sent for it, not handed to tinydtls
  (which would start the handshake over);
* a handshake that fails is logged (WARNING, escaped, at most a few lines per kind and 10 s)
  with the alert sent or received and why, read off the wire because tinydtls reports little:
  the reason tinydtls refused a ClientHello (from the ClientHello itself), the alert it returned
  or wrote, a Finished that failed authentication (a wrong key: tinydtls drops that record
  without an alert, so it shows as silence after the peer's ChangeCipherSpec), an alert from the
  peer; a handshake that merely stalls is dropped after the timeout with what was last seen;
* the peer closing the session (close_notify) or a fatal alert removes the session.

Invariants the gateway relies on:

* :func:`peer_identity` returns the PSK identity only once the handshake has completed with the
  key stored for that identity; requests never arrive before that (tinydtls passes application
  data only on an established session), and one session never changes identity.
* Keys are looked up synchronously in tinydtls's handshake callback on the event loop, so they
  come from :class:`PSKCache`, an in-memory map rebuilt off the loop (on a thread: query and
  decryption) and swapped in on the loop. It is loaded before the listener opens, refreshed
  every ``refresh_seconds``, and early (at most every ``miss_refresh_seconds``) after a handshake
  names an unknown identity or fails for a known one (a device provisioned or a key rotated since
  the last refresh gets in at its next attempt).
* tinydtls limits: a PSK of at most 16 bytes (it copies the key into a 16-byte buffer, and
  DTLSSocket does not check the length, so a longer key is refused here, never handed over) and
  an identity of at most 32 bytes (tinydtls refuses a longer one itself).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from campaigns.psk import MAX_IDENTITY_BYTES, MAX_PSK_BYTES, PSKError, decrypt_psk
from workers.lwm2m import logsafe
from workers.lwm2m.errors import LwM2MError
from workers.lwm2m.logsafe import RateLimiter

log = logsafe.guard(logging.getLogger("workers.lwm2m.dtls"))

# Bytes of a hostile identity shown in a log line.
_LOG_IDENTITY_CHARS = 40

# DTLS record content type of a handshake message (RFC 6347 4.1): only these open a session.
_HANDSHAKE_RECORD = 22
_RECORD_HEADER_BYTES = 13


class DTLSError(LwM2MError):
    """Base of the refusals that come from DTLS security (identity binding, NoSec policy)."""

    code = "lwm2m.dtls"
    coap_code = "FORBIDDEN"


class IdentityMismatchError(DTLSError):
    """The authenticated DTLS identity (or its absence) does not own this endpoint/registration."""

    code = "lwm2m.identity_mismatch"


class NoSecRefusedError(DTLSError):
    """A plain-CoAP (NoSec) registration while the gateway accepts DTLS registrations only."""

    code = "lwm2m.nosec_refused"


class DTLSUnavailableError(LwM2MError):
    """DTLS is configured but cannot run here (binding missing or bad listener address)."""

    code = "lwm2m.dtls_unavailable"


def dtls_missing() -> str | None:
    """Why the DTLS transport cannot load here, or None when it can."""
    try:
        from aiocoap.transports import tinydtls_server  # noqa: F401
        from DTLSSocket import dtls  # noqa: F401
    except ImportError as exc:
        return (
            f"{exc}: install DTLSSocket (requirements.txt; building it needs Debian's autoconf, "
            "automake and libtool: scripts/install-system-deps.sh)"
        )
    return None


def _shown(identity: bytes | str) -> str:
    text = identity if isinstance(identity, str) else identity.decode("utf-8", "replace")
    return repr(text[:_LOG_IDENTITY_CHARS])


# --- the key cache --------------------------------------------------------------------------------


class PSKSource(Protocol):
    """Where the encrypted keys live (the database in production, a dict in unit tests)."""

    def tokens(self) -> dict[str, bytes]:
        """Every identity with its encrypted key (a Fernet token, :mod:`campaigns.psk`)."""

    def secret(self) -> str:
        """The deployment secret the tokens are encrypted under."""


class DjangoPSKSource:
    """``DevicePSK`` rows and their secret, through ``campaigns.device_services``."""

    def tokens(self) -> dict[str, bytes]:
        from campaigns.device_services import psk_tokens

        return psk_tokens()

    def secret(self) -> str:
        from campaigns.device_services import psk_secret

        return psk_secret()


@dataclass(frozen=True)
class _Entry:
    token: bytes
    key: bytes


class PSKCache:
    """Identity -> PSK in memory, for tinydtls's synchronous key lookup on the event loop.

    :meth:`build` runs on a worker thread (database query, decryption of changed rows only) and
    returns a new map; :meth:`install` swaps it in on the loop. The map is never mutated in
    place, so a lookup always sees one consistent snapshot.
    """

    def __init__(
        self,
        source: PSKSource,
        *,
        refresh_seconds: float = 60.0,
        miss_refresh_seconds: float = 2.0,
    ) -> None:
        self.source = source
        self.refresh_seconds = refresh_seconds
        self.miss_refresh_seconds = miss_refresh_seconds
        self._entries: Mapping[str, _Entry] = {}
        self._refused: frozenset[str] = frozenset()
        self._early = asyncio.Event()
        self.loaded_at: float | None = None
        self.refreshes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def has(self, identity: str) -> bool:
        """Whether a key is provisioned for ``identity`` (usable or not)."""
        return identity in self._entries or identity in self._refused

    def key(self, identity: bytes) -> bytes | None:
        """The PSK for a DTLS identity, or None; a miss asks for an early refresh."""
        try:
            name = identity.decode("utf-8")
        except UnicodeDecodeError:
            return None
        entry = self._entries.get(name)
        if entry is None:
            self.request_refresh()
            return None
        return entry.key

    def request_refresh(self) -> None:
        """Refresh soon (debounced to ``miss_refresh_seconds``); call on the loop's thread."""
        self._early.set()

    def build(self) -> tuple[dict[str, _Entry], frozenset[str]]:
        """Read and decrypt (blocking: run it on a worker thread, never on the loop)."""
        tokens = self.source.tokens()
        current = self._entries
        secret: str | None = None
        entries: dict[str, _Entry] = {}
        refused: set[str] = set()
        for identity, token in tokens.items():
            old = current.get(identity)
            if old is not None and old.token == token:
                entries[identity] = old
                continue
            if len(identity.encode("utf-8")) > MAX_IDENTITY_BYTES:
                log.error(
                    "PSK identity %s is longer than %d bytes (tinydtls's limit): refused",
                    _shown(identity),
                    MAX_IDENTITY_BYTES,
                )
                refused.add(identity)
                continue
            if secret is None:
                secret = self.source.secret()
            try:
                key = decrypt_psk(token, secret=secret)
            except PSKError as exc:
                log.error("PSK of %s refused: %s", _shown(identity), exc)
                refused.add(identity)
                continue
            if len(key) > MAX_PSK_BYTES:
                log.error(
                    "PSK of %s is %d bytes; tinydtls takes at most %d: refused until rotated",
                    _shown(identity),
                    len(key),
                    MAX_PSK_BYTES,
                )
                refused.add(identity)
                continue
            entries[identity] = _Entry(token, key)
        return entries, frozenset(refused)

    def install(self, built: tuple[dict[str, _Entry], frozenset[str]]) -> None:
        entries, refused = built
        added = len(entries.keys() - self._entries.keys())
        removed = len(self._entries.keys() - entries.keys())
        self._entries, self._refused = entries, refused
        self.loaded_at = time.monotonic()
        self.refreshes += 1
        if added or removed or refused:
            log.info(
                "PSK cache: %d identities (%d new, %d removed, %d refused)",
                len(entries),
                added,
                removed,
                len(refused),
            )

    async def refresh(self, run: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
        """One refresh; ``run`` executes a blocking callable off the loop (an executor)."""
        self._early.clear()
        self.install(await run(self.build))

    async def run_forever(self, run: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
        """Refresh every ``refresh_seconds``, or early when asked; failures keep the old map."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._early.wait(), timeout=self.refresh_seconds)
            if self._early.is_set() and self.loaded_at is not None:
                # Debounce: a stream of unknown identities costs one reload per interval.
                wait = self.loaded_at + self.miss_refresh_seconds - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                await self.refresh(run)
            except Exception:
                log.exception("PSK cache refresh failed; keeping the previous keys")
                self._early.clear()


# --- what the gateway reads of DTLS records -------------------------------------------------------
#
# Pure functions over datagrams (hostile input: any bytes give an answer, never an exception).
# The gateway reads record headers in both directions and, in epoch 0 where they are plaintext,
# alerts and handshake messages: tinydtls reports only some of what goes wrong (a ClientHello it
# refuses returns 0 from dtls_handle_message; an alert it sends there is never announced; a
# record that fails authentication is dropped without a word), so the log line is built from
# what was on the wire.

ALERT_LEVELS = {1: "warning", 2: "fatal"}
ALERT_DESCRIPTIONS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    30: "decompression_failure",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    110: "unsupported_extension",
    115: "unknown_psk_identity",
}
FATAL = 2
CLOSE_NOTIFY = 0
BAD_RECORD_MAC = 20
DECRYPT_ERROR = 51
INTERNAL_ERROR = 80

_CHANGE_CIPHER_SPEC, _ALERT, _APPLICATION_DATA = 20, 21, 23
_CONTENT_TYPES = {
    _CHANGE_CIPHER_SPEC: "ChangeCipherSpec",
    _ALERT: "alert",
    _HANDSHAKE_RECORD: "handshake",
    _APPLICATION_DATA: "application data",
}
_CLIENT_HELLO = 1
_CLIENT_KEY_EXCHANGE = 16
_HANDSHAKE_HEADER_BYTES = 12
_HANDSHAKE_TYPES = {
    0: "HelloRequest",
    _CLIENT_HELLO: "ClientHello",
    2: "ServerHello",
    3: "HelloVerifyRequest",
    11: "Certificate",
    12: "ServerKeyExchange",
    13: "CertificateRequest",
    14: "ServerHelloDone",
    15: "CertificateVerify",
    16: "ClientKeyExchange",
    20: "Finished",
}
_CIPHER_SUITES = {
    0xC0A8: "TLS_PSK_WITH_AES_128_CCM_8",
    0xC0A4: "TLS_PSK_WITH_AES_128_CCM",
    0xC0AE: "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
    0xC0AC: "TLS_ECDHE_ECDSA_WITH_AES_128_CCM",
    0x00A8: "TLS_PSK_WITH_AES_128_GCM_SHA256",
    0x00AE: "TLS_PSK_WITH_AES_128_CBC_SHA256",
    0x008C: "TLS_PSK_WITH_AES_128_CBC_SHA",
    0xC0A5: "TLS_PSK_WITH_AES_256_CCM",
    0xC0AA: "TLS_PSK_DHE_WITH_AES_128_CCM_8",
    0xCCAB: "TLS_PSK_WITH_CHACHA20_POLY1305_SHA256",
    0xC037: "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256",
    0x00FF: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
}
_EXTENSIONS = {
    0: "server_name",
    1: "max_fragment_length",
    5: "status_request",
    10: "supported_groups",
    11: "ec_point_formats",
    13: "signature_algorithms",
    16: "application_layer_protocol_negotiation",
    19: "client_certificate_type",
    20: "server_certificate_type",
    21: "padding",
    22: "encrypt_then_mac",
    23: "extended_master_secret",
    35: "session_ticket",
    53: "connection_id (draft)",
    54: "connection_id",
    0xFF01: "renegotiation_info",
}
# The PSK suites the listener's tinydtls negotiates (it has no ECDSA key, so its ECDHE_ECDSA
# suites are never chosen); it takes the first of the client's list that is among them.
ACCEPTED_SUITES = (0xC0A8, 0xC0A4)
_EXTENDED_MASTER_SECRET = 23
_RENEGOTIATION_INFO = 0xFF01
_SCSV = 0x00FF
# Datagram records described in a log line (a datagram of many tiny records is hostile).
_MAX_RECORDS = 8


def alert_name(level: int, description: int) -> str:
    """``fatal alert handshake_failure (40)``."""
    return (
        f"{ALERT_LEVELS.get(level, f'level-{level}')} alert "
        f"{ALERT_DESCRIPTIONS.get(description, 'unknown')} ({description})"
    )


def alert_of_result(result: int) -> tuple[int, int] | None:
    """The alert tinydtls sent when ``dtls_handle_message`` returned ``result`` (its errors are
    ``-(level << 8 | description)``; a bare -1 makes it send a fatal internal_error)."""
    if result == -1:
        return FATAL, INTERNAL_ERROR
    if -(3 << 8) < result < -(1 << 8):
        return (-result) >> 8, (-result) & 0xFF
    return None


@dataclass(frozen=True)
class Record:
    """One DTLS record as seen on the wire; ``fragment`` is ciphertext from epoch 1 on."""

    content_type: int
    epoch: int
    fragment: bytes

    @property
    def plaintext(self) -> bool:
        return self.epoch == 0

    @property
    def alert(self) -> tuple[int, int] | None:
        if self.content_type == _ALERT and self.plaintext and len(self.fragment) >= 2:
            return self.fragment[0], self.fragment[1]
        return None

    @property
    def handshake_type(self) -> int | None:
        if (
            self.content_type == _HANDSHAKE_RECORD
            and self.plaintext
            and len(self.fragment) >= _HANDSHAKE_HEADER_BYTES
        ):
            return self.fragment[0]
        return None

    def describe(self) -> str:
        kind = _CONTENT_TYPES.get(self.content_type, f"record type {self.content_type}")
        if not self.plaintext:
            return f"encrypted {kind} (epoch {self.epoch})"
        if self.alert is not None:
            return alert_name(*self.alert)
        if self.handshake_type is not None:
            kind = f"handshake type {self.handshake_type}"
            name = _HANDSHAKE_TYPES.get(self.handshake_type, kind)
            if self.handshake_type == _CLIENT_HELLO:
                hello = parse_client_hello(self.fragment)
                if hello is not None:
                    return f"{name} {'with' if hello.cookie else 'without'} cookie"
            return name
        return kind


def psk_identity(record: Record) -> bytes | None:
    """The PSK identity a plaintext ClientKeyExchange names (RFC 4279 2), else None."""
    if record.handshake_type != _CLIENT_KEY_EXCHANGE:
        return None
    body = record.fragment[_HANDSHAKE_HEADER_BYTES:]
    size = int.from_bytes(body[:2], "big")
    return bytes(body[2 : 2 + size]) if len(body) >= 2 + size else None


def read_records(datagram: bytes) -> list[Record]:
    """The records of a datagram (at most a few; a truncated last record is left out)."""
    out: list[Record] = []
    while len(datagram) >= _RECORD_HEADER_BYTES and len(out) < _MAX_RECORDS:
        length = int.from_bytes(datagram[11:13], "big")
        end = _RECORD_HEADER_BYTES + length
        if len(datagram) < end:
            break
        out.append(Record(datagram[0], int.from_bytes(datagram[3:5], "big"), datagram[13:end]))
        datagram = datagram[end:]
    return out


_HELLO_VERIFY_REQUEST = 3


def _hello_has_cookie(datagram: bytes) -> bool:
    """Whether the ClientHello a datagram starts with carries a cookie (else it is answered
    statelessly with a HelloVerifyRequest: RFC 6347 4.2.1)."""
    records = read_records(datagram)
    if not records or records[0].handshake_type != _CLIENT_HELLO:
        return False
    hello = parse_client_hello(records[0].fragment)
    return hello is not None and bool(hello.cookie)


def _sends_hello_verify(datagrams: list[bytes]) -> bool:
    return any(
        r.handshake_type == _HELLO_VERIFY_REQUEST for d in datagrams for r in read_records(d)
    )


def _opens_session(datagram: bytes) -> bool:
    """Whether a datagram from an address without a session may open one: its first record is
    a plaintext ClientHello."""
    return (
        len(datagram) > _RECORD_HEADER_BYTES
        and datagram[0] == _HANDSHAKE_RECORD
        and datagram[3:5] == b"\x00\x00"
        and datagram[_RECORD_HEADER_BYTES] == _CLIENT_HELLO
    )


# A handshake whose peer keeps sending is given this many handshake timeouts in all.
HANDSHAKE_TIMEOUTS_WHILE_ACTIVE = 4


def _handshake_expired(session: Any, *, now: float, timeout: float) -> bool:
    """A handshake is dropped once its peer has been silent for ``timeout`` seconds, or it has
    run ``HANDSHAKE_TIMEOUTS_WHILE_ACTIVE`` times that long: in a burst a gateway's answers
    come late, and a peer still retransmitting is still shaking hands."""
    return (
        now - session.last_in_at >= timeout
        or now - session.started >= timeout * HANDSHAKE_TIMEOUTS_WHILE_ACTIVE
    )


def _client_flight(records: list[Record]) -> tuple[bytes, ...] | None:
    """What identifies a client's flight across its retransmissions: the plaintext handshake
    messages of a datagram with a ClientHello carrying a cookie, or with a ClientKeyExchange
    (the record headers differ between retransmissions, these messages do not); else None."""
    messages = tuple(r.fragment for r in records if r.handshake_type is not None)
    kinds = {m[0] for m in messages}
    if _CLIENT_KEY_EXCHANGE in kinds:
        return messages
    for message in messages:
        if message[0] == _CLIENT_HELLO:
            hello = parse_client_hello(message)
            if hello is not None and hello.cookie:
                return messages
    return None


_DTLS_1_0 = b"\xfe\xff"
_DTLS_1_2 = b"\xfe\xfd"


def normalise_hello_record_version(datagram: bytes) -> bytes:
    """The datagram with the record-layer version of each epoch-0 ClientHello record that says
    {254, x} other than DTLS 1.0 or 1.2 set to DTLS 1.2; anything else unchanged.

    Why: a client may put any {254, x} there before the version is negotiated (RFC 6347 4.1,
    after TLS 1.2's E.1: servers accept any such value), and Anjay over mbed TLS 2.28 sends
    ``fe 00`` (its lowest allowed version); tinydtls drops a record whose version is neither
    DTLS 1.0 nor 1.2 without a word, so such a client never got a HelloVerifyRequest. Safe:
    the record header is in no handshake hash or cookie, and the ClientHello's own
    client_version (what the version is negotiated from) is left as sent.
    """
    out = bytearray(datagram)
    at = 0
    for _ in range(_MAX_RECORDS):
        if len(out) - at < _RECORD_HEADER_BYTES:
            break
        length = int.from_bytes(out[at + 11 : at + 13], "big")
        if (
            out[at] == _HANDSHAKE_RECORD
            and out[at + 1] == 0xFE
            and bytes(out[at + 1 : at + 3]) not in (_DTLS_1_0, _DTLS_1_2)
            and out[at + 3 : at + 5] == b"\x00\x00"  # epoch 0
            and length >= 1
            and len(out) > at + _RECORD_HEADER_BYTES
            and out[at + _RECORD_HEADER_BYTES] == _CLIENT_HELLO
        ):
            out[at + 1 : at + 3] = _DTLS_1_2
        at += _RECORD_HEADER_BYTES + length
    return bytes(out)


def describe_records(records: list[Record]) -> str:
    return " + ".join(r.describe() for r in records) if records else "no DTLS record"


@dataclass(frozen=True)
class ClientHello:
    """The fields of a ClientHello that decide whether the gateway's tinydtls takes it."""

    cookie: bytes
    suites: tuple[int, ...]
    compression: bytes
    # None: the ClientHello ends before an extensions block; malformed: it does not parse.
    extensions: tuple[tuple[int, bytes], ...] | None
    malformed_extensions: bool = False

    def has(self, extension: int) -> bool:
        return any(kind == extension for kind, _ in self.extensions or ())

    def describe(self) -> str:
        suites = ", ".join(_CIPHER_SUITES.get(s, f"0x{s:04x}") for s in self.suites) or "none"
        if self.malformed_extensions:
            extensions = "malformed"
        else:
            extensions = (
                ", ".join(_EXTENSIONS.get(k, str(k)) for k, _ in self.extensions or ()) or "none"
            )
        return f"cipher suites [{suites}], extensions [{extensions}]"


def parse_client_hello(fragment: bytes) -> ClientHello | None:
    """A ClientHello handshake message (12-byte DTLS header first), or None if it is not one."""
    if len(fragment) < _HANDSHAKE_HEADER_BYTES or fragment[0] != _CLIENT_HELLO:
        return None
    body = fragment[_HANDSHAKE_HEADER_BYTES:]
    at = 2 + 32  # client_version, random
    try:
        at += 1 + body[at]  # session_id
        cookie = body[at + 1 : at + 1 + body[at]]
        at += 1 + body[at]
        size = int.from_bytes(body[at : at + 2], "big")
        raw = body[at + 2 : at + 2 + size]
        at += 2 + size
        compression = body[at + 1 : at + 1 + body[at]]
        at += 1 + body[at]
    except IndexError:
        return None
    if len(raw) != size or size % 2 or at > len(body):
        return None
    suites = tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, size, 2))
    if at >= len(body):
        return ClientHello(bytes(cookie), suites, bytes(compression), None)
    declared = int.from_bytes(body[at : at + 2], "big")
    block = body[at + 2 : at + 2 + declared]
    extensions: list[tuple[int, bytes]] = []
    while len(block) >= 4:
        kind, length = int.from_bytes(block[:2], "big"), int.from_bytes(block[2:4], "big")
        if len(block) < 4 + length:
            break
        extensions.append((kind, bytes(block[4 : 4 + length])))
        block = block[4 + length :]
    malformed = bool(block) or len(body) < at + 2 + declared
    return ClientHello(bytes(cookie), suites, bytes(compression), tuple(extensions), malformed)


def _list_has(data: bytes, width: int, prefix: int, wanted: bytes) -> bool | None:
    """Whether a length-prefixed list of ``width``-byte items contains ``wanted``; None when
    the list's length does not match the extension's (tinydtls refuses that too)."""
    if len(data) < prefix or int.from_bytes(data[:prefix], "big") != len(data) - prefix:
        return None
    items = data[prefix:]
    return any(items[i : i + width] == wanted for i in range(0, len(items) - width + 1, width))


# Extensions tinydtls checks in every ClientHello, PSK or not (dtls_check_tls_extension): the
# list must be well formed and contain the one value tinydtls implements.
_CHECKED_EXTENSIONS = {
    10: (2, 2, b"\x00\x17", "secp256r1"),
    11: (1, 1, b"\x00", "the uncompressed point format"),
    13: (2, 2, b"\x04\x03", "sha256 with ecdsa"),
    19: (1, 1, b"\x02", "raw public keys"),
    20: (1, 1, b"\x02", "raw public keys"),
}


def hello_refusal(hello: ClientHello) -> str | None:
    """Why the gateway's tinydtls refuses this ClientHello with handshake_failure (its
    dtls_update_parameters and dtls_check_tls_extension, as configured here), or None."""
    if not any(s in ACCEPTED_SUITES for s in hello.suites):
        accepted = " or ".join(_CIPHER_SUITES[s] for s in ACCEPTED_SUITES)
        return f"it offers no cipher suite the gateway negotiates ({accepted})"
    if 0 not in hello.compression:
        return "it does not offer null compression"
    if hello.malformed_extensions:
        return "its extensions block does not parse"
    for kind, data in hello.extensions or ():
        checked = _CHECKED_EXTENSIONS.get(kind)
        if checked is not None:
            width, prefix, wanted, what = checked
            if not _list_has(data, width, prefix, wanted):
                return (
                    f"its {_EXTENSIONS[kind]} extension does not list {what}, which tinydtls "
                    "requires whenever the extension is present, even for a PSK suite"
                )
        if kind == _RENEGOTIATION_INFO and data != b"\x00":
            return "its renegotiation_info is not empty (the gateway never renegotiates)"
    if not hello.has(_EXTENDED_MASTER_SECRET):
        return (
            "it sends no extended_master_secret extension (RFC 7627), which the gateway "
            "requires (every tinydtls client since 2020 sends it)"
        )
    return None


# --- tinydtls's handshake parameters --------------------------------------------------------------
#
# DTLSSocket 0.2.3 bundles a tinydtls (0.8.6 + RFC 5746, 2023) whose server refuses, with a
# fatal handshake_failure, every ClientHello that does not signal secure renegotiation
# (neither the renegotiation_info extension nor the TLS_EMPTY_RENEGOTIATION_INFO_SCSV suite):
# its ``default_user_parameters`` set ``force_renegotiation_info`` and only a
# ``get_user_parameters`` handler may clear it, a handler DTLSSocket leaves empty. tinydtls
# clients older than that change (Wakaama's pinned tinydtls 86f23c6, Dec 2022, among them) send
# neither, so they could not connect. We fill in that handler. Not requiring the signal is safe
# here: RFC 5746 protects a connection that is renegotiated, and tinydtls never renegotiates
# (a ClientHello on an established session starts a new, separate one). The extended master
# secret (RFC 7627) stays required: every tinydtls client since mid-2020 sends it.
#
# DTLSSocket offers no way to set that handler, so it is written into the handler table that
# DTLSSocket embeds in each ``dtls.DTLS`` object. The layout is checked before anything is
# written (the context's ``app`` must point back at the object, its ``h`` at the table inside
# it, the four handlers DTLSSocket sets must be set and the slot in between empty); a DTLSSocket
# that differs refuses to open the listener instead of being patched blindly.

# struct __pyx_obj_DTLS: PyObject_HEAD (16 bytes), dtls_context_t *ctx, dtls_handler_t cb (7
# function pointers), pycb, pskId, pskStore: 104 bytes on a 64-bit CPython.
_DTLSSOCKET_VERSION = "0.2.3"
_OBJ_SIZE = 104
_OBJ_CTX = 16
_OBJ_HANDLER = 24
# dtls_context_t: cookie_secret[12], cookie_secret_age (uint32), peers, sendqueue, app, h
_CTX_APP = 32
_CTX_HANDLER = 40
# dtls_handler_t: write, read, event, get_user_parameters, get_psk_info, ...
_HANDLER_SLOTS = {"write": 0, "read": 8, "event": 16, "get_psk_info": 32}
_HANDLER_USER_PARAMETERS = 24
# dtls_user_parameters_t: cipher_suites[DTLS_MAX_CIPHER_SUITES + 1], then two one-bit flags.
_MAX_CIPHER_SUITES = 4


class _UserParameters(ctypes.Structure):
    _fields_ = [
        ("cipher_suites", ctypes.c_int * (_MAX_CIPHER_SUITES + 1)),
        ("force_extended_master_secret", ctypes.c_uint, 1),
        ("force_renegotiation_info", ctypes.c_uint, 1),
    ]


_USER_PARAMETERS_HANDLER = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(_UserParameters)
)


def _set_user_parameters(_ctx: int, _session: int, parameters: Any) -> None:
    """tinydtls's ``get_user_parameters``: called with a copy of its defaults per ClientHello."""
    parameters.contents.force_renegotiation_info = 0


# Kept for the life of the process: tinydtls holds the raw function pointer.
_user_parameters_handler = _USER_PARAMETERS_HANDLER(_set_user_parameters)
_USER_PARAMETERS_ADDRESS = ctypes.cast(_user_parameters_handler, ctypes.c_void_p).value


def _pointer_at(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


# The start of tinydtls's dtls_context_t: cookie_secret[12] and cookie_secret_age (a 32-bit
# clock_time_t in this build), then the peers pointer at 16 (the layout configure_tinydtls
# checks ends with app at 32 and the handler table at 40).
_CTX_COOKIE_SECRET_BYTES = 16


def share_cookie_secret(source: Any, target: Any) -> None:
    """Give ``target`` the HelloVerifyRequest cookie secret (and its age) of ``source``, so a
    cookie ``source`` sent verifies in ``target``. Both must have been through
    :func:`configure_tinydtls` (which checks the layout this relies on)."""
    source_ctx = _pointer_at(id(source) + _OBJ_CTX)
    target_ctx = _pointer_at(id(target) + _OBJ_CTX)
    if not source_ctx or not target_ctx:
        raise DTLSUnavailableError("a tinydtls context is missing")
    ctypes.memmove(target_ctx, source_ctx, _CTX_COOKIE_SECRET_BYTES)


def tinydtls_session(sockaddr: Any) -> Any:
    """The tinydtls session for a peer's address: its cookie is computed over this address, so
    a cookie fetched from one address does not open a session from another."""
    from DTLSSocket import dtls

    host, port = str(sockaddr[0]), int(sockaddr[1])
    if ":" not in host:
        host = "::ffff:" + host  # DTLSSocket takes IPv6 text only
    return dtls.Session(host, port)


@functools.cache
def _dtlssocket_version() -> str:
    from importlib.metadata import version

    return version("DTLSSocket")


def configure_tinydtls(dtls_socket: Any) -> None:
    """Install the gateway's handshake parameters in one ``DTLSSocket.dtls.DTLS`` context (see
    above); raise :class:`DTLSUnavailableError` if its memory layout is not the one checked."""
    kind = type(dtls_socket)
    base = id(dtls_socket)
    handler = base + _OBJ_HANDLER
    problems = []
    # Only then is it safe to follow the pointer at _OBJ_CTX.
    if (kind.__module__, kind.__qualname__) != ("DTLSSocket.dtls", "DTLS"):
        problems.append(f"it is a {kind.__module__}.{kind.__qualname__}")
    elif (found := _dtlssocket_version()) != _DTLSSOCKET_VERSION:
        problems.append(f"DTLSSocket {found} is installed")
    elif kind.__basicsize__ != _OBJ_SIZE or ctypes.sizeof(ctypes.c_void_p) != 8:
        problems.append(f"the object is {kind.__basicsize__} bytes, not {_OBJ_SIZE}")
    elif not (context := _pointer_at(base + _OBJ_CTX)) or _pointer_at(context + _CTX_APP) != base:
        problems.append("its tinydtls context does not point back at it")
    elif _pointer_at(context + _CTX_HANDLER) != handler:
        problems.append("its handler table is not where DTLSSocket 0.2.3 keeps it")
    else:
        problems.extend(
            f"handler {name} is not set"
            for name, offset in _HANDLER_SLOTS.items()
            if not _pointer_at(handler + offset)
        )
        current = _pointer_at(handler + _HANDLER_USER_PARAMETERS)
        if current not in (0, _USER_PARAMETERS_ADDRESS):
            problems.append("get_user_parameters is already set")
    if problems:
        raise DTLSUnavailableError(
            "cannot configure tinydtls's handshake: the DTLS object is not DTLSSocket "
            f"{_DTLSSOCKET_VERSION}'s as checked (" + "; ".join(problems) + "); requirements.txt "
            "pins that version"
        )
    ctypes.c_void_p.from_address(
        handler + _HANDLER_USER_PARAMETERS
    ).value = _USER_PARAMETERS_ADDRESS


# --- the coaps listener ---------------------------------------------------------------------------


def peer_identity(remote: Any) -> str | None:
    """The authenticated PSK identity of a request's or response's sender; None for NoSec."""
    if isinstance(remote, _session_class()):
        identity: str | None = remote.authenticated_identity
        return identity
    return None


def session_closed(remote: Any) -> bool:
    """Whether ``remote`` is a DTLS session that has ended (the device must reconnect)."""
    return isinstance(remote, _session_class()) and bool(remote.closed)


_classes: dict[str, type] = {}


# --- tinydtls's clock ----------------------------------------------------------------------------
#
# tinydtls keeps time in 32-bit millisecond ticks from an origin, ``dtls_clock_offset`` (a
# process-wide C global, whole seconds of the wall clock), and stores each retransmission
# deadline as an absolute tick count. DTLSSocket calls ``dtls_init`` in every ``DTLS()``
# constructor, and ``dtls_init`` moves the origin to the current second. A deadline set before
# the move then lies in the future by however far the origin moved, and while new contexts keep
# appearing (a burst of devices: one context per session) tick counts never reach any deadline:
# retransmissions did not happen at all, a handshake whose flight was lost stalled until the
# handshake timeout, and a burst of 1,000 devices did not all get in within 2 minutes (806 did;
# benchmarks/bench_dtls.py). Every context here is therefore created by :func:`new_context`,
# which puts the origin back where it was: one origin for the life of the process, so every
# deadline is on one clock and :func:`_run_retransmissions` can sleep until it.
#
# The ticks wrap after 2**32 ms (49.7 days); the origin moves forward once the process has run
# for half of that (:data:`_ORIGIN_MAX_AGE_S`), between two context creations. Deadlines pending at
# that moment lie in the far future and never fire: a handshake in flight then is dropped by the
# handshake timeout and the device handshakes again, once in 24.8 days.

_TICKS_PER_SECOND = 1000  # DTLS_TICKS_PER_SECOND of DTLSSocket's tinydtls build (posix)
_ORIGIN_MAX_AGE_S = 2**31 // _TICKS_PER_SECOND
# Bounds on a sleep until tinydtls's next retransmission deadline (this build retransmits a
# flight first after 2 s, then doubles the wait). A deadline more than twice the upper bound
# away is read as one just passed (the 32-bit difference wrapped): asked again soon.
_RETRANSMIT_MIN_SLEEP_S = 0.005
_RETRANSMIT_MAX_SLEEP_S = 60.0
_clock: dict[str, Any] = {}


def _clock_offset() -> Any:
    """tinydtls's ``time_t dtls_clock_offset`` in the loaded DTLSSocket module (a ctypes view)."""
    if "offset" not in _clock:
        from DTLSSocket import dtls

        # dlopen of the already loaded module returns its handle: the very variable it uses.
        library = ctypes.CDLL(dtls.__file__)
        _clock["offset"] = ctypes.c_int64.in_dll(library, "dtls_clock_offset")
        _clock["ticks"] = library.dtls_ticks
    return _clock["offset"]


def clock_origin() -> int:
    """The origin every tinydtls context of this process counts its ticks from (seconds since
    the epoch); chosen at the first context, moved only when the ticks would wrap."""
    now = int(time.time())
    origin = _clock.get("origin")
    if origin is None or now - origin >= _ORIGIN_MAX_AGE_S:
        origin = _clock["origin"] = now
    return int(origin)


def tinydtls_ticks() -> int:
    """tinydtls's own ``dtls_ticks()``: the time on the clock its deadlines are set on."""
    _clock_offset()
    ticks = ctypes.c_uint32()
    _clock["ticks"](ctypes.byref(ticks))
    return ticks.value


def new_context(**kwargs: Any) -> Any:
    """A ``DTLSSocket.dtls.DTLS`` context whose construction leaves tinydtls's clock origin where
    it was (see above); every context of the gateway and of the simulated devices is made here."""
    from DTLSSocket import dtls

    origin = clock_origin()
    offset = _clock_offset()
    context = dtls.DTLS(**kwargs)
    offset.value = origin
    return context


async def _run_retransmissions(context_of: Callable[[], Any]) -> None:
    """Let tinydtls retransmit handshake flights until none is pending, sleeping until its next
    deadline (aiocoap computed that sleep against a clock of its own, which tinydtls's did not
    match once DTLSSocket had moved the origin; with :func:`new_context` the deadline is on the
    clock :func:`tinydtls_ticks` reads)."""
    while True:
        dtls_socket = context_of()
        if dtls_socket is None:
            return
        due = dtls_socket.checkRetransmit()  # retransmits what is due, returns the next deadline
        if due == 0:
            return
        wait = ((due - tinydtls_ticks()) & 0xFFFFFFFF) / _TICKS_PER_SECOND
        if wait > _RETRANSMIT_MAX_SLEEP_S * 2:  # before now: the tick difference wrapped
            wait = 0.0
        await asyncio.sleep(min(max(wait, _RETRANSMIT_MIN_SLEEP_S), _RETRANSMIT_MAX_SLEEP_S))


async def client_context(site: Any) -> Any:
    """An aiocoap context that reaches coaps servers (and serves ``site`` over those sessions)
    through aiocoap's tinydtls client with :func:`_run_retransmissions`; no socket of its own.
    """
    missing = dtls_missing()
    if missing is not None:
        raise DTLSUnavailableError(missing)
    import aiocoap

    _session_class()
    interface_class = _classes["client"]
    loop = asyncio.get_running_loop()
    context = aiocoap.Context(loop=loop, serversite=site, loggername="coap-dtls-client")
    await context._append_tokenmanaged_messagemanaged_transport(
        lambda mman: interface_class.create_client_transport_endpoint(
            mman, log=context.log, loop=loop
        )
    )
    return context


def _session_class() -> type:
    """The session class, or a class nothing is an instance of when DTLS is not installed."""
    if "session" not in _classes:
        if dtls_missing() is None:
            _define_transport()
        else:
            _classes["session"] = type("_NoDTLS", (), {})
    return _classes["session"]


@dataclass
class DTLSListener:
    """What :func:`open_listener` returns: the bound address and the live session table."""

    host: str
    port: int
    interface: Any

    @property
    def sessions(self) -> dict[Any, Any]:
        pool = self.interface._pool
        return dict(pool._connections)

    @property
    def handshakes(self) -> dict[str, int]:
        """Handshakes so far by outcome: ``completed``, ``failed`` (an alert ended it) or
        ``dropped`` (timed out, evicted, or cut by shutdown before completing)."""
        return dict(self.interface._pool.handshakes)


async def open_listener(
    context: Any,
    *,
    host: str,
    port: int,
    keys: PSKCache,
    handshake_timeout: float,
    max_sessions: int,
    recv_buffer_bytes: int | None = None,
) -> DTLSListener:
    """Add a coaps listener to an existing aiocoap server context (same site, same requests).

    ``recv_buffer_bytes``: the socket's receive buffer (the kernel's default, about 200 KiB,
    holds a few hundred ClientHellos: a burst beyond that is dropped and costs each device a
    retransmission timeout)."""
    missing = dtls_missing()
    if missing is not None:
        raise DTLSUnavailableError(missing)
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - refusing the any-address, not binding it
        raise DTLSUnavailableError(
            "the DTLS listener needs a specific address, not the any-address: it answers "
            "from the address it is bound to (LWM2M_DTLS_BIND=192.0.2.10:5684, say)"
        )
    _session_class()
    # Fail here, at start, rather than at a device's first handshake.
    configure_tinydtls(new_context(pskId=b"-", pskStore={}))
    interface_class = _classes["interface"]
    loop = asyncio.get_running_loop()
    holder: list[Any] = []

    async def construct(mman: Any) -> Any:
        interface = await interface_class.open(
            (host, port),
            mman,
            log=context.log,
            loop=loop,
            keys=keys,
            handshake_timeout=handshake_timeout,
            max_sessions=max_sessions,
        )
        holder.append(interface)
        return interface

    # The same constructor aiocoap uses for its own transports (pinned aiocoap: requirements.txt).
    await context._append_tokenmanaged_messagemanaged_transport(construct)
    if recv_buffer_bytes is not None:
        sock = holder[0]._pool._transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
    return DTLSListener(host=host, port=port, interface=holder[0])


def _define_transport() -> None:
    """Define the transport classes (only once DTLSSocket is known to import)."""
    from aiocoap import error
    from aiocoap.transports import simplesocketserver, tinydtls, tinydtls_server
    from aiocoap.transports.generic_udp import GenericMessageInterface
    from aiocoap.util import hostportjoin

    class _SessionKeys:
        """The mapping DTLSSocket asks for a key (``in`` then ``[]``), bound to one session."""

        def __init__(self, session: _Session) -> None:
            self.session = session

        def keys(self) -> _SessionKeys:
            return self

        def __contains__(self, identity: object) -> bool:
            return isinstance(identity, bytes) and self.session.key_for(identity) is not None

        def __getitem__(self, identity: bytes) -> bytes:
            key = self.session.key_for(identity)
            if key is None:
                raise KeyError(identity)
            return key

    class _Session(tinydtls_server._AddressDTLS):  # type: ignore[misc]
        """One peer address's DTLS state; the remote of every message on that session."""

        def __init__(self, pool: _SessionPool, sockaddr: Any) -> None:
            self._protocol = pool
            self._underlying_address = simplesocketserver._Address(pool, sockaddr)
            self.log = pool.log
            self.keys = pool.keys
            self.offered: str | None = None  # identity whose key the handshake asked for
            self.claimed: bytes | None = None  # identity in the peer's ClientKeyExchange
            self.connected = False
            self.closed = False
            self.started = time.monotonic()
            # What was on the wire, for the log line of a handshake that fails.
            self.last_in = ""  # the peer's last datagram, described
            self.last_in_at = self.started
            self.last_out = "nothing"  # ours
            self.failure: str | None = None  # why this handshake failed, once logged
            self.refusal: str | None = None  # set by key_for when it refuses the identity
            self._saw_change_cipher_spec = False  # the peer switched to epoch 1
            self._receiving = False
            self._sent_alerts: list[tuple[int, int]] = []
            self._plain_alerts: list[tuple[int, int]] = []
            self._wrote = False
            self._written: list[bytes] = []  # what tinydtls wrote for the datagram in hand
            # The peer's last flight that got an answer, and that answer (see receive).
            self._flight: tuple[bytes, ...] | None = None  # the peer's current flight
            self._answered: tuple[bytes, ...] | None = None
            self._answer: list[bytes] = []
            self._dtls_socket = new_context(
                read=self._read,
                write=self._write,
                event=self._event,
                pskId=b"-",  # a client's field; the server never sends it
                pskStore=_SessionKeys(self),
            )
            configure_tinydtls(self._dtls_socket)
            # The cookie the peer echoes was made by the pool's stateless verifier.
            share_cookie_secret(pool.verifier, self._dtls_socket)
            self.cookie_refused = False  # its ClientHello's cookie did not verify
            self._dtls_session = tinydtls_session(sockaddr)
            self._retransmission_task = asyncio.create_task(self._run_retransmissions())

        @property
        def authenticated_identity(self) -> str | None:
            # Still answered once closed: messages that arrived on the session were authentic.
            return self.offered if self.connected else None

        @property
        def authenticated_claims(self) -> list[str]:
            identity = self.authenticated_identity
            return [identity] if identity is not None else []

        @property
        def blockwise_key(self) -> Any:
            return (self._underlying_address.blockwise_key, self.offered)

        def key_for(self, identity: bytes) -> bytes | None:
            # Logged with the alert tinydtls sends for it (see _report).
            name = identity.decode("utf-8", "replace")
            if self.offered is not None and self.offered != name:
                self.refusal = (
                    f"the session switched identity {_shown(self.offered)} -> {_shown(identity)}"
                )
                return None
            key = self.keys.key(identity)
            if key is None:
                self.refusal = (
                    f"{'unusable stored PSK (see above) for' if self.keys.has(name) else 'unknown'}"
                    f" PSK identity {_shown(identity)}"
                )
                asyncio.get_running_loop().call_soon(
                    self.close, tinydtls.FatalDTLSError("unknown identity")
                )
                return None
            self.offered = name
            return key

        def send(self, message: bytes) -> None:
            if self.closed:
                log.debug("not sending to closed DTLS session %s", self.hostinfo)
                return
            self._dtls_socket.write(self._dtls_session, message)

        # -- what tinydtls does with each datagram, and what it showed -------------------------

        def receive(self, data: bytes) -> None:
            """One datagram from the peer through tinydtls; a failed handshake is logged."""
            records = read_records(data)
            self.last_in, self.last_in_at = describe_records(records), time.monotonic()
            hello = None
            for record in records:
                if record.handshake_type == _CLIENT_HELLO:
                    hello = parse_client_hello(record.fragment)
                    if hello is not None and hello.cookie:
                        # A new handshake: what the last one showed no longer applies.
                        self._saw_change_cipher_spec, self.failure = False, None
                elif record.content_type == _CHANGE_CIPHER_SPEC and record.plaintext:
                    self._saw_change_cipher_spec = True
                elif (identity := psk_identity(record)) is not None:
                    self.claimed = identity
            socket = self._dtls_socket
            if socket is None:
                return
            flight = _client_flight(records)
            if flight is not None:
                self._flight = flight
            elif self.connected and any(r.content_type == _APPLICATION_DATA for r in records):
                self._flight = self._answered = None  # the peer has our Finished
                self._answer = []
            if flight is not None and flight == self._answered:
                # The peer's timer fired before our answer arrived: answer again, the same
                # flight (RFC 6347 4.2.4). tinydtls would start a new handshake on the repeated
                # ClientHello (new server random, so the peer's Finished, made from the first,
                # fails) and ignores a repeated final flight (the peer never gets our Finished).
                for datagram in self._answer:
                    self._underlying_address.send(datagram)
                return
            self._plain_alerts = [r.alert for r in records if r.alert is not None]
            self._sent_alerts = []
            self._wrote, self._receiving, self._written = False, True, []
            was_connected = self.connected
            self._retransmission_task.cancel()
            try:
                result = socket.handleMessage(
                    self._dtls_session, normalise_hello_record_version(data)
                )
            finally:
                self._receiving = False
            if not was_connected and hello is not None and _sends_hello_verify(self._written):
                self.cookie_refused = True  # a cookie not made for this peer (or too old)
            if self._written and self._flight is not None and not was_connected:
                # Our answer to the peer's flight (its Finished may come in a datagram of its
                # own, after the ClientKeyExchange: the answer is the flight's).
                self._answered, self._answer = self._flight, self._written
            if not self.closed:
                self._retransmission_task = asyncio.create_task(self._run_retransmissions())
            self._report(records, hello, result)

        def _report(self, records: list[Record], hello: ClientHello | None, result: int) -> None:
            sent = alert_of_result(result)
            if sent is None:
                sent = next((a for a in self._sent_alerts if a[0] == FATAL), None)
            if sent is not None and sent[0] == FATAL:
                self._failed(
                    f"sent {alert_name(*sent)}",
                    self.refusal or self._why(sent, hello),
                    kind=f"sent {ALERT_DESCRIPTIONS.get(sent[1], sent[1])}",
                )
                self.close(tinydtls.FatalDTLSError(sent[1]))
                return
            if not self.connected:
                # (tinydtls ignores plaintext alerts on an established session, and so do we.)
                for alert in self._plain_alerts:
                    self._alert_received(*alert, seen=True)
            if (
                not self.connected
                and self.failure is None
                and self._saw_change_cipher_spec
                and not self._wrote
                and result == 0
                and any(r.content_type == _HANDSHAKE_RECORD and r.epoch > 0 for r in records)
            ):
                # tinydtls answers a Finished that decrypts, right or wrong (its own Finished,
                # or decrypt_error); silence after the peer's epoch-1 handshake record means
                # that record failed authentication (dtls_handle_message: "decrypt_verify()
                # failed, drop message"), and a PSK suite derives that record's key from the PSK.
                shown = _shown(self.offered or "")
                self._failed(
                    "bad_record_mac (no alert sent: DTLS drops a record that fails "
                    "authentication, RFC 6347 4.1.2.7)",
                    f"its Finished does not authenticate under the key stored for {shown}: the "
                    "device holds a different key",
                    kind="bad_record_mac",
                )
                self.keys.request_refresh()  # the key may have been rotated

        def _why(self, alert: tuple[int, int], hello: ClientHello | None) -> str:
            if hello is not None:
                reason = hello_refusal(hello) or (
                    "tinydtls refused its ClientHello for a reason the gateway does not check"
                )
                return f"{reason}; the ClientHello offers {hello.describe()}"
            if alert[1] == DECRYPT_ERROR:
                return (
                    "its Finished decrypts but does not verify (the peer hashed a different "
                    "handshake)"
                )
            return f"tinydtls refused the peer's {self.last_in}"

        def _failed(self, alert: str, why: str, *, kind: str) -> None:
            self.failure = f"{alert}: {why}"
            self._protocol.warn(
                kind,
                "DTLS %s %s%s failed, %s",
                "session with" if self.connected else "handshake from",
                self.hostinfo,
                self.identity_shown(),
                self.failure,
            )

        def _alert_received(self, level: int, code: int, *, seen: bool) -> None:
            """Log an alert from the peer (``seen``: read off the wire in plaintext)."""
            name = alert_name(level, code)
            if code == CLOSE_NOTIFY:
                log.info("DTLS session with %s closed by the peer", self.hostinfo)
            elif level != FATAL:
                log.info("DTLS %s from %s", name, self.hostinfo)
            elif self.connected:
                self._protocol.warn(
                    f"received {ALERT_DESCRIPTIONS.get(code, code)}",
                    "DTLS session with %s (identity %s) ended by the peer: received %s",
                    self.hostinfo,
                    _shown(self.offered or ""),
                    name,
                )
            else:
                self.failure = f"received {name}{'' if seen else ' (encrypted)'}"
                identity = self.identity_shown()
                self._protocol.warn(
                    f"received {ALERT_DESCRIPTIONS.get(code, code)}",
                    "DTLS handshake from %s%s failed, %s",
                    self.hostinfo,
                    identity,
                    self.failure,
                )

        def _read(self, sender: Any, data: bytes) -> int:
            """A decrypted datagram, to aiocoap. Nothing may escape into tinydtls's C callback
            (it comes out of handleMessage as a SystemError, the datagram's processing cut
            half-way): aiocoap 0.4.17 raises InvalidStateError delivering a response to a
            request whose caller stopped waiting, seen in a 10,000-device burst."""
            try:
                self._protocol._message_interface._received_plaintext(self, data)
            except asyncio.InvalidStateError:
                log.debug("late response from %s dropped", self.hostinfo)
            return len(data)

        def _write(self, recipient: Any, data: bytes) -> int:
            records = read_records(data)
            self.last_out = describe_records(records)
            if self._receiving:
                self._wrote = True
                self._written.append(bytes(data))
                self._sent_alerts.extend(r.alert for r in records if r.alert is not None)
            return int(super()._write(recipient, data))

        def identity_shown(self) -> str:
            """`` for identity 'x'`` (the one the handshake named, if it got that far)."""
            identity = self.offered if self.offered is not None else self.claimed
            return "" if identity is None else f" for identity {_shown(identity)}"

        def observed(self) -> str:
            """What the wire showed of this handshake, for the timeout's log line."""
            ago = time.monotonic() - self.last_in_at
            return (
                f"last from the peer: {self.last_in} ({ago:.1f} s ago); last sent: {self.last_out}"
            )

        def _event(self, level: int, code: int) -> None:
            if (level, code) == (tinydtls.LEVEL_NOALERT, tinydtls.DTLS_EVENT_CONNECTED):
                self.connected, self.failure = True, None
                self._protocol.handshakes["completed"] += 1
                log.info(
                    "DTLS session with %s established for identity %s",
                    self.hostinfo,
                    _shown(self.offered or ""),
                )
                return
            if level == tinydtls.LEVEL_NOALERT:
                return
            if not (self._receiving and (level, code) in self._plain_alerts):
                # An encrypted alert: only tinydtls could read it (plaintext ones: _report).
                self._alert_received(level, code, seen=False)
            if code == tinydtls.CODE_CLOSE_NOTIFY:
                self.close(tinydtls.CloseNotifyReceived())
            elif level == tinydtls.LEVEL_FATAL:
                self.close(tinydtls.FatalDTLSError(code))

        def _inject_error(self, exc: BaseException) -> None:
            self.close(exc)

        async def _run_retransmissions(self) -> None:
            await _run_retransmissions(lambda: self._dtls_socket)

        def close(self, exc: BaseException) -> None:
            """End the session (idempotent): pending requests to it fail with ``exc``; a
            connected peer gets a close_notify."""
            if self.closed:
                return
            self.closed = True
            if not self.connected and not self.cookie_refused:  # ended without completing
                self._protocol.handshakes["failed" if self.failure else "dropped"] += 1
            self._retransmission_task.cancel()
            connections = self._protocol._connections
            if connections.get(self._underlying_address.address) is self:
                del connections[self._underlying_address.address]
            # Not now: close() may run inside a tinydtls callback of this very context.
            asyncio.get_running_loop().call_soon(self._teardown)
            plaintext = self._protocol._message_interface._plaintext_interface
            if plaintext._mman is not None:
                # aiocoap 0.4.17 also fails a request whose caller stopped waiting (its
                # response future is done), and raises InvalidStateError for it; here that
                # would escape through tinydtls's callback into handleMessage.
                with contextlib.suppress(asyncio.InvalidStateError):
                    plaintext._received_exception(self, exc)

        def _teardown(self) -> None:
            """Free the tinydtls context now, not whenever the cyclic GC gets to it: freeing
            it sends close_notify through the static send buffer that every tinydtls context
            shares, which must not happen in the middle of another context's work."""
            self._retransmission_task.cancel()
            socket, self._dtls_socket = self._dtls_socket, None
            if socket is not None:
                with contextlib.suppress(Exception):
                    socket.resetPeer(self._dtls_session)

    class _SessionPool(tinydtls_server._DatagramServerSocketSimpleDTLS):  # type: ignore[misc]
        """The listening socket and its sessions, keyed by peer address, least recent first."""

        _Address = _Session

        keys: PSKCache
        max_sessions: int
        handshake_timeout: float
        limiter: RateLimiter

        @classmethod
        async def open(
            cls,
            bind: tuple[str, int],
            log: Any,
            loop: asyncio.AbstractEventLoop,
            message_interface: Any,
            *,
            keys: PSKCache,
            max_sessions: int,
            handshake_timeout: float,
        ) -> _SessionPool:
            wrapped = tinydtls_server.GoingThroughMessageDecryption(message_interface)
            ready: asyncio.Future[_SessionPool] = loop.create_future()
            # No SO_REUSEPORT: a second process on this port must fail, not share the traffic.
            await loop.create_datagram_endpoint(
                lambda: cls(ready.set_result, wrapped, log), local_addr=bind
            )
            self = await ready
            self.hostinfo_local = hostportjoin(bind[0], bind[1])
            self._loop = loop
            self.keys = keys
            self.max_sessions = max_sessions
            self.handshake_timeout = handshake_timeout
            # Failed handshakes repeat (a device retries every few seconds): a few lines per
            # kind and interval, and the count of those held back.
            self.limiter = RateLimiter(interval=10.0, burst=5)
            # Handshakes by outcome (completed, failed, dropped), for the gateway's metrics.
            self.handshakes: collections.Counter[str] = collections.Counter()
            # The stateless side of the cookie exchange (RFC 6347 4.2.1): a ClientHello without
            # a cookie, from an address with no session, is answered with a HelloVerifyRequest
            # by this one context, which keeps no state for it; only a ClientHello that echoes
            # a cookie made for its address opens a session. A spoofed source address never
            # sees its cookie, so it costs a HelloVerifyRequest and no session slot.
            self.verifier = new_context(
                read=lambda _sender, data: len(data),
                write=self._verifier_write,
                event=lambda _level, _code: None,
                pskId=b"-",
                pskStore={},
            )
            configure_tinydtls(self.verifier)
            self._verifying: Any = None  # the address the verifier is answering
            self.cookies_sent = 0
            self._sweeper = loop.create_task(self._sweep())
            return self

        def _verifier_write(self, _recipient: Any, data: bytes) -> int:
            if self._verifying is not None:
                self._transport.sendto(bytes(data), self._verifying)
            return len(data)

        def _verify_hello(self, data: bytes, sockaddr: Any) -> None:
            """Answer a cookieless ClientHello with a HelloVerifyRequest; no session."""
            self._verifying = sockaddr
            self.cookies_sent += 1
            try:
                self.verifier.handleMessage(
                    tinydtls_session(sockaddr), normalise_hello_record_version(data)
                )
            except Exception:  # a malformed hello: tinydtls refused it, nothing to keep
                log.debug("ClientHello from %s not answered", sockaddr, exc_info=True)
            finally:
                self._verifying = None

        def datagram_received(self, data: bytes, sockaddr: Any) -> None:
            session = self._connections.get(sockaddr)
            if session is None:
                if not _opens_session(data):
                    # Not a ClientHello: nothing to answer. (A later flight of a handshake this
                    # listener dropped would only open a session that cannot complete it.)
                    return
                if not _hello_has_cookie(data):
                    self._verify_hello(data, sockaddr)
                    return
                while len(self._connections) >= self.max_sessions:
                    _, oldest = next(iter(self._connections.items()))
                    log.info(
                        "DTLS session limit (%d) reached: dropping the least recently "
                        "active one (%s)",
                        self.max_sessions,
                        oldest.hostinfo,
                    )
                    oldest.close(error.LibraryShutdown("DTLS session evicted"))
                session = _Session(self, sockaddr)
                self._connections[sockaddr] = session
                session.receive(data)
                if session.cookie_refused:
                    # tinydtls answered with a fresh HelloVerifyRequest: no state kept.
                    session.close(tinydtls.FatalDTLSError("cookie not verified"))
                return
            self._connections.move_to_end(sockaddr)
            session.receive(data)

        def warn(self, kind: str, message: str, *args: Any) -> None:
            """A WARNING line, at most ``limiter.burst`` per ``kind`` and interval."""
            allowed, held = self.limiter.allow(kind, now=time.monotonic())
            if allowed:
                suffix = f" ({held} more {kind} since the last line)" if held else ""
                log.warning(message + "%s", *args, suffix)

        async def _sweep(self) -> None:
            """Drop handshakes that never completed (wrong key, lost peer, spoofed hello)."""
            interval = max(min(self.handshake_timeout / 2, 5.0), 0.05)
            while True:
                await asyncio.sleep(interval)
                now = time.monotonic()
                for session in list(self._connections.values()):
                    if session.connected or not _handshake_expired(
                        session, now=now, timeout=self.handshake_timeout
                    ):
                        continue
                    if session.failure is not None:
                        log.info(
                            "DTLS handshake from %s dropped after %.0f s (it failed: %s)",
                            session.hostinfo,
                            self.handshake_timeout,
                            session.failure,
                        )
                    elif session.offered is not None or session.claimed is not None:
                        self.warn(
                            "handshake timeout",
                            "DTLS handshake from %s%s not completed in %.0f s (%s): dropped",
                            session.hostinfo,
                            session.identity_shown(),
                            self.handshake_timeout,
                            session.observed(),
                        )
                        self.keys.request_refresh()  # the key may have been rotated
                    else:
                        log.info(
                            "DTLS handshake from %s not completed in %.0f s (%s): dropped",
                            session.hostinfo,
                            self.handshake_timeout,
                            session.observed(),
                        )
                    session.close(tinydtls.FatalDTLSError("handshake timeout"))

        async def shutdown(self) -> None:
            self._sweeper.cancel()
            self._transport.abort()

    class _DTLSServerInterface(tinydtls_server.MessageInterfaceTinyDTLSServer):  # type: ignore[misc]
        """coaps server transport; sends only over sessions that peers opened."""

        @classmethod
        async def open(
            cls,
            bind: tuple[str, int],
            mman: Any,
            *,
            log: Any,
            loop: asyncio.AbstractEventLoop,
            keys: PSKCache,
            handshake_timeout: float,
            max_sessions: int,
        ) -> _DTLSServerInterface:
            self = cls(mman, log, loop)
            self._pool = await _SessionPool.open(
                bind,
                log,
                loop,
                self,
                keys=keys,
                max_sessions=max_sessions,
                handshake_timeout=handshake_timeout,
            )
            return self

        async def recognize_remote(self, remote: Any) -> bool:
            return isinstance(remote, _Session) and remote._protocol is self._pool

        async def determine_remote(self, request: Any) -> None:
            return None  # a DTLS server cannot open a session; devices connect to it

        async def shutdown(self) -> None:
            for session in list(self._pool._connections.values()):
                session.close(error.LibraryShutdown("gateway stopping"))
            await asyncio.sleep(0)  # the sessions' teardown (close_notify) before the socket closes
            await GenericMessageInterface.shutdown(self)

    class _ClientConnection(tinydtls.DTLSClientConnection):  # type: ignore[misc]
        """aiocoap 0.4.17's client connection, its tinydtls context made by :func:`new_context`
        and its retransmissions timed by :func:`_run_retransmissions`."""

        async def _start(self) -> None:
            self._dtls_socket = None
            self._connection = None
            try:
                self._transport, _ = await self.coaptransport.loop.create_datagram_endpoint(
                    self.SingleConnection.factory(self), remote_addr=(self._host, self._port)
                )
                self._dtls_socket = new_context(
                    read=self._build_accessor("_read", 0),
                    write=self._build_accessor("_write", 0),
                    event=self._build_accessor("_event", 0),
                    pskId=self._pskId,
                    pskStore={self._pskId: self._psk},
                )
                self._connection = self._dtls_socket.connect(
                    tinydtls._SENTINEL_ADDRESS, tinydtls._SENTINEL_PORT
                )
                self._retransmission_task = asyncio.create_task(self._run_retransmissions())
                self._connecting = asyncio.get_running_loop().create_future()
                await self._connecting
                queue, self._queue = self._queue, None
                for message in queue:
                    self.send(message)
            except Exception as exc:
                self.coaptransport.ctx.dispatch_error(exc, self)
            finally:
                if self._queue is not None:  # the handshake did not complete
                    self.shutdown()

        async def _run_retransmissions(self) -> None:
            await _run_retransmissions(lambda: getattr(self, "_dtls_socket", None))

    class _ClientInterface(tinydtls.MessageInterfaceTinyDTLS):  # type: ignore[misc]
        """aiocoap's DTLS client transport, building :class:`_ClientConnection` sessions."""

        def _connection_for_address(self, host: str, port: int, psk_id: bytes, psk: bytes) -> Any:
            key = (host, port, psk_id)
            connection = self._pool.get(key)
            if connection is None:
                connection = _ClientConnection(host, port, psk_id, psk, self)
                self._pool[key] = connection
            return connection

    _classes.update(
        session=_Session,
        pool=_SessionPool,
        interface=_DTLSServerInterface,
        client=_ClientInterface,
    )
