"""DTLS (PSK) client sessions for the load simulator: one tinydtls context per device, all of
them on the load fleet's one UDP socket, with the handshake timers of RFC 6347.

Why this and not aiocoap's DTLS client (what the full simulator uses): that one gives every
device an aiocoap context and a socket of its own and runs each message through aiocoap, and a
device process holding thousands of them was starved before the gateway was (10,000 devices in
one burst: the 2.01s came after the devices' 30 s request timeout, so they restarted their
handshakes and none got in). Here a device's DTLS state is a tinydtls context (C) driven by
three Python callbacks, and the datagrams go through the fleet's socket like the plain ones.

What the gateway sees is what a real device sends: the identity is the device's endpoint name,
its key the device's own 16-byte PSK (derived from the fleet's ``psk_seed``:
:func:`psk_for`, so the provisioning side computes the same keys without a list), the same
cipher suites and extensions as aiocoap's tinydtls client (the same library builds them).

Timers (RFC 6347 4.2.4): a flight the client sent is sent again when no answer came within
1 s, then 2, 4, ... up to 60 s between tries; tinydtls's own retransmission (first after 2 s
in this build, driven by ``checkRetransmit``) is not used. A flight is what tinydtls wrote
while handling one call (``connect`` or one datagram from the server) before the handshake
completed; the answer to it (any datagram from which tinydtls writes a new flight, or the
connected event) stops its timer. After :data:`MAX_FLIGHT_SENDS` sends of one flight with no
answer (63 s after the first send, as mbed TLS's client), or on a fatal alert, the device starts
a new handshake on a new context. CoAP requests wait for the session instead of timing out while
the handshake is retransmitted, so a slow gateway costs a device retransmissions, not a new
handshake.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Callable
from typing import Any

from workers.lwm2m import dtls

log = logging.getLogger("workers.lwm2m.loadsim")

PSK_BYTES = 16  # tinydtls's limit (dtls.MAX_PSK_BYTES)
INITIAL_FLIGHT_TIMEOUT = 1.0  # RFC 6347 4.2.4.1: initial timer 1 s
MAX_FLIGHT_TIMEOUT = 60.0  # ... doubled at each retransmission, up to 60 s
# Sends of one flight before the handshake is given up and started over: the first and five
# retransmissions (after 1, 2, 4, 8, 16 s), then 32 s more of waiting; the next wait would be 64 s,
# past the 60 s maximum, which is where mbed TLS's client gives up a handshake too. The longest
# silence is then 32 s, within the gateway's handshake timeout (LWM2M_DTLS_HANDSHAKE_TIMEOUT).
MAX_FLIGHT_SENDS = 6
# tinydtls needs some address for its session; the datagrams go where the fleet sends them.
_SESSION_ADDRESS = "::1"
_SESSION_PORT = 1234
# tinydtls events (dtls.h) and alert levels (RFC 5246).
_EVENT_CONNECTED = 0x01DE
_LEVEL_FATAL = 2


def psk_for(seed: str, endpoint: str) -> bytes:
    """Device ``endpoint``'s PSK in a fleet whose keys come from ``seed`` (hex)."""
    return hmac.new(bytes.fromhex(seed), endpoint.encode(), hashlib.sha256).digest()[:PSK_BYTES]


