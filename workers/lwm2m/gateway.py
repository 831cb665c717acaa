"""The LwM2M server process: registration interface, firmware server, Object 5 control.

One asyncio loop runs an aiocoap server context. Devices register at ``/rd``; the gateway keeps
the live part of each registration (the device's address, its lifetime deadline) in memory,
because only this process can reach the device, and reports everything else as events through
an :class:`EventSink` (Celery ``device_events_task`` -> ``campaigns.device_services``) so that the
database, not this process, holds fleet state. Commands arrive on the command bus
(:mod:`workers.lwm2m.bus`) for the devices this gateway holds.

Firmware is served from ``/fw/m/<manifest digest>`` (the exact stored SUIT envelope) and
``/fw/i/<image sha256>`` (the payload), with hand-rolled Block2 so any block can be requested
directly (resumable), Size2 on every block and an ETag derived from the content digest. Content
is immutable, so caching it in memory is always correct.

Bad input never stops the server: every handler maps :class:`LwM2MError` to its CoAP code and
logs one line; unexpected exceptions become 5.00 with a traceback in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code

from campaigns import events
from workers.lwm2m import admission, content, dtls, logsafe, selectors
from workers.lwm2m import transport as screened
from workers.lwm2m.block1 import Block1Assembler
from workers.lwm2m.bus import InMemoryCommandBus, RedisCommandBus
from workers.lwm2m.device_requests import DeviceRequests
from workers.lwm2m.emitter import CeleryEventSink, EventEmitter, EventSink
from workers.lwm2m.errors import (
    DeviceNotConnectedError,
    DeviceOperationError,
    LwM2MError,
)
from workers.lwm2m.fwserver import (
    DjangoFirmwareSource,
    FirmwareResource,
    FirmwareServer,
    FirmwareSource,
    PublishedFile,
)
from workers.lwm2m.fwupdate import UpdateDriver
from workers.lwm2m.ports import claim_udp_port, release_udp_port, require_free_udp_port
from workers.lwm2m.registration import Registration, RegistrationInterface, RegistrationResource
from workers.lwm2m.resources import _Handler

log = logsafe.guard(logging.getLogger("workers.lwm2m.gateway"))


# One event thread keeps a gateway's events in order; I/O threads read firmware from the store.
EVENT_THREADS = 1


IO_THREADS = 4


# Command ids a gateway remembers to recognise a repeated delivery.
COMMANDS_REMEMBERED = 10_000


# Pause before reading the command bus again after it failed.
COMMAND_BUS_RETRY_SECONDS = 1.0


@dataclass
class GatewayConfig:
    gateway_id: str
    host: str = "127.0.0.1"
    port: int = 5683
    public_uri: str | None = None
    min_lifetime: int = 1
    max_lifetime: int = 7 * 86400
    max_payload: int = 16 * 1024
    request_timeout: float = 30.0
    fw_poll_seconds: float = 10.0
    fw_update_timeout: float = 3600.0
    # After the package was offered (Package URI) or pushed, State must move within this, or
    # the attempt ends as never started (a device that takes writes and does nothing).
    fw_start_timeout: float = 120.0
    expiry_sweep_seconds: float = 1.0
    write_format: int = content.CT_TLV
    # Join an SO_REUSEPORT group on ``port``: several gateway processes share the port and the
    # kernel spreads devices over them by source address (docs/deploy.md). Off: the port is
    # this process's alone (a second gateway on it fails to start, it does not share traffic).
    reuse_port: bool = False
    # Receive buffer asked for the CoAP socket (the kernel caps it at net.core.rmem_max): a
    # fleet's burst of requests must not overflow it, or datagrams are dropped and retransmitted.
    recv_buffer_bytes: int = 4 * 1024 * 1024
    # DTLS (PSK) listener: off when dtls_host is None; port 0 claims a free port.
    dtls_host: str | None = None
    dtls_port: int = 5684
    dtls_public_uri: str | None = None
    # Plain-CoAP (NoSec) registrations accepted; False: DTLS devices only.
    accept_nosec: bool = True
    psk_refresh_seconds: float = 60.0
    psk_miss_refresh_seconds: float = 2.0
    dtls_handshake_timeout: float = 60.0
    dtls_max_sessions: int = 100_000
    # Who may register (workers.lwm2m.admission): "provisioned" (the registry's endpoints only)
    # or "open" (any well-formed name: labs, the demo, simulated fleets).
    admission: str = "provisioned"
    provisioned_refresh_seconds: float = 60.0
    # Most registrations held at once; past it a new endpoint gets 5.03 (bounds memory).
    max_registrations: int = 100_000
    # Device-information reads in flight at once over all registrations (bounds pending state).
    device_info_concurrency: int = 64
    # How long a NoSec registration's old address has to answer the re-registration probe.
    nosec_probe_timeout: float = 5.0
    # A positive probe is reused this long: a stream of impostors costs the device one probe
    # per interval (and a device that rebooted right after one waits at most this long).
    nosec_probe_memory_seconds: float = 10.0

    @property
    def base_uri(self) -> str:
        if self.public_uri:
            return self.public_uri.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"coap://{host}:{self.port}"

    @property
    def dtls_base_uri(self) -> str | None:
        """coaps://host:port devices use for DTLS (None when the DTLS listener is off)."""
        if self.dtls_host is None:
            return None
        if self.dtls_public_uri:
            return self.dtls_public_uri.rstrip("/")
        host = f"[{self.dtls_host}]" if ":" in self.dtls_host else self.dtls_host
        return f"coaps://{host}:{self.dtls_port}"

    @classmethod
    def from_settings(
        cls,
        *,
        bind: str | None = None,
        gateway_id: str | None = None,
        dtls_bind: str | None = None,
    ) -> Any:
        from django.conf import settings

        host, port = parse_bind(bind or settings.LWM2M_BIND)
        dtls_host: str | None = None
        dtls_port = 5684
        if dtls_bind or settings.LWM2M_DTLS_BIND:
            dtls_host, dtls_port = parse_bind(dtls_bind or settings.LWM2M_DTLS_BIND)
        return cls(
            gateway_id=gateway_id
            or settings.LWM2M_GATEWAY_ID
            or f"{socket.gethostname()}-{port}-{secrets.token_hex(3)}",
            host=host,
            port=port,
            public_uri=settings.LWM2M_PUBLIC_URI,
            min_lifetime=settings.LWM2M_MIN_LIFETIME,
            max_lifetime=settings.LWM2M_MAX_LIFETIME,
            max_payload=settings.LWM2M_MAX_PAYLOAD,
            request_timeout=settings.LWM2M_REQUEST_TIMEOUT,
            fw_poll_seconds=settings.LWM2M_FW_POLL_SECONDS,
            fw_update_timeout=settings.LWM2M_FW_UPDATE_TIMEOUT,
            expiry_sweep_seconds=settings.LWM2M_EXPIRY_SWEEP_SECONDS,
            recv_buffer_bytes=settings.LWM2M_RECV_BUFFER_BYTES,
            dtls_host=dtls_host,
            dtls_port=dtls_port,
            dtls_public_uri=settings.LWM2M_DTLS_PUBLIC_URI,
            accept_nosec=settings.LWM2M_ACCEPT_NOSEC,
            psk_refresh_seconds=settings.LWM2M_PSK_REFRESH_SECONDS,
            dtls_handshake_timeout=settings.LWM2M_DTLS_HANDSHAKE_TIMEOUT,
            dtls_max_sessions=settings.LWM2M_DTLS_MAX_SESSIONS,
            admission=admission.check_mode(settings.LWM2M_ADMISSION),
            max_registrations=settings.LWM2M_MAX_REGISTRATIONS,
        )


