"""The gateway's plain-CoAP listener: aiocoap's ``udp6`` transport behind a datagram screen.

aiocoap 0.4.17 (pinned) has three receive-path faults a hostile peer can use
(docs/lwm2m.md, "Hostile input"):

* a non-UTF-8 byte in a string option raises ``UnicodeDecodeError`` out of its receive callback:
  no reply, and asyncio logs a ~2 KB traceback per datagram (a log flood for 6 bytes sent);
* it reads at most 4,096 bytes per datagram and hands a cut datagram on as if it were whole;
* it logs a warning for every unparsable datagram.

:class:`ScreenedUDP6` fixes them where they happen, before aiocoap parses anything: every
datagram passes :func:`workers.lwm2m.wire.screen` first (confirmable requests that fail get 4.00
or 4.13 at once, the rest is dropped), datagrams are read up to ``max_datagram`` bytes and a
longer one is refused as too large (the socket reports the cut), and every refusal is counted
in :class:`InputGuard` and logged at most a few lines per interval. The upstream fix (decode
errors as ``UnparsableMessage``, truncation checked) is the same two checks in aiocoap's
``udp6.datagram_msg_received``; this subclass stays until a release carries it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import aiocoap
from aiocoap.message import Direction, Message
from aiocoap.numbers.codes import CONTINUE
from aiocoap.transports.udp6 import MessageInterfaceUDP6, UDP6EndpointAddress

from workers.lwm2m import logsafe, wire
from workers.lwm2m.block1 import Block1Assembler

log = logsafe.guard(logging.getLogger("workers.lwm2m.transport"))

# The bytes read per datagram beyond the largest accepted payload: CoAP header, token, options.
DATAGRAM_OVERHEAD = 1024


class InputGuard:
    """Counters of refused input and a rate-limited log line per kind (shared by the gateway)."""

    def __init__(self, *, interval: float = 10.0, burst: int = 10) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.received = 0  # datagrams read from the socket (refused or not)
        self.limiter = logsafe.RateLimiter(interval=interval, burst=burst)

    def refused(self, kind: str, peer: str, reason: str) -> None:
        """Count one refusal of ``kind`` and log it unless this kind logged enough lately."""
        self.counts[kind] += 1
        allowed, held = self.limiter.allow(kind, now=time.monotonic())
        if allowed:
            log.warning(
                "%s datagram from %s refused: %s%s",
                kind,
                peer,
                logsafe.one_line(reason),
                f" ({held} more {kind} since the last line)" if held else "",
            )


def _peer(address: Any) -> str:
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError):
        return logsafe.shown(address)
    host = str(host).removeprefix("::ffff:")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ScreenedUDP6(MessageInterfaceUDP6):  # type: ignore[misc]
    """aiocoap's udp6 transport; every datagram is screened before aiocoap decodes it."""

    guard: InputGuard = InputGuard()
    max_datagram: int = 4096
    # Answers a datagram directly (the cached /fw Block2 GET: workers.lwm2m.fastfw), or None.
    direct: Callable[[bytes], bytes | None] | None = None
    # Answers a datagram equal past its token to one ``direct`` answered (so one the screen
    # passed: workers.lwm2m.fastfw.replay), or None; asked before the screen.
    known: Callable[[bytes], bytes | None] | None = None

    def datagram_msg_received(self, data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        self.guard.received += 1
        truncated = bool(flags & socket.MSG_TRUNC)
        if self.known is not None and not truncated:
            answer = self.known(data)
            if answer is not None:
                self._reply(answer, address, ancdata)
                return
        verdict = wire.screen(data, truncated=truncated, limit=self.max_datagram)
        if not verdict.ok:
            self.guard.refused(verdict.kind, _peer(address), verdict.reason)
            if verdict.reply is not None:
                self._reply(verdict.reply, address, ancdata)
            return
        if self.direct is not None:
            try:
                answer = self.direct(data)
            except Exception as exc:  # a fault there must not cost the request: aiocoap answers
                self.guard.refused("unhandled", _peer(address), f"{type(exc).__name__}: {exc}")
                answer = None
            if answer is not None:
                self._reply(answer, address, ancdata)
                return
        pktinfo = None
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                pktinfo = value
        try:
            message = Message.decode(data, UDP6EndpointAddress(address, self, pktinfo=pktinfo))
        except Exception as exc:  # UnparsableMessage, or a fault the screen does not know yet
            self.guard.refused("malformed", _peer(address), f"{type(exc).__name__}: {exc}")
            return
        message.direction = Direction.INCOMING
        try:
            self._ctx.dispatch_message(message)
        except _TRANSIENT as exc:
            # A late answer to a request that already ended (a retransmitted response, or one
            # after a timeout): nothing hostile and nothing to act on; counted, one INFO line.
            self.guard.counts["late"] += 1
            log.info("late datagram from %s ignored (%r)", _peer(address), exc)
        except Exception as exc:
            # The last place with a log at hand (the transport's reader would only print it).
            self.guard.refused("unhandled", _peer(address), f"{type(exc).__name__}: {exc}")

    def _reply(self, reply: bytes, address: Any, ancdata: Any) -> None:
        if len(ancdata) == 1 and ancdata[0][:2] == _PKTINFO:
            out = ancdata  # the usual case: the packet info alone
        else:
            out = [
                (level, kind, value)
                for level, kind, value in ancdata
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO
            ]
        self.transport.sendmsg(reply, out, 0, address)


_PKTINFO = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)


