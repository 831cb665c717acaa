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
import dataclasses
import hashlib
import json
import logging
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code

from campaigns import events
from workers.lwm2m import admission, content, dtls, logsafe, names, selectors
from workers.lwm2m import transport as screened
from workers.lwm2m.block1 import Block1Assembler
from workers.lwm2m.blocks import block_slice
from workers.lwm2m.bus import InMemoryCommandBus, RedisCommandBus
from workers.lwm2m.errors import (
    DeviceBusyError,
    DeviceNotConnectedError,
    DeviceOperationError,
    DeviceTimeoutError,
    LwM2MError,
    PayloadTooLargeError,
    RegistrationError,
    UnknownRegistrationError,
    UnsupportedProtocolError,
    UpdateCancelledError,
    UpdateFailedError,
    UpdateTimedOutError,
)
from workers.lwm2m.linkformat import RegisteredObjects, parse_registration_payload
from workers.lwm2m.object5 import PROTOCOL_SCHEMES, FwState, Phase, UpdateTracker, Verdict
from workers.lwm2m.ports import claim_udp_port, release_udp_port

log = logsafe.guard(logging.getLogger("workers.lwm2m.gateway"))

SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")
BINDING_CHARS = set("UQSTN")
# A queue-mode device listens for about MAX_TRANSMIT_WAIT (RFC 7252) after each message it sends.
QUEUE_AWAKE_SECONDS = 93.0
DEFAULT_BLOCK_SZX = 6
# Package URI schemes a device that registered over DTLS may be sent to.
SECURE_SCHEMES = frozenset({"coaps", "https", "coaps+tcp"})
# One event thread keeps a gateway's events in order; I/O threads read firmware from the store.
EVENT_THREADS = 1
IO_THREADS = 4

# Firmware bytes kept in memory by a gateway (least recently used dropped beyond this).
FW_CACHE_BYTES = 256 * 1024 * 1024

# Command ids a gateway remembers to recognise a repeated delivery.
COMMANDS_REMEMBERED = 10_000

# Device-information reads after a registration: attempts, and the first pause between them
# (doubling each time).
DEVICE_INFO_ATTEMPTS = 4
DEVICE_INFO_RETRY_SECONDS = 1.0

# Most events handed to the sink at once (one task, one transaction).
EVENT_BATCH = 100

# Attempts to hand one event to the sink before giving up (with exponential backoff).
EMIT_ATTEMPTS = 5

# NoSec re-registration probes (workers.lwm2m.admission) in flight at once.
MAX_PROBES = 64


# --- collaborators ----------------------------------------------------------------------------


class EventSink(Protocol):
    def emit(self, event: dict[str, Any]) -> None:
        """Deliver one device event (blocking is fine: called on the gateway's event thread)."""


class CeleryEventSink:
    """Events as ``device_events_task`` batches, or one ``device_event_task`` (run inline when
    Celery is eager: the embedded default)."""

    def emit_many(self, events: list[dict[str, Any]]) -> None:
        from workers.tasks import device_events_task

        device_events_task.delay(events)

    def emit(self, event: dict[str, Any]) -> None:
        from workers.tasks import device_event_task

        device_event_task.delay(event)


@dataclass(frozen=True)
class PublishedFile:
    """Bytes served under /fw and their ETag (first 8 bytes of their SHA-256, computed once)."""

    data: bytes
    etag: bytes


class FirmwareSource(Protocol):
    def envelope(self, manifest_digest: str) -> bytes | None: ...

    def image(self, sha256: str) -> bytes | None: ...


class DjangoFirmwareSource:
    """Envelopes from ``Manifest.envelope`` (exact bytes), payloads from the image store."""

    def envelope(self, manifest_digest: str) -> bytes | None:
        from manifests.models import Manifest

        row = Manifest.objects.filter(manifest_digest=manifest_digest).only("envelope").first()
        return bytes(row.envelope) if row is not None else None

    def image(self, sha256: str) -> bytes | None:
        from manifests.services import image_storage

        store = image_storage()
        if not store.exists(sha256):
            return None
        data: bytes = store.read(sha256)
        return data


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
    expiry_sweep_seconds: float = 1.0
    write_format: int = content.CT_TLV
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
    dtls_handshake_timeout: float = 10.0
    dtls_max_sessions: int = 10000
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


# --- registrations ----------------------------------------------------------------------------


@dataclass
class Registration:
    reg_id: str
    endpoint: str
    remote: Any
    lifetime: int
    binding: str
    version: str
    queue_mode: bool
    objects: RegisteredObjects
    deadline: float  # monotonic
    created: float = field(default_factory=time.time)
    awake_until: float = 0.0  # monotonic
    awake: asyncio.Event = field(default_factory=asyncio.Event)
    protocols: list[int] | None = None
    replaced: asyncio.Event = field(default_factory=asyncio.Event)
    identity: str | None = None  # authenticated DTLS PSK identity; None: registered in NoSec
    info_incomplete: bool = False  # some device-information reads never answered

    def touch(self, now: float) -> None:
        self.deadline = now + self.lifetime
        self.awake_until = now + QUEUE_AWAKE_SECONDS
        self.awake.set()

    def object_links(self) -> list[str]:
        return [
            f"/{o.object_id}" + (f"/{o.instance_id}" if o.instance_id is not None else "")
            for o in self.objects.objects
        ]