def parse_bind(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[v6]:PORT' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bind address {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - explicit bind-all


class HealthResource(_Handler):
    """GET /health: :meth:`Gateway.health` as JSON, to loopback peers only (4.04 to others)."""

    async def handle(self, request: aiocoap.Message, path: tuple[str, ...]) -> aiocoap.Message:
        host = admission.peer_address(request.remote)[0]
        if path or request.code != Code.GET or dtls.peer_identity(request.remote) is not None:
            return aiocoap.Message(code=Code.NOT_FOUND)
        if not (host == "::1" or host.startswith("127.")):
            return aiocoap.Message(code=Code.NOT_FOUND)
        body = json.dumps(self.gateway.health(), sort_keys=True).encode()
        return aiocoap.Message(code=Code.CONTENT, payload=body, content_format=50)


class _Root(resource.Resource, resource.PathCapable):
    """Routes /rd... and /fw... (aiocoap's Site cannot serve both /rd and /rd/<id>)."""

    def __init__(
        self, rd: RegistrationResource, fw: FirmwareResource, health: HealthResource
    ) -> None:
        super().__init__()
        self.children: dict[str, _Handler] = {"rd": rd, "fw": fw, "health": health}

    def _child(self, request: aiocoap.Message) -> _Handler | None:
        path = request.opt.uri_path
        return self.children.get(path[0]) if path else None

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        # Never aiocoap's spool: it buffers bodies without a limit. /rd assembles Block1 itself
        # (bounded), /fw answers Block2 itself, anything else is 4.04 whole.
        return False

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        # The sub-path is passed along rather than set on a copy of the request: copying a
        # message deep-copies it, which cost a tenth of the loop under a fleet's downloads.
        child = self._child(request)
        if child is None:
            return aiocoap.Message(code=Code.NOT_FOUND)
        return await child.serve(request, tuple(request.opt.uri_path[1:]))


class Gateway(RegistrationInterface, DeviceRequests, UpdateDriver, FirmwareServer, EventEmitter):
    """One LwM2M server process. Each interface it serves is a module of its own, mixed in here:
    registration (``registration``), device requests (``device_requests``), the firmware server
    (``fwserver``), the firmware-update driver (``fwupdate``) and events (``emitter``); this class
    holds their shared state, the lifecycle and the command loop."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        bus: InMemoryCommandBus | RedisCommandBus,
        sink: EventSink | None = None,
        firmware: FirmwareSource | None = None,
        psk_source: dtls.PSKSource | None = None,
        provisioned_source: admission.ProvisionedSource | None = None,
    ) -> None:
        admission.check_mode(config.admission)
        self.config = config
        self.bus = bus
        self.sink = sink or CeleryEventSink()
        self.firmware = firmware or DjangoFirmwareSource()
        self.psk_cache: dtls.PSKCache | None = None
        if config.dtls_host is not None:
            self.psk_cache = dtls.PSKCache(
                psk_source or dtls.DjangoPSKSource(),
                refresh_seconds=config.psk_refresh_seconds,
                miss_refresh_seconds=config.psk_miss_refresh_seconds,
            )
        self.dtls: dtls.DTLSListener | None = None
        self._claimed_dtls_port: int | None = None
        self.by_id: dict[str, Registration] = {}
        self.by_endpoint: dict[str, Registration] = {}
        self.context: aiocoap.Context | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events = ThreadPoolExecutor(
            max_workers=EVENT_THREADS, thread_name_prefix="lwm2m-events"
        )
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="lwm2m-io")
        self._fw_attempts: dict[str, asyncio.Task[Any]] = {}
        self._fw_cancelled: set[str] = set()
        self._fw_cache: OrderedDict[tuple[str, str], PublishedFile] = OrderedDict()
        self._fw_cache_bytes = 0
        self._fw_paths: dict[bytes, dict[bytes, bytes]] = {}
        # Command ids run lately (None while running, else the outcome), oldest first.
        self._commands_seen: OrderedDict[str, events.CommandResult | None] = OrderedDict()
        # Bus entries naming a command id that is still running here (delivered again): all
        # acknowledged when it ends, so none comes back after a restart to run it twice.
        self._command_tokens: dict[str, list[str]] = {}
        self._event_queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[None]]] | None = None
        self.stats = {"registrations": 0, "updates": 0, "refused": 0, "commands": 0}
        self._claimed_port: int | None = None
        # Hostile-input bounds (docs/lwm2m.md, "Hostile input"): refusal counters and log
        # limiter, Block1 bodies, the provisioned endpoints, device-information reads in flight.
        self.guard = screened.InputGuard()
        self.block1 = Block1Assembler(max_bytes=config.max_payload)
        self.provisioned: admission.ProvisionedCache | None = None
        if config.admission == "provisioned":
            self.provisioned = admission.ProvisionedCache(
                provisioned_source or selectors.DjangoProvisionedSource(),
                refresh_seconds=config.provisioned_refresh_seconds,
                miss_refresh_seconds=config.psk_miss_refresh_seconds,
            )
        self._info_slots: asyncio.Semaphore | None = None
        self._info_pending = 0
        self._probes: dict[str, asyncio.Future[bool]] = {}

    async def start(self) -> None:
        site = _Root(RegistrationResource(self), FirmwareResource(self), HealthResource(self))
        if self.config.port == 0:
            # Port 0 asks for any free port: claim an exclusive one (workers.lwm2m.ports).
            self.config.port = claim_udp_port(self.config.host)
            self._claimed_port = self.config.port
        elif not self.config.reuse_port:
            require_free_udp_port(self.config.host, self.config.port)
        self._info_slots = asyncio.Semaphore(self.config.device_info_concurrency)
        screened.quiet_transient_errors(asyncio.get_running_loop())
        if self.provisioned is not None:
            await self._start_provisioned(self.provisioned)
        self.context = await screened.open_server_context(
            site,
            host=self.config.host,
            port=self.config.port,
            max_datagram=self.config.max_payload + screened.DATAGRAM_OVERHEAD,
            guard=self.guard,
            direct=self.direct_fw_answer,
            known=self.known_fw_answer,
        )
        self._configure_sockets()
        self._event_queue = asyncio.Queue()
        self._spawn(self._event_pump(self._event_queue))
        if self.psk_cache is not None:
            await self._start_dtls(self.psk_cache)
        if isinstance(self.bus, InMemoryCommandBus):
            self.bus.attach(self.config.gateway_id)
        self._spawn(self._expiry_loop())
        self._spawn(self._command_loop())
        log.info(
            "gateway %s listening on %s%s (NoSec registrations %s, admission %s)",
            self.config.gateway_id,
            self.config.base_uri,
            f" and {self.config.dtls_base_uri}" if self.dtls is not None else "",
            "accepted" if self.config.accept_nosec else "refused",
            self.config.admission,
        )
        if self.config.accept_nosec:
            log.warning(
                "gateway %s accepts NoSec (plain CoAP, unauthenticated) registrations on %s: "
                "a NoSec device is known only by its address (docs/lwm2m.md, Admission)",
                self.config.gateway_id,
                self.config.base_uri,
            )

    async def _start_provisioned(self, cache: admission.ProvisionedCache) -> None:
        """Load the registry's endpoints (off the loop) before the listener opens; keep them
        fresh on a worker thread."""
        loop = asyncio.get_running_loop()

        def run(fn: Callable[[], Any]) -> Awaitable[Any]:
            return loop.run_in_executor(self._io, fn)

        await cache.refresh(run)
        self._spawn(cache.run_forever(run))

    def refused(self, request: aiocoap.Message, exc: LwM2MError) -> None:
        """Count a refused request and log it (escaped, at most a few lines per code and
        interval: a flood of bad requests costs a line per interval, not one per request)."""
        self.stats["refused"] += 1
        self.guard.counts[exc.code] += 1
        allowed, held = self.guard.limiter.allow(exc.code, now=time.monotonic())
        if allowed:
            log.warning(
                "refused %s %s from %s: %s [%s]%s",
                request.code,
                logsafe.shown("/".join(request.opt.uri_path)),
                request.remote.hostinfo,
                logsafe.one_line(str(exc)),
                exc.code,
                f" ({held} more [{exc.code}] since the last line)" if held else "",
            )

    def health(self) -> dict[str, Any]:
        """What an operator checks: security posture first, then load and refusals."""
        return {
            "gateway_id": self.config.gateway_id,
            "nosec_accepted": self.config.accept_nosec,
            "admission": self.config.admission,
            "dtls": self.config.dtls_base_uri,
            "registrations": len(self.by_id),
            "max_registrations": self.config.max_registrations,
            "provisioned_endpoints": len(self.provisioned) if self.provisioned else None,
            "block1_bodies": len(self.block1),
            "device_info_passes_pending": self._info_pending,
            "datagrams_received": self.guard.received,
            "refused": dict(self.guard.counts),
            "stats": dict(self.stats),
        }

    async def _start_dtls(self, cache: dtls.PSKCache) -> None:
        """Load the PSKs (off the loop), then open the coaps listener on the same context."""
        if self.context is None or self.config.dtls_host is None:
            raise RuntimeError("the DTLS listener needs the started context and a DTLS host")
        loop = asyncio.get_running_loop()

        def run(fn: Callable[[], Any]) -> Awaitable[Any]:
            return loop.run_in_executor(self._io, fn)

        await cache.refresh(run)
        if self.config.dtls_port == 0:
            # Port 0 asks for any free port: claim an exclusive one (workers.lwm2m.ports).
            self.config.dtls_port = claim_udp_port(self.config.dtls_host)
            self._claimed_dtls_port = self.config.dtls_port
        self.dtls = await dtls.open_listener(
            self.context,
            host=self.config.dtls_host,
            port=self.config.dtls_port,
            keys=cache,
            handshake_timeout=self.config.dtls_handshake_timeout,
            max_sessions=self.config.dtls_max_sessions,
            recv_buffer_bytes=self.config.recv_buffer_bytes,
        )
        self._spawn(cache.run_forever(run))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if isinstance(self.bus, InMemoryCommandBus):
            self.bus.detach(self.config.gateway_id)
        if self.context is not None:
            await self.context.shutdown()
            self.context = None
        if self._claimed_port is not None:
            release_udp_port(self.config.host, self._claimed_port)
            self._claimed_port = None
        if self._claimed_dtls_port is not None and self.config.dtls_host is not None:
            release_udp_port(self.config.dtls_host, self._claimed_dtls_port)
            self._claimed_dtls_port = None
        self.dtls = None
        await _close_db_connections(self._events, EVENT_THREADS)
        await _close_db_connections(self._io, IO_THREADS)
        self._events.shutdown(wait=True)
        self._io.shutdown(wait=False)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed", exc_info=task.exception())

    def _configure_sockets(self) -> None:
        """On the CoAP server socket: ``SO_REUSEPORT`` as configured (aiocoap always sets it
        before binding; cleared after the bind, no other socket can join the port: Linux checks
        the flag of the sockets already bound), and ``recv_buffer_bytes`` of receive buffer
        (aiocoap keeps the default, about 200 KiB: a few hundred devices' requests at once
        overflowed it and the dropped datagrams cost each device a retransmission timeout)."""
        if self.context is None:
            return
        for transport in self.context.request_interfaces:
            inner = getattr(transport, "token_interface", transport)
            inner = getattr(inner, "message_interface", inner)
            sock_transport = getattr(inner, "transport", None)
            sock = sock_transport.get_extra_info("socket") if sock_transport else None
            if sock is None:
                continue
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(self.config.reuse_port))
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.recv_buffer_bytes)
            log.debug(
                "receive buffer of %s: %d bytes",
                sock.getsockname(),
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            )

    async def _command_loop(self) -> None:
        """Consume commands for ever: a bus that fails (a Redis read timing out under load, a
        Redis restart) is read again after a pause, from this gateway's unfinished entries on,
        instead of ending the loop (a gateway that stops taking commands stalls every campaign
        of its devices while it keeps answering them)."""
        while True:
            try:
                await self._consume_commands()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "command bus of %s failed (%s); reading it again in %.0f s",
                    self.config.gateway_id,
                    logsafe.one_line(repr(exc)),
                    COMMAND_BUS_RETRY_SECONDS,
                )
                await asyncio.sleep(COMMAND_BUS_RETRY_SECONDS)

    async def _consume_commands(self) -> None:
        async for token, command in self.bus.consume(self.config.gateway_id):
            command_id = str(command.get("command_id", ""))
            if command_id and command_id in self._commands_seen:
                # Delivered again (the sender or the bus is at-least-once): never run twice.
                # A finished one has its outcome reported again (applying it is idempotent).
                outcome = self._commands_seen[command_id]
                if outcome is None:
                    # Still running: acknowledged with it when it ends.
                    tokens = self._command_tokens.setdefault(command_id, [])
                    if token not in tokens:
                        tokens.append(token)
                    continue
                await self.emit(outcome)
                await self.bus.ack(self.config.gateway_id, token)
                continue
            if command_id:
                self._commands_seen[command_id] = None
                while len(self._commands_seen) > COMMANDS_REMEMBERED:
                    self._commands_seen.popitem(last=False)
            self.stats["commands"] += 1
            self._spawn(self._run_command(token, command))

    async def _run_command(self, token: str, command: dict[str, Any]) -> None:
        command_id = str(command.get("command_id", ""))
        try:
            result = await self.run_operation(
                str(command.get("endpoint", "")),
                str(command.get("operation", "")),
                dict(command.get("args") or {}),
                command_id=command_id,
            )
            result = dict(result)
            outcome = events.CommandResult(
                command_id=command_id,
                ok=True,
                suit_report=str(result.pop("suit_report", "")),
                result=result,
            )
        except LwM2MError as exc:
            failed = dict(getattr(exc, "result", None) or {})
            outcome = events.CommandResult(
                command_id=command_id,
                ok=False,
                suit_report=str(failed.pop("suit_report", "")),
                result=failed,
                error_code=exc.code,
                error=str(exc),
                # A refusal of the request itself (bad path, codec error) cannot pass by trying
                # again; a device operation says which it is.
                permanent=getattr(exc, "permanent", True),
            )
        except Exception as exc:
            log.exception("command %s failed", command_id)
            outcome = events.CommandResult(
                command_id=command_id, ok=False, error_code="lwm2m.internal", error=repr(exc)
            )
        if command_id:
            if command_id in self._commands_seen:
                self._commands_seen[command_id] = outcome
            await self.emit(outcome)
        for each in {token, *self._command_tokens.pop(command_id, ())}:
            await self.bus.ack(self.config.gateway_id, each)

    def registration(self, endpoint: str) -> Registration:
        reg = self.by_endpoint.get(endpoint)
        if reg is None:
            raise DeviceNotConnectedError(f"{endpoint!r} holds no registration on this gateway")
        return reg

    async def run_operation(
        self, endpoint: str, operation: str, args: dict[str, Any], *, command_id: str = ""
    ) -> dict[str, Any]:
        """One device operation; raises LwM2MError subclasses on refusal or failure. An update
        with a ``command_id`` records its phases under it (a claim on the bus) and, given the
        same id again after a restart, resumes instead of starting over."""
        handlers: dict[str, Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "read": self._op_read,
            "execute": self._op_execute,
            "write_uri": self._op_write_uri,
            "fw_update": functools.partial(self._op_fw_update, command_id=command_id),
            "fw_cancel": self._op_fw_cancel,
            "read_info": self._op_read_info,
        }
        handler = handlers.get(operation)
        if handler is None:
            raise DeviceOperationError(f"unknown operation {operation!r}", permanent=True)
        return await handler(endpoint, args)

    async def _op_read(self, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
        path = content.parse_path(str(args.get("path", "")))
        values = await self.read(self.registration(endpoint), path)
        return {"values": {content.format_path(p): _jsonable(v) for p, v in values.items()}}

    async def _op_read_info(self, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
        """Read the device information again (the fleet side asks when what it holds is stale:
        a clock that was off, a class created after the device registered); reported as a
        device_info event, exactly as after a registration."""
        await self.read_device_info(self.registration(endpoint))
        return {}

    async def _op_execute(self, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
        path = content.parse_path(str(args.get("path", "")))
        if path == (5, 0, 2):
            raise DeviceOperationError("use fw_update to trigger /5/0/2", permanent=True)
        await self.execute(self.registration(endpoint), path)
        return {}


async def _close_db_connections(executor: ThreadPoolExecutor, threads: int) -> None:
    """Close the database connection of every thread of ``executor`` (Django keeps one per
    thread; left open, a stopped gateway would hold server sessions until the process exits).
    A barrier makes each of the ``threads`` workers take exactly one of the close calls."""
    from django.db import connections

    barrier = threading.Barrier(threads)

    def close() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=5)
        connections.close_all()

    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(executor, close) for _ in range(threads)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, content.ObjLink):
        return str(value)
    return value


class GatewayThread:
    """Runs a gateway on its own event loop in a daemon thread (tests, the embedded demo)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lwm2m-gateway", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.gateway.start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self) -> GatewayThread:
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def call(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.call(self.gateway.stop(), timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


__all__ = [
    "CeleryEventSink",
    "DjangoFirmwareSource",
    "EventSink",
    "FirmwareSource",
    "Gateway",
    "GatewayConfig",
    "GatewayThread",
    "PublishedFile",
    "Registration",
]