_PKTINFO = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)


async def open_server_context(
    site: Any,
    *,
    host: str,
    port: int,
    max_datagram: int,
    guard: InputGuard,
    direct: Callable[[bytes], bytes | None] | None = None,
    known: Callable[[bytes], bytes | None] | None = None,
) -> aiocoap.Context:
    """A server context like ``Context.create_server_context(site, bind, transports=["udp6"])``,
    with :class:`ScreenedUDP6` reading datagrams of up to ``max_datagram`` bytes; ``direct``
    answers the screened datagrams it recognises before aiocoap decodes them."""
    loop = asyncio.get_running_loop()
    context = aiocoap.Context(loop=loop, serversite=site, loggername="coap-server")

    class _Screened(ScreenedUDP6):  # type: ignore[misc]
        pass

    _Screened.guard = guard
    _Screened.max_datagram = max_datagram
    _Screened.direct = staticmethod(direct) if direct is not None else None
    _Screened.known = staticmethod(known) if known is not None else None

    async def construct(mman: Any) -> Any:
        interface = await _Screened.create_server_transport_endpoint(
            mman, log=context.log, loop=loop, bind=(host, port), multicast=[]
        )
        interface.transport.max_size = max_datagram
        return interface

    # The constructor aiocoap's create_server_context uses (pinned aiocoap: requirements.txt).
    await context._append_tokenmanaged_messagemanaged_transport(construct)
    return context


def take_block1(assembler: Block1Assembler, request: Message) -> tuple[Message, Message | None]:
    """Feed a Block1 request to ``assembler``: (the request with its whole body, None) when it is
    complete or carries no Block1, else (the request, a 2.31 Continue to send back). Refusals
    come as the assembler's ``LwM2MError`` subclasses (4.00, 4.08, 4.13)."""
    block1 = request.opt.block1
    if block1 is None:
        return request, None
    peer = request.remote.blockwise_key
    key = (peer, request.code, tuple(request.opt.uri_path), tuple(request.opt.uri_query))
    body = assembler.feed(
        key,
        peer=peer,
        num=block1.block_number,
        more=bool(block1.more),
        szx=block1.size_exponent,
        payload=request.payload,
        size1=request.opt.size1,
        now=time.monotonic(),
    )
    if body is None:
        return request, Message(code=CONTINUE, block1=block1)
    if block1.block_number == 0:
        return request, None
    return request.copy(payload=body), None


# --- transient errors from aiocoap's callbacks: one line, not a traceback -----------------------

# What a peer that went away makes aiocoap report from a callback: a response or ICMP error for
# a request already finished (the future is done: InvalidStateError), a network error.
_TRANSIENT = (asyncio.InvalidStateError, aiocoap.error.NetworkError, ConnectionError)


class TransientErrorFilter(logging.Filter):
    """Turns an aiocoap record carrying a transient error into one INFO line (no traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, _TRANSIENT):
            record.msg = f"{logsafe.one_line(record.getMessage())} (transient: {exc!r})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_transient_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Filter aiocoap's loggers (each by name: filters do not reach child loggers) and, unless
    the loop already has one, install an exception handler that logs transient errors from
    callbacks as one line."""
    for name in (
        "coap-server",
        "coap",
        "coap-server.blockwise-requester",
        "coap.blockwise-requester",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, TransientErrorFilter) for f in logger.filters):
            logger.addFilter(TransientErrorFilter())
    if loop.get_exception_handler() is None:
        loop.set_exception_handler(_loop_exception_handler)


def _loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, _TRANSIENT):
        log.info("transient error in a callback: %s (%r)", context.get("message"), exc)
        return
    loop.default_exception_handler(context)