def _query(request: aiocoap.Message) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in request.opt.uri_query:
        key, eq, value = item.partition("=")
        if key in out:
            raise RegistrationError(f"query parameter {key!r} given twice")
        out[key] = value if eq else None
    return out


def _lifetime(text: str | None, config: GatewayConfig) -> int:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 10:
        raise RegistrationError(f"lifetime {text!r} is not a number of seconds")
    value = int(text)
    if not config.min_lifetime <= value <= config.max_lifetime:
        raise RegistrationError(
            f"lifetime {value} outside {config.min_lifetime}..{config.max_lifetime}"
        )
    return value


def _binding(text: str | None) -> tuple[str, bool]:
    """LwM2M 1.0 binding 'UQ' means UDP + queue mode; 1.1 moves queue mode to the Q parameter."""
    binding = text or "U"
    if not binding or len(binding) > 8 or not set(binding) <= BINDING_CHARS:
        raise RegistrationError(f"binding {binding[:10]!r} is not one of U, Q, S, T, N")
    return binding.replace("Q", "") or "U", "Q" in binding


def _error_response(exc: LwM2MError) -> aiocoap.Message:
    code = getattr(Code, exc.coap_code, Code.BAD_REQUEST)
    return aiocoap.Message(code=code, payload=f"{exc.code}: {exc}"[:200].encode())


class _Handler(resource.Resource, resource.PathCapable):
    """Base: routes paths itself and turns errors into CoAP codes plus one log line."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    async def serve(self, request: aiocoap.Message, path: tuple[str, ...]) -> aiocoap.Message:
        """Answer ``request`` whose path below this resource is ``path``."""
        try:
            return await self.handle(request, path)
        except LwM2MError as exc:
            self.gateway.refused(request, exc)
            return _error_response(exc)
        except Exception:
            log.exception(
                "internal error on %s %s",
                request.code,
                logsafe.shown("/".join(request.opt.uri_path)),
            )
            return aiocoap.Message(code=Code.INTERNAL_SERVER_ERROR)

    async def handle(self, request: aiocoap.Message, path: tuple[str, ...]) -> aiocoap.Message:
        """Answer one request; each resource below implements it (this base only maps errors)."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle()")


class RegistrationResource(_Handler):
    """/rd (Register) and /rd/<id> (Update, De-register)."""

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # Block1 bodies are assembled with a size cap (workers.lwm2m.block1)

    async def handle(self, request: aiocoap.Message, path: tuple[str, ...]) -> aiocoap.Message:
        block1 = request.opt.block1
        request, early = screened.take_block1(self.gateway.block1, request)
        if early is not None:
            return early  # 2.31 Continue: more blocks to come
        if len(request.payload) > self.gateway.config.max_payload:
            raise PayloadTooLargeError(f"payload of {len(request.payload)} bytes")
        response = await self._route(request, path)
        if block1 is not None:
            response.opt.block1 = block1  # RFC 7959 2.3: the last block's option, acknowledged
        return response

    async def _route(self, request: aiocoap.Message, path: tuple[str, ...]) -> aiocoap.Message:
        if path == () and request.code == Code.POST:
            return await self.gateway.register(request)
        if len(path) == 1 and request.code == Code.POST:
            return await self.gateway.update(path[0], request)
        if len(path) == 1 and request.code == Code.DELETE:
            return await self.gateway.deregister(path[0], request)
        if len(path) > 1:
            raise UnknownRegistrationError("no such registration resource")
        return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)


class FirmwareResource(_Handler):
    """/fw/m/<manifest digest> and /fw/i/<sha256>: immutable, Block2 by block number."""

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # we answer Block2 ourselves so any block can be asked for directly

    async def handle(self, request: aiocoap.Message, path: tuple[str, ...]) -> aiocoap.Message:
        if request.code != Code.GET:
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        if len(path) != 2 or path[0] not in ("m", "i"):
            return aiocoap.Message(code=Code.NOT_FOUND)
        digest = path[1].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            return aiocoap.Message(code=Code.NOT_FOUND)
        published = await self.gateway.published_file(path[0], digest)
        if published is None:
            return aiocoap.Message(code=Code.NOT_FOUND)
        data = published.data
        if request.opt.block2 is not None:
            num, szx = request.opt.block2.block_number, request.opt.block2.size_exponent
        else:
            num, szx = 0, DEFAULT_BLOCK_SZX
        part = block_slice(len(data), num, min(szx, DEFAULT_BLOCK_SZX))
        response = aiocoap.Message(code=Code.CONTENT, payload=data[part.start : part.end])
        response.opt.content_format = content.CT_OPAQUE
        response.opt.etag = published.etag
        response.opt.size2 = len(data)
        response.opt.max_age = 86400
        if part.more or request.opt.block2 is not None or num > 0:
            response.opt.block2 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(
                part.num, part.more, part.szx
            )
        return response


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


# --- the gateway --------------------------------------------------------------------------------