class DTLSLink:
    """One device's DTLS client session over a shared socket.

    ``send_raw(data)`` puts a datagram on the wire from the device's address to the server;
    ``deliver(data)`` takes a decrypted datagram (a CoAP message) from the server."""

    __slots__ = (
        "_context",
        "_flight",
        "_generation",
        "_ready",
        "_sends",
        "_session",
        "_timeout",
        "_timer",
        "_writing",
        "connected",
        "deliver",
        "handshakes",
        "identity",
        "key",
        "restarts",
        "retransmissions",
        "send_raw",
    )

    def __init__(
        self,
        *,
        identity: bytes,
        key: bytes,
        send_raw: Callable[[bytes], None],
        deliver: Callable[[bytes], None],
    ) -> None:
        if len(key) > PSK_BYTES:
            raise ValueError(f"a tinydtls PSK is at most {PSK_BYTES} bytes")
        self.identity = identity
        self.key = key
        self.send_raw = send_raw
        self.deliver = deliver
        self.connected = False
        self.handshakes = 0  # completed
        self.restarts = 0  # handshakes given up and started over
        self.retransmissions = 0  # flights sent again
        self._context: Any = None
        self._session: Any = None
        self._generation = 0
        self._ready: asyncio.Future[None] | None = None
        self._flight: list[bytes] = []
        self._writing: list[bytes] | None = None  # what tinydtls writes during the current call
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = INITIAL_FLIGHT_TIMEOUT
        self._sends = 0

    # -- the session -------------------------------------------------------------------------

    async def ready(self) -> None:
        """Return once the session is up; starts the handshake if none is under way."""
        while not self.connected:
            if self._context is None:
                self.start()
            if self._ready is None or self._ready.done():
                self._ready = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._ready)

    def start(self) -> None:
        """A new handshake on a new tinydtls context (the old one, if any, is dropped)."""
        self._drop()
        self._generation += 1
        generation = self._generation
        self._context = dtls.new_context(
            read=lambda _sender, data: self._read(generation, data),
            write=lambda _recipient, data: self._write(generation, data),
            event=lambda level, code: self._event(generation, level, code),
            pskId=self.identity,
            pskStore={self.identity: self.key},
        )
        self._timeout = INITIAL_FLIGHT_TIMEOUT
        self._call(
            lambda: self._set_session(self._context.connect(_SESSION_ADDRESS, _SESSION_PORT))
        )

    def _set_session(self, session: Any) -> None:
        self._session = session

    def received(self, data: bytes) -> None:
        """A datagram from the server on the device's address."""
        if self._context is None or self._session is None:
            return
        self._call(lambda: self._context.handleMessage(self._session, data))

    def send(self, data: bytes) -> None:
        """A CoAP message to the server over the session (dropped while there is none: the
        CoAP exchange retransmits it)."""
        if self.connected and self._context is not None:
            self._context.write(self._session, data)

    def close(self) -> None:
        self._drop()

    # -- tinydtls's callbacks and the flight timer -------------------------------------------

    def _call(self, step: Callable[[], Any]) -> None:
        """Run one tinydtls step; what it writes before the handshake completes is a flight."""
        self._writing = [] if not self.connected else None
        try:
            step()
        finally:
            written, self._writing = self._writing, None
        if written and not self.connected:
            self._flight, self._sends = written, 1
            self._timeout = INITIAL_FLIGHT_TIMEOUT
            self._arm()

    def _write(self, generation: int, data: bytes) -> int:
        if generation != self._generation:
            return len(data)  # a dropped context's last words (an alert): not sent
        if self._writing is not None:
            self._writing.append(bytes(data))
        self.send_raw(bytes(data))
        return len(data)

    def _read(self, generation: int, data: bytes) -> int:
        if generation == self._generation:
            self.deliver(bytes(data))
        return len(data)

    def _event(self, generation: int, level: int, code: int) -> None:
        if generation != self._generation:
            return
        if level == 0 and code == _EVENT_CONNECTED:
            self.connected = True
            self.handshakes += 1
            self._flight = []
            self._cancel_timer()
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif level == _LEVEL_FATAL:
            log.info("%s: DTLS alert %d, handshaking again", self.identity.decode(), code)
            self.restarts += 1
            # Not from inside tinydtls's call: the context that called is still on the stack.
            asyncio.get_running_loop().call_later(1 + random.random(), self._restart)  # noqa: S311
            self.connected = False
            self._generation += 1  # nothing more from this context

    def _restart(self) -> None:
        self.start()

    def _arm(self) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.connected or not self._flight:
            return
        if self._sends >= MAX_FLIGHT_SENDS:
            self.restarts += 1
            self.start()
            return
        for datagram in self._flight:
            self.send_raw(datagram)
        self._sends += 1
        self.retransmissions += 1
        self._timeout = min(self._timeout * 2, MAX_FLIGHT_TIMEOUT)
        self._arm()

    def _drop(self) -> None:
        self._cancel_timer()
        self.connected = False
        self._flight = []
        context, session = self._context, self._session
        self._context = self._session = None
        self._generation += 1  # its callbacks are ignored from now on
        if context is not None and session is not None:
            try:
                context.resetPeer(session)
            except Exception:  # a context tinydtls already tore down
                log.debug("DTLS context reset failed", exc_info=True)