class Gateway:
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
        # Command ids run lately (None while running, else the outcome), oldest first.
        self._commands_seen: OrderedDict[str, events.CommandResult | None] = OrderedDict()
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

    # lifecycle

    async def start(self) -> None:
        site = _Root(RegistrationResource(self), FirmwareResource(self), HealthResource(self))
        if self.config.port == 0:
            # Port 0 asks for any free port: claim an exclusive one (workers.lwm2m.ports).
            self.config.port = claim_udp_port(self.config.host)
            self._claimed_port = self.config.port
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
        )
        self._size_receive_buffer()
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

    def _size_receive_buffer(self) -> None:
        """Ask for ``recv_buffer_bytes`` of socket receive buffer (aiocoap keeps the default,
        about 200 KiB: a few hundred devices' requests at once overflowed it and the dropped
        datagrams cost each device a CoAP retransmission timeout)."""
        if self.context is None:
            return
        for transport in self.context.request_interfaces:
            inner = getattr(transport, "token_interface", transport)
            inner = getattr(inner, "message_interface", inner)
            sock_transport = getattr(inner, "transport", None)
            sock = sock_transport.get_extra_info("socket") if sock_transport else None
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.recv_buffer_bytes)
            log.debug(
                "receive buffer of %s: %d bytes",
                sock.getsockname(),
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            )

    async def emit(self, event: events.DeviceEvent) -> None:
        """Queue an event for the sink and wait until it was handed over (or given up on).

        The event is stamped with this gateway and the time, and travels in its JSON form (the
        contract is ``campaigns.events``). One pump hands queued events to the sink in batches,
        on the single event thread, in the order they were emitted (so per-gateway order
        holds)."""
        data = dataclasses.replace(
            event, gateway_id=self.config.gateway_id, at=time.time()
        ).to_dict()
        if self._event_queue is None:
            raise RuntimeError("gateway not started")
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._event_queue.put_nowait((data, delivered))
        await asyncio.shield(delivered)

    async def _event_pump(
        self, queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[None]]]
    ) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < EVENT_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._deliver([event for event, _ in batch])
            finally:
                for _, delivered in batch:
                    if not delivered.done():
                        delivered.set_result(None)

    async def _deliver(self, events: list[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(EMIT_ATTEMPTS):
            try:
                await loop.run_in_executor(self._events, self._sink_emit, events)
                return
            except Exception as exc:
                # Transient (broker hiccup, SQLite lock): retry a few times, then log it. The
                # events are idempotent, so a batch applied in part may be applied again.
                if attempt == EMIT_ATTEMPTS - 1:
                    kinds = sorted({str(e.get("type")) for e in events})
                    log.error("event sink failed for %d events %s: %r", len(events), kinds, exc)
                    return
                await asyncio.sleep(0.05 * (2**attempt))

    def _sink_emit(self, events: list[dict[str, Any]]) -> None:
        emit_many = getattr(self.sink, "emit_many", None)
        if emit_many is not None and len(events) > 1:
            emit_many(events)
            return
        for event in events:
            self.sink.emit(event)

    # registration interface

    async def register(self, request: aiocoap.Message) -> aiocoap.Message:
        query = _query(request)
        endpoint = names.check_endpoint_name(query.get("ep"))
        identity = self._check_endpoint_security(endpoint, request)
        self._check_admitted(endpoint, identity)
        lifetime = _lifetime(query.get("lt", "86400"), self.config)
        version = query.get("lwm2m") or "1.0"
        if version not in SUPPORTED_VERSIONS:
            raise RegistrationError(f"LwM2M version {version[:8]!r} not supported")
        binding, queue = _binding(query.get("b"))
        if "Q" in query:
            if query["Q"] is not None:
                raise RegistrationError("Q takes no value")
            queue = True
        if request.opt.content_format not in (None, content.CT_LINK_FORMAT):
            raise RegistrationError("registration payload must be link format")
        objects = parse_registration_payload(request.payload)
        await self._check_may_replace(endpoint, identity, request)
        now = time.monotonic()
        reg = Registration(
            reg_id=secrets.token_hex(8),
            endpoint=endpoint,
            remote=request.remote,
            lifetime=lifetime,
            binding=binding,
            version=version,
            queue_mode=queue,
            objects=objects,
            deadline=now + lifetime,
            identity=identity,
        )
        reg.touch(now)
        old = self.by_endpoint.get(endpoint)
        if old is not None:
            self.by_id.pop(old.reg_id, None)
            old.replaced.set()
        self.by_id[reg.reg_id] = reg
        self.by_endpoint[endpoint] = reg
        self.stats["registrations"] += 1
        self._spawn(self._after_register(reg))
        return aiocoap.Message(code=Code.CREATED, location_path=("rd", reg.reg_id))

    def _check_endpoint_security(self, endpoint: str, request: aiocoap.Message) -> str | None:
        """The DTLS identity that may register ``endpoint``, or an error (4.03) saying why not.

        A DTLS peer may register only the endpoint named by its PSK identity. A NoSec peer may
        register only when NoSec is accepted, and never an endpoint that has a PSK (else anyone
        could replace a DTLS device's registration over plain CoAP).
        """
        identity = dtls.peer_identity(request.remote)
        if identity is None:
            if not self.config.accept_nosec:
                raise dtls.NoSecRefusedError(
                    f"plain CoAP registration of {endpoint[:64]!r} refused: this gateway "
                    "accepts DTLS (coaps) registrations only"
                )
            if self.psk_cache is not None and self.psk_cache.has(endpoint):
                raise dtls.IdentityMismatchError(
                    f"{endpoint[:64]!r} has a PSK: it must register over DTLS"
                )
        elif identity != endpoint:
            raise dtls.IdentityMismatchError(
                f"DTLS identity {identity!r} may not register endpoint {endpoint[:64]!r}"
            )
        return identity

    @staticmethod
    def _check_same_peer(reg: Registration, request: aiocoap.Message, action: str) -> None:
        """Update and De-register must come from the registration's own peer (4.03 if not):
        the identity that registered over DTLS, or for NoSec the same address and port."""
        identity = dtls.peer_identity(request.remote)
        if identity != reg.identity:
            raise dtls.IdentityMismatchError(
                f"{action} of {reg.endpoint!r}'s registration from "
                f"{'DTLS identity ' + repr(identity) if identity else 'a NoSec peer'} refused"
            )
        if not admission.same_peer(
            reg_identity=reg.identity,
            reg_address=admission.peer_address(reg.remote),
            identity=identity,
            address=admission.peer_address(request.remote),
        ):
            raise admission.NotSamePeerError(
                f"{action} of {reg.endpoint!r}'s NoSec registration from another address than "
                "the one that registered (a device that moved registers again)"
            )

    def _check_admitted(self, endpoint: str, identity: str | None) -> None:
        """Provisioned admission: only endpoints the registry knows (4.03, nothing written).
        A DTLS identity is provisioned by definition (its key is a DevicePSK row)."""
        if self.provisioned is None or identity is not None:
            return
        if not self.provisioned.has(endpoint):
            raise admission.NotProvisionedError(
                f"endpoint {endpoint!r} is not provisioned on this server"
            )

    async def _check_may_replace(
        self, endpoint: str, identity: str | None, request: aiocoap.Message
    ) -> None:
        """Room for a new endpoint (else 5.03), and the NoSec re-registration rule
        (workers.lwm2m.admission) when the endpoint's live registration has another address."""
        old = self.by_endpoint.get(endpoint)
        if old is None:
            if len(self.by_id) >= self.config.max_registrations:
                raise admission.RegistryFullError(
                    f"this gateway holds {len(self.by_id)} registrations, its limit"
                )
            return
        if identity is not None or old.identity is not None:
            return  # DTLS: the identity is the endpoint (checked above); the newest wins
        rule = admission.reregistration_rule(
            mode=self.config.admission,
            old_address=admission.peer_address(old.remote),
            new_address=admission.peer_address(request.remote),
            old_expired=old.deadline < time.monotonic(),
        )
        if rule is admission.Rule.PROBE and await self._old_peer_answers(old):
            raise admission.RegistrationConflictError(
                f"{endpoint!r} is registered from another address that still answers; "
                "it must de-register (or stop answering) first"
            )

    async def _old_peer_answers(self, reg: Registration) -> bool:
        """Whether anything answers at ``reg``'s address (one GET of /3/0/0; any CoAP answer,
        4.04 or a reset counts). One probe per endpoint at a time, a positive one remembered
        for ``nosec_probe_memory_seconds``, at most MAX_PROBES at once (past it: assume it
        answers)."""
        probe = self._probes.get(reg.endpoint)
        if probe is None:
            if len(self._probes) >= MAX_PROBES or self.context is None:
                return True
            probe = asyncio.get_running_loop().create_future()
            self._probes[reg.endpoint] = probe
            self._spawn(self._probe(reg, probe))
        return await asyncio.shield(probe)

    async def _probe(self, reg: Registration, probe: asyncio.Future[bool]) -> None:
        root = [s for s in reg.objects.root_path.strip("/").split("/") if s]
        message = aiocoap.Message(code=Code.GET, uri_path=[*root, "3", "0", "0"])
        message.remote = reg.remote
        answered = False
        try:
            if self.context is not None:
                request = self.context.request(message)
                await asyncio.wait_for(request.response, timeout=self.config.nosec_probe_timeout)
                answered = True
        except aiocoap.error.MessageError:  # a reset: something listens there
            answered = True
        except (TimeoutError, aiocoap.error.Error, OSError):
            answered = False
        finally:
            probe.set_result(answered)
            if answered:
                await asyncio.sleep(self.config.nosec_probe_memory_seconds)
            self._probes.pop(reg.endpoint, None)

    async def _after_register(self, reg: Registration) -> None:
        await self.emit(
            events.Registered(
                endpoint=reg.endpoint,
                registration_id=reg.reg_id,
                lifetime=reg.lifetime,
                binding=reg.binding,
                lwm2m_version=reg.version,
                queue_mode=reg.queue_mode,
                objects=tuple(reg.object_links()),
            )
        )
        await self.read_device_info(reg)

    async def read_device_info(self, reg: Registration) -> None:
        """Read /3/0/{0,1,2,3,13} and /5/0/{8,9}; report what answered.

        A read that failed for a passing reason (no answer in time: a device busy, a burst of
        registrations) is tried again, DEVICE_INFO_ATTEMPTS times in all with a growing pause;
        a definite answer (4.04 for a resource the device lacks) is not. What is still missing
        then is read again at the device's next registration update."""
        wanted: list[content.Path] = [(3, 0, 0), (3, 0, 1), (3, 0, 2), (3, 0, 3), (3, 0, 13)]
        if reg.objects.has_object(5):
            wanted += [(5, 0, 8), (5, 0, 9)]
        values: dict[content.Path, content.Value] = {}
        missing = wanted
        for attempt in range(DEVICE_INFO_ATTEMPTS):
            if attempt:
                await asyncio.sleep(DEVICE_INFO_RETRY_SECONDS * 2 ** (attempt - 1))
                if self.by_id.get(reg.reg_id) is not reg:
                    return  # re-registered or gone: the new registration reads for itself
            results = await self._bounded_reads(reg, missing)
            retry: list[content.Path] = []
            for path, result in zip(missing, results, strict=True):
                if isinstance(result, BaseException):
                    log.info(
                        "read %s on %s failed: %s", content.format_path(path), reg.endpoint, result
                    )
                    if not getattr(result, "permanent", False):
                        retry.append(path)
                    continue
                values.update(result)
            missing = retry
            if not missing:
                break
        reg.info_incomplete = bool(missing)
        if missing:
            log.warning(
                "device information of %s incomplete after %d attempts (%s); read again at its "
                "next update",
                reg.endpoint,
                DEVICE_INFO_ATTEMPTS,
                ", ".join(content.format_path(p) for p in missing),
            )
        protocols = sorted(
            int(v) for p, v in values.items() if p[:3] == (5, 0, 8) and isinstance(v, int)
        )
        if (5, 0, 8) in [p[:3] for p in values]:
            reg.protocols = protocols
        await self.emit(
            events.DeviceInfo(
                endpoint=reg.endpoint,
                manufacturer=_text(values.get((3, 0, 0))),
                model=_text(values.get((3, 0, 1))),
                serial=_text(values.get((3, 0, 2))),
                firmware_version=_text(values.get((3, 0, 3))),
                device_time=_number(values.get((3, 0, 13))),
                protocols=tuple(protocols) if reg.protocols is not None else None,
                delivery_method=_integer(values.get((5, 0, 9))),
            )
        )

    async def _bounded_reads(
        self, reg: Registration, paths: list[content.Path]
    ) -> list[dict[content.Path, Any] | BaseException]:
        """The reads of one device-information pass, holding one of ``device_info_concurrency``
        slots: a burst of registrations (or of hostile ones that never answer) cannot make the
        gateway hold more than that many devices' requests in flight."""
        self._info_pending += 1
        try:
            slots = self._info_slots or asyncio.Semaphore(1)
            async with slots:
                if self.by_id.get(reg.reg_id) is not reg:
                    return [DeviceNotConnectedError("registration replaced")] * len(paths)
                return await asyncio.gather(
                    *(self.read(reg, path) for path in paths), return_exceptions=True
                )
        finally:
            self._info_pending -= 1

    async def update(self, reg_id: str, request: aiocoap.Message) -> aiocoap.Message:
        reg = self.by_id.get(reg_id)
        if reg is None:
            raise UnknownRegistrationError(f"registration {reg_id[:20]!r} is not held here")
        self._check_same_peer(reg, request, "update")
        query = _query(request)
        unknown = set(query) - {"lt", "b", "sms", "Q"}
        if unknown:
            raise RegistrationError(f"unknown update parameters {sorted(unknown)[:5]}")
        if "lt" in query:
            reg.lifetime = _lifetime(query["lt"], self.config)
        if "b" in query:
            reg.binding, queue = _binding(query["b"])
            reg.queue_mode = queue or "Q" in query
        objects_changed = False
        if request.payload:
            reg.objects = parse_registration_payload(request.payload)
            objects_changed = True
        reg.remote = request.remote  # NAT rebinding: answer where the device is now
        reg.touch(time.monotonic())
        self.stats["updates"] += 1
        if reg.info_incomplete:
            reg.info_incomplete = False
            self._spawn(self.read_device_info(reg))
        self._spawn(
            self.emit(
                events.Updated(
                    endpoint=reg.endpoint,
                    registration_id=reg.reg_id,
                    lifetime=reg.lifetime if "lt" in query else None,
                    binding=reg.binding if "b" in query else None,
                    objects=tuple(reg.object_links()) if objects_changed else None,
                )
            )
        )
        return aiocoap.Message(code=Code.CHANGED)

    async def deregister(self, reg_id: str, request: aiocoap.Message) -> aiocoap.Message:
        reg = self.by_id.get(reg_id)
        if reg is None:
            raise UnknownRegistrationError(f"registration {reg_id[:20]!r} is not held here")
        self._check_same_peer(reg, request, "de-registration")
        self.by_id.pop(reg_id, None)
        if self.by_endpoint.get(reg.endpoint) is reg:
            del self.by_endpoint[reg.endpoint]
        reg.replaced.set()
        self._spawn(
            self.emit(events.Deregistered(endpoint=reg.endpoint, registration_id=reg.reg_id))
        )
        return aiocoap.Message(code=Code.DELETED)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.expiry_sweep_seconds)
            now = time.monotonic()
            for reg in [r for r in self.by_id.values() if r.deadline < now]:
                self.by_id.pop(reg.reg_id, None)
                if self.by_endpoint.get(reg.endpoint) is reg:
                    del self.by_endpoint[reg.endpoint]
                reg.replaced.set()
                log.info("registration of %s expired", reg.endpoint)
                await self.emit(events.Expired(endpoint=reg.endpoint, registration_id=reg.reg_id))

    # device management interface (server -> device)

    async def _wait_reachable(self, reg: Registration) -> None:
        if not reg.queue_mode:
            return
        while time.monotonic() >= reg.awake_until:
            reg.awake.clear()
            # Queue mode: the request waits for the device's next Update (or Register).
            await asyncio.wait_for(reg.awake.wait(), timeout=reg.lifetime + 5)

    async def _request(
        self, reg: Registration, code: Code, path: content.Path, **kwargs: Any
    ) -> aiocoap.Message:
        if self.context is None:
            raise DeviceNotConnectedError("gateway is stopped")
        await self._wait_reachable(reg)
        if dtls.session_closed(reg.remote):
            raise DeviceOperationError(f"{reg.endpoint}: DTLS session closed; awaiting reconnect")
        root = [s for s in reg.objects.root_path.strip("/").split("/") if s]
        message = aiocoap.Message(code=code, uri_path=[*root, *map(str, path)], **kwargs)
        message.remote = reg.remote
        try:
            response = await asyncio.wait_for(
                self.context.request(message).response, timeout=self.config.request_timeout
            )
        except TimeoutError:
            raise DeviceTimeoutError(f"{reg.endpoint} did not answer in time") from None
        except aiocoap.error.Error as exc:
            raise DeviceOperationError(f"{reg.endpoint}: {exc}") from None
        self._check_response_peer(reg, response)
        return response

    @staticmethod
    def _check_response_peer(reg: Registration, response: aiocoap.Message) -> None:
        """A DTLS device's answers must come over a session of its own identity.

        aiocoap already matches a response by token *and* remote; this states the rule where it
        matters, so a change below cannot let another session answer for this device.
        """
        identity = dtls.peer_identity(response.remote)
        if identity != reg.identity:
            log.warning(
                "response for %s came from %s (identity %r): ignored",
                reg.endpoint,
                response.remote.hostinfo,
                identity,
            )
            raise DeviceOperationError(f"{reg.endpoint}: response from another peer ignored")

    async def read(self, reg: Registration, path: content.Path) -> dict[content.Path, Any]:
        response = await self._request(reg, Code.GET, path)
        if response.code != Code.CONTENT:
            raise DeviceOperationError(
                f"read {content.format_path(path)} on {reg.endpoint}: {response.code}",
                permanent=_client_error(response.code),
            )
        return content.decode(response.opt.content_format, response.payload, path)

    async def write(self, reg: Registration, path: content.Path, value: content.Value) -> None:
        fmt = self.config.write_format
        payload = content.encode(fmt, {path: value}, path)
        response = await self._request(reg, Code.PUT, path, payload=payload, content_format=fmt)
        if response.code != Code.CHANGED:
            raise DeviceOperationError(
                f"write {content.format_path(path)} on {reg.endpoint}: {response.code}",
                permanent=_client_error(response.code),
            )

    async def execute(self, reg: Registration, path: content.Path) -> None:
        response = await self._request(reg, Code.POST, path)
        if response.code != Code.CHANGED:
            raise DeviceOperationError(
                f"execute {content.format_path(path)} on {reg.endpoint}: {response.code}",
                permanent=_client_error(response.code),
            )

    # firmware server

    async def published_file(self, kind: str, digest: str) -> PublishedFile | None:
        """A firmware file by kind ("m" envelope, "i" image) and digest, with its ETag; cached
        (the bytes never change once published), least recently used dropped first."""
        key = (kind, digest)
        cached = self._fw_cache.get(key)
        if cached is not None:
            self._fw_cache.move_to_end(key)
            return cached
        loop = asyncio.get_running_loop()
        getter = self.firmware.envelope if kind == "m" else self.firmware.image
        data = await loop.run_in_executor(self._io, getter, digest)
        if data is None:
            return None
        if kind == "i" and hashlib.sha256(data).hexdigest() != digest:
            log.error("stored image %s does not match its digest; not serving it", digest)
            return None
        published = PublishedFile(data=data, etag=hashlib.sha256(data).digest()[:8])
        self._fw_cache[key] = published
        self._fw_cache_bytes += len(data)
        while self._fw_cache_bytes > FW_CACHE_BYTES and len(self._fw_cache) > 1:
            _, dropped = self._fw_cache.popitem(last=False)
            self._fw_cache_bytes -= len(dropped.data)
        return published

    def package_uri(self, manifest_digest: str, *, secure: bool = False) -> str:
        """Where a device downloads the envelope; ``secure``: over this gateway's coaps listener."""
        base = self.config.dtls_base_uri if secure else self.config.base_uri
        if base is None:
            raise DeviceOperationError("no DTLS listener for a coaps Package URI", permanent=True)
        return f"{base}/fw/m/{manifest_digest}"

    # commands

    async def _command_loop(self) -> None:
        async for token, command in self.bus.consume(self.config.gateway_id):
            command_id = str(command.get("command_id", ""))
            if command_id and command_id in self._commands_seen:
                # Delivered again (the sender or the bus is at-least-once): never run twice.
                # A finished one has its outcome reported again (applying it is idempotent).
                outcome = self._commands_seen[command_id]
                if outcome is not None:
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
            )
            outcome = events.CommandResult(command_id=command_id, ok=True, result=result)
        except LwM2MError as exc:
            outcome = events.CommandResult(
                command_id=command_id,
                ok=False,
                result=getattr(exc, "result", None) or {},
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
        await self.bus.ack(self.config.gateway_id, token)

    def registration(self, endpoint: str) -> Registration:
        reg = self.by_endpoint.get(endpoint)
        if reg is None:
            raise DeviceNotConnectedError(f"{endpoint!r} holds no registration on this gateway")
        return reg

    async def run_operation(
        self, endpoint: str, operation: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        """One device operation; raises LwM2MError subclasses on refusal or failure."""
        handlers: dict[str, Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "read": self._op_read,
            "execute": self._op_execute,
            "write_uri": self._op_write_uri,
            "fw_update": self._op_fw_update,
            "fw_cancel": self._op_fw_cancel,
        }
        handler = handlers.get(operation)
        if handler is None:
            raise DeviceOperationError(f"unknown operation {operation!r}", permanent=True)
        return await handler(endpoint, args)

    async def _op_read(self, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
        path = content.parse_path(str(args.get("path", "")))
        values = await self.read(self.registration(endpoint), path)
        return {"values": {content.format_path(p): _jsonable(v) for p, v in values.items()}}

    async def _op_execute(self, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
        path = content.parse_path(str(args.get("path", "")))
        if path == (5, 0, 2):
            raise DeviceOperationError("use fw_update to trigger /5/0/2", permanent=True)
        await self.execute(self.registration(endpoint), path)
        return {}

    def _check_scheme(self, reg: Registration, uri: str) -> None:
        scheme = uri.partition(":")[0].lower()
        allowed = {PROTOCOL_SCHEMES.get(p) for p in (reg.protocols or [])}
        if reg.protocols is None:
            # /5/0/8 is optional (LwM2M 1.0 clients): plain CoAP is the one protocol they must
            # support, since a client with Object 5 must do block-wise CoAP.
            allowed = {"coap"}
        if scheme not in allowed:
            raise UnsupportedProtocolError(
                f"{reg.endpoint} supports {sorted(a for a in allowed if a)}, not {scheme!r}",
                permanent=True,
            )
        if reg.identity is not None and scheme not in SECURE_SCHEMES:
            # A device that authenticated over DTLS is not sent to a plaintext download.
            raise UnsupportedProtocolError(
                f"{reg.endpoint} registered over DTLS: refusing a plaintext {scheme!r} URI",
                permanent=True,
            )

    async def _op_write_uri(self, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
        reg = self.registration(endpoint)
        uri = str(args.get("uri", ""))
        if uri:
            self._check_scheme(reg, uri)
        await self.write(reg, (5, 0, 1), uri)
        return {"uri": uri}

    async def _op_fw_cancel(self, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
        reg = self.registration(endpoint)
        try:
            await self.write(reg, (5, 0, 1), "")
        except DeviceOperationError:
            await self.execute(reg, (5, 0, 10))
        # Stop following the cancelled attempt: the device is Idle again (result 0), which the
        # tracker would otherwise wait out until the timeout, racing a later attempt.
        attempt = self._fw_attempts.pop(endpoint, None)
        if attempt is not None and not attempt.done():
            self._fw_cancelled.add(endpoint)
            attempt.cancel()
        return {"cancelled": True}

    async def _fw_status(self, reg: Registration) -> tuple[int, int]:
        state = await self.read(reg, (5, 0, 3))
        result = await self.read(reg, (5, 0, 5))
        return int(state[(5, 0, 3)]), int(result[(5, 0, 5)])  # type: ignore[arg-type]

    async def _op_fw_update(self, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
        """Pull-mode update: write URI, follow State/Result, execute in Downloaded, confirm."""
        digest = str(args.get("manifest_digest", "")).lower()
        if len(digest) != 64:
            raise DeviceOperationError("fw_update needs manifest_digest", permanent=True)
        reg = self.registration(endpoint)
        uri = str(args.get("uri") or self.package_uri(digest, secure=reg.identity is not None))
        self._check_scheme(reg, uri)
        this = asyncio.current_task()
        if this is not None:
            self._fw_attempts[endpoint] = this
        try:
            return await self._fw_update_attempt(endpoint, reg, digest, uri, args)
        except asyncio.CancelledError:
            if endpoint not in self._fw_cancelled:
                raise  # the gateway is stopping
            self._fw_cancelled.discard(endpoint)
            if this is not None:
                this.uncancel()
            raise UpdateCancelledError(
                f"{endpoint}: update cancelled",
                permanent=True,
                result={"phase": "cancelled", "result": 10, "manifest_digest": digest},
            ) from None
        finally:
            if self._fw_attempts.get(endpoint) is this:
                self._fw_attempts.pop(endpoint, None)

    async def _fw_update_attempt(
        self, endpoint: str, reg: Registration, digest: str, uri: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        tracker = UpdateTracker()
        deadline = time.monotonic() + float(args.get("timeout", self.config.fw_update_timeout))
        state, result = await self._fw_status(reg)
        if state != FwState.IDLE:
            current = await self.read(reg, (5, 0, 1))
            if current.get((5, 0, 1)) != uri:
                raise DeviceBusyError(
                    f"{endpoint} is busy with another update (state {state})", permanent=False
                )
            tracker.phase = Phase.URI_WRITTEN  # a redelivered command: adopt the attempt
        else:
            await self.write(reg, (5, 0, 1), uri)
            tracker.uri_written()
        changed = asyncio.Event()
        observer = self._spawn(self._observe_fw(reg, tracker, changed))
        try:
            while not tracker.phase.terminal:
                if time.monotonic() > deadline:
                    raise UpdateTimedOutError(
                        f"{endpoint}: update timed out in {tracker.phase.name}"
                    )
                current_reg = self.by_endpoint.get(endpoint)
                if current_reg is not None and current_reg is not reg:
                    reg = current_reg  # rebooted and re-registered: follow the new registration
                    observer.cancel()
                    observer = self._spawn(self._observe_fw(reg, tracker, changed))
                if current_reg is not None:
                    with contextlib.suppress(LwM2MError):
                        state, result = await self._fw_status(reg)
                        await self._apply_report(reg, tracker, state, result, None)
                if tracker.can_execute:
                    state, _ = await self._fw_status(reg)
                    if state == FwState.DOWNLOADED:
                        await self.execute(reg, (5, 0, 2))
                        tracker.update_executed()
                        continue
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=self.config.fw_poll_seconds)
        finally:
            observer.cancel()
        outcome = {
            "phase": tracker.phase.name.lower(),
            "result": int(tracker.result) if tracker.result is not None else None,
            "manifest_digest": digest,
        }
        if tracker.phase is Phase.SUCCEEDED:
            await self.emit(events.FwInstalled(endpoint=endpoint, manifest_digest=digest))
            return outcome
        raise UpdateFailedError(
            f"{endpoint}: update {tracker.phase.name.lower()} with result {outcome['result']}",
            permanent=True,
            result=outcome,
        )

    async def _apply_report(
        self,
        reg: Registration,
        tracker: UpdateTracker,
        state: int,
        result: int,
        observe: int | None,
    ) -> None:
        verdict = tracker.report(state, result, observe=observe)
        if verdict is Verdict.ADVANCED:
            await self.emit(events.FwStatus(endpoint=reg.endpoint, state=state, result=result))

    async def _observe_fw(
        self, reg: Registration, tracker: UpdateTracker, changed: asyncio.Event
    ) -> None:
        """Observe /5/0/3 (and read /5/0/5 on each change): faster than polling, best effort."""
        if self.context is None:
            return
        root = [s for s in reg.objects.root_path.strip("/").split("/") if s]
        message = aiocoap.Message(code=Code.GET, uri_path=[*root, "5", "0", "3"], observe=0)
        message.remote = reg.remote
        request = self.context.request(message)
        try:
            first = await asyncio.wait_for(request.response, timeout=self.config.request_timeout)
            if first.code != Code.CONTENT or first.opt.observe is None:
                return
            async for notification in request.observation:
                if notification.code != Code.CONTENT:
                    break
                self._check_response_peer(reg, notification)
                with contextlib.suppress(LwM2MError):
                    state = content.decode(
                        notification.opt.content_format, notification.payload, (5, 0, 3)
                    )[(5, 0, 3)]
                    res = await self.read(reg, (5, 0, 5))
                    await self._apply_report(
                        reg,
                        tracker,
                        int(state),
                        int(res[(5, 0, 5)]),
                        None,  # type: ignore[arg-type]
                    )
                    changed.set()
        except (TimeoutError, aiocoap.error.Error, LwM2MError) as exc:
            log.debug("observation of %s ended: %s", reg.endpoint, exc)
        finally:
            if not request.observation.cancelled:
                request.observation.cancel()


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


def _client_error(code: Any) -> bool:
    """4.xx: the device refused the request itself; retrying the same request will not help."""
    return int(code) >> 5 == 4


def _number(value: Any) -> float | None:
    """A device-reported time as a number of seconds, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    """A device-reported string without control characters, bounded (workers.lwm2m.names)."""
    return names.device_text(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, content.ObjLink):
        return str(value)
    return value


# --- embedding ------------------------------------------------------------------------------------


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
