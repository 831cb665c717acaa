"""The registration interface (``/rd``): Register, Update and De-register, admission and the
same-peer rule, lifetime expiry, and the device-information read after a registration.

Registrations live in the registry (``campaigns.models.Device``, written through the events this
interface emits) as well as in this gateway's memory, so an Update or De-register for a
registration another gateway of the deployment made, or this one before a restart, is not a
4.04: the registration is looked up and adopted when the request comes from its own peer
(docs/lwm2m.md, "Shared registrations"; the bounds are in :mod:`workers.lwm2m.admission`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiocoap
from aiocoap.numbers.codes import Code

from campaigns import events
from workers.lwm2m import admission, content, dtls, logsafe, names, selectors
from workers.lwm2m import transport as screened
from workers.lwm2m.errors import (
    DeviceNotConnectedError,
    LinkFormatError,
    LwM2MError,
    PayloadTooLargeError,
    RegistrationError,
    UnknownRegistrationError,
)
from workers.lwm2m.linkformat import RegisteredObjects, parse_registration_payload

if TYPE_CHECKING:
    from workers.lwm2m.gateway import GatewayConfig
from workers.lwm2m.resources import _Handler

log = logsafe.guard(logging.getLogger("workers.lwm2m.gateway"))


SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")


BINDING_CHARS = set("UQSTN")


# A queue-mode device listens for about MAX_TRANSMIT_WAIT (RFC 7252) after each message it sends.
QUEUE_AWAKE_SECONDS = 93.0


# Device-information reads after a registration: attempts before what answered is reported
# (the rest then still being read), the first pause between attempts (doubling each time), and
# the longest pause (jittered, so devices that failed together do not come back together).
# Nothing gives up while the registration lives: a gateway under load answers late, not never.
DEVICE_INFO_ATTEMPTS = 4


DEVICE_INFO_RETRY_SECONDS = 1.0


DEVICE_INFO_MAX_PAUSE = 60.0


# NoSec re-registration probes (workers.lwm2m.admission) in flight at once.
MAX_PROBES = 64


# Adoption of registrations held in the registry (docs/lwm2m.md, "Shared registrations").
# Lookups running at once: two of the gateway's four I/O threads, so firmware loads keep two.
ADOPTION_LOOKUPS_RUNNING = 2
# Lookups started or waiting at once; past it 5.03 (no queue grows without limit).
ADOPTION_LOOKUPS_PENDING = 64
# Lookups started per second (and at once after a quiet spell): an indexed one-row query costs
# well under a millisecond, so 100/s is a few percent of a core; a gateway restarted under
# 100,000 devices with a 1-hour lifetime sees about 60 Updates/s.
ADOPTION_LOOKUP_RATE = 100.0
# Ids found in no live registration, remembered for a while (a flood repeating one id costs one
# lookup per interval; random ids are held back by the rate above).
ADOPTION_NEGATIVE_SIZE = 4096
ADOPTION_NEGATIVE_SECONDS = 30.0


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
    # /5/0/9 Firmware Update Delivery Method as read after registering (None: not read, or
    # the device has none); the update driver uses it instead of reading it again.
    delivery_method: int | None = None
    replaced: asyncio.Event = field(default_factory=asyncio.Event)
    identity: str | None = None  # authenticated DTLS PSK identity; None: registered in NoSec
    info_incomplete: bool = False  # some device-information reads never answered
    info_reading: bool = False  # a device-information pass is under way (or waiting to retry)
    info_wake: asyncio.Event = field(default_factory=asyncio.Event)  # an Update: retry now

    def touch(self, now: float) -> None:
        self.deadline = now + self.lifetime
        self.awake_until = now + QUEUE_AWAKE_SECONDS
        self.awake.set()

    def object_links(self) -> list[str]:
        return [
            f"/{o.object_id}" + (f"/{o.instance_id}" if o.instance_id is not None else "")
            for o in self.objects.objects
        ]


def _info_pause(attempt: int) -> float:
    """The pause before device-information attempt ``attempt`` (from 1): doubling from
    DEVICE_INFO_RETRY_SECONDS, capped at DEVICE_INFO_MAX_PAUSE, and beyond the first few drawn
    from its upper half so a burst's failures spread out."""
    pause = min(DEVICE_INFO_RETRY_SECONDS * 2 ** min(attempt - 1, 16), DEVICE_INFO_MAX_PAUSE)
    if attempt < DEVICE_INFO_ATTEMPTS:
        return pause
    return pause * random.uniform(0.5, 1.0)  # noqa: S311 - spreading retries, not a secret


class _Adoption:
    """A gateway's registration-lookup state: the bounds above and the lookups under way (one
    per registration id, shared by concurrent requests naming it)."""

    def __init__(self, *, rate: float, negative_seconds: float) -> None:
        self.budget = admission.LookupBudget(rate=rate, burst=max(1, int(rate)))
        self.negative = admission.NegativeCache(
            size=ADOPTION_NEGATIVE_SIZE, seconds=negative_seconds
        )
        self.running = asyncio.Semaphore(ADOPTION_LOOKUPS_RUNNING)
        self.pending: dict[str, asyncio.Future[admission.StoredRegistration | None]] = {}


def _stored_objects(stored: admission.StoredRegistration) -> RegisteredObjects:
    """The registered objects rebuilt from the stored links and root path (parsed by the same
    strict parser as a registration payload)."""
    prefix = stored.root_path.rstrip("/")
    links = [f'<{prefix}>;rt="oma.lwm2m"'] if prefix else []
    links += [f"<{prefix}{link}>" for link in stored.objects]
    return parse_registration_payload(",".join(links).encode())


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


def _number(value: Any) -> float | None:
    """A device-reported time as a number of seconds, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _address(remote: Any) -> str:
    """A peer's address as stored with its registration ("host:port")."""
    return admission.format_address(admission.peer_address(remote))


def _check_peer(
    *,
    endpoint: str,
    reg_identity: str | None,
    reg_address: tuple[str, int | None],
    request: aiocoap.Message,
    action: str,
) -> None:
    """The same-peer rule (4.03 if ``request`` is not from the registration's own peer): the
    identity that registered over DTLS, or for NoSec the same address and port."""
    identity = dtls.peer_identity(request.remote)
    if identity != reg_identity:
        raise dtls.IdentityMismatchError(
            f"{action} of {endpoint!r}'s registration from "
            f"{'DTLS identity ' + repr(identity) if identity else 'a NoSec peer'} refused"
        )
    if not admission.same_peer(
        reg_identity=reg_identity,
        reg_address=reg_address,
        identity=identity,
        address=admission.peer_address(request.remote),
    ):
        raise admission.NotSamePeerError(
            f"{action} of {endpoint!r}'s NoSec registration from another address than "
            "the one that registered (a device that moved registers again)"
        )


def _text(value: Any) -> str:
    """A device-reported string without control characters, bounded (workers.lwm2m.names)."""
    return names.device_text(value)


class RegistrationInterface:
    """Registrations held by this gateway (mixed into the Gateway)."""

    config: GatewayConfig
    by_id: dict[str, Registration]
    by_endpoint: dict[str, Registration]
    stats: dict[str, int]
    _io: ThreadPoolExecutor
    # Where registrations made elsewhere are looked up (tests put a fake here).
    registration_source: admission.RegistrationSource = selectors.DjangoRegistrationSource()
    adoption_lookup_rate: float = ADOPTION_LOOKUP_RATE
    adoption_negative_seconds: float = ADOPTION_NEGATIVE_SECONDS

    @functools.cached_property
    def _adoption(self) -> _Adoption:
        return _Adoption(
            rate=self.adoption_lookup_rate, negative_seconds=self.adoption_negative_seconds
        )

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

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
        _check_peer(
            endpoint=reg.endpoint,
            reg_identity=reg.identity,
            reg_address=admission.peer_address(reg.remote),
            request=request,
            action=action,
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
                address=_address(reg.remote),
                identity=reg.identity or "",
                root_path=reg.objects.root_path,
            )
        )
        await self.read_device_info(reg)

    async def read_device_info(self, reg: Registration) -> None:
        """Read /3/0/{0,1,2,3,13} and /5/0/{8,9}; report what answered.

        A read that failed for a passing reason (no answer in time: a device busy, a gateway
        loaded by a burst of registrations) is tried again with a growing pause; a definite
        answer (4.04 for a resource the device lacks) is not. After DEVICE_INFO_ATTEMPTS what
        answered is reported, and the rest is still read, at most DEVICE_INFO_MAX_PAUSE apart
        and at once when the device sends an Update, until it answers or the registration ends
        (docs/lwm2m.md, "Device information under load"). One pass per registration at a
        time."""
        if reg.info_reading:
            reg.info_wake.set()
            return
        reg.info_reading = True
        try:
            await self._read_device_info(reg)
        finally:
            reg.info_reading = False

    async def _read_device_info(self, reg: Registration) -> None:
        wanted: list[content.Path] = [(3, 0, 0), (3, 0, 1), (3, 0, 2), (3, 0, 3), (3, 0, 13)]
        if reg.objects.has_object(5):
            wanted += [(5, 0, 8), (5, 0, 9)]
        values: dict[content.Path, content.Value] = {}
        # When the oldest value reported was read: the event's ``at``, so the registry can tell
        # it from a newer observation that reached it first (``device_info_record``).
        observed: float | None = None
        missing = wanted
        attempt = 0
        while True:
            if attempt:
                reg.info_wake.clear()
                woken = asyncio.ensure_future(reg.info_wake.wait())
                try:
                    await asyncio.wait({woken}, timeout=_info_pause(attempt))
                finally:
                    woken.cancel()
                if self.by_id.get(reg.reg_id) is not reg:
                    return  # re-registered or gone: the new registration reads for itself
            reading = time.time()
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
                observed = reading if observed is None else observed
            missing = retry
            attempt += 1
            if not missing:
                break
            if attempt == DEVICE_INFO_ATTEMPTS:
                reg.info_incomplete = True
                self._count("device_info_incomplete")
                log.warning(
                    "device information of %s incomplete after %d attempts (%s); reported as "
                    "it is, the rest is read again later",
                    reg.endpoint,
                    attempt,
                    ", ".join(content.format_path(p) for p in missing),
                )
                await self._emit_device_info(reg, values, observed)
        reg.info_incomplete = False
        await self._emit_device_info(reg, values, observed)

    async def _emit_device_info(
        self,
        reg: Registration,
        values: dict[content.Path, content.Value],
        observed: float | None = None,
    ) -> None:
        if self.by_id.get(reg.reg_id) is not reg:
            # Read under a registration that ended or was replaced (the device rebooted into
            # other firmware and registered again): its values are the old device's; the new
            # registration reads for itself.
            log.info("device information of %s from an ended registration dropped", reg.endpoint)
            return
        protocols = sorted(
            int(v) for p, v in values.items() if p[:3] == (5, 0, 8) and isinstance(v, int)
        )
        if (5, 0, 8) in [p[:3] for p in values]:
            reg.protocols = protocols
        if _integer(values.get((5, 0, 9))) is not None:
            reg.delivery_method = _integer(values.get((5, 0, 9)))
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
                at=observed,
            )
        )

    async def _bounded_reads(
        self, reg: Registration, paths: list[content.Path]
    ) -> list[dict[content.Path, Any] | BaseException]:
        """The reads of one device-information pass, one after the other, holding one of
        ``device_info_concurrency`` slots: a burst of registrations (or of hostile ones that
        never answer) cannot make the gateway hold more than that many requests in flight.
        One at a time because CoAP lets one request per device be outstanding (NSTART = 1,
        RFC 7252 4.7): fired together, the later ones would wait behind the earlier ones, and
        their timeout would run out while they wait, not while the device is asked."""
        self._info_pending += 1
        try:
            slots = self._info_slots or asyncio.Semaphore(1)
            async with slots:
                out: list[dict[content.Path, Any] | BaseException] = []
                for path in paths:
                    if self.by_id.get(reg.reg_id) is not reg:
                        out.append(DeviceNotConnectedError("registration replaced"))
                        continue
                    try:
                        out.append(await self.read(reg, path))
                    except LwM2MError as exc:
                        # A request cut short by this task's cancellation (the gateway
                        # stopping) surfaces as a transport error: stop, do not retry.
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise asyncio.CancelledError from exc
                        out.append(exc)
                return out
        finally:
            self._info_pending -= 1

    async def _held_or_adopted(
        self, reg_id: str, request: aiocoap.Message, action: str
    ) -> Registration:
        """The registration ``reg_id`` as this gateway holds it, else as the registry holds it
        (adopted: see :meth:`_adopt`), else 4.04."""
        reg = self.by_id.get(reg_id)
        if reg is not None:
            return reg
        stored = await self._lookup_registration(reg_id)
        reg = self.by_id.get(reg_id)  # adopted meanwhile, for a request that came first
        if reg is not None:
            return reg
        if stored is None:
            raise UnknownRegistrationError(f"registration {reg_id[:20]!r} is not held here")
        return self._adopt(stored, request, action)

    async def _lookup_registration(self, reg_id: str) -> admission.StoredRegistration | None:
        """The registry's live registration ``reg_id``, within the bounds of
        :mod:`workers.lwm2m.admission` (5.03 ``lwm2m.lookup_busy`` past them)."""
        if not admission.plausible_registration_id(reg_id):
            return None
        adoption = self._adoption
        now = time.monotonic()
        if adoption.negative.hit(reg_id, now=now):
            self._count("adoption_negative_hits")
            return None
        lookup = adoption.pending.get(reg_id)
        if lookup is None:
            if len(adoption.pending) >= ADOPTION_LOOKUPS_PENDING:
                raise admission.LookupBusyError(
                    f"{len(adoption.pending)} registration lookups under way; try again later"
                )
            if not adoption.budget.take(now=now):
                raise admission.LookupBusyError(
                    f"more than {adoption.budget.rate:g} registration lookups a second; "
                    "try again later"
                )
            lookup = asyncio.get_running_loop().create_future()
            adoption.pending[reg_id] = lookup
            self._spawn(self._run_lookup(adoption, reg_id, lookup))
        return await asyncio.shield(lookup)

    async def _run_lookup(
        self,
        adoption: _Adoption,
        reg_id: str,
        lookup: asyncio.Future[admission.StoredRegistration | None],
    ) -> None:
        """One registry lookup on an I/O thread. A registry that cannot be reached gives 5.03
        (the device keeps its registration and tries again); nothing found is remembered."""
        from django.db import DatabaseError

        try:
            async with adoption.running:
                self._count("adoption_lookups")
                loop = asyncio.get_running_loop()
                stored = await loop.run_in_executor(
                    self._io, self.registration_source.lookup, reg_id
                )
        except DatabaseError as exc:
            log.warning("registration lookup of %s failed: %r", reg_id, exc)
            lookup.set_exception(admission.LookupBusyError("the registry is unavailable"))
        except Exception as exc:
            log.warning("registration lookup of %s failed: %r", reg_id, exc)
            lookup.set_result(None)
        else:
            if stored is None or stored.registration_id != reg_id:
                adoption.negative.add(reg_id, now=time.monotonic())
                stored = None
            lookup.set_result(stored)
        finally:
            adoption.pending.pop(reg_id, None)
            if not lookup.done():
                lookup.cancel()
            elif not lookup.cancelled():
                lookup.exception()  # retrieved: no "never retrieved" warning without waiters

    def _adopt(
        self, stored: admission.StoredRegistration, request: aiocoap.Message, action: str
    ) -> Registration:
        """Hold ``stored``, a live registration made at another gateway (or at this one before a
        restart), from now on, if ``request`` may act on it: the request comes from the
        registration's own peer (4.03 if not, as for a registration held here), and the
        endpoint would be allowed to register here now (NoSec accepted, no PSK for a NoSec
        endpoint, admitted). A registration of the same endpoint held here is newer: 4.04."""
        identity = stored.identity or None
        _check_peer(
            endpoint=stored.endpoint,
            reg_identity=identity,
            reg_address=admission.parse_address(stored.address),
            request=request,
            action=action,
        )
        self._check_endpoint_security(stored.endpoint, request)
        self._check_admitted(stored.endpoint, identity)
        if stored.endpoint in self.by_endpoint:
            raise UnknownRegistrationError(
                f"registration {stored.registration_id!r} of {stored.endpoint!r} was replaced "
                "by a newer one held here"
            )
        if len(self.by_id) >= self.config.max_registrations:
            raise admission.RegistryFullError(
                f"this gateway holds {len(self.by_id)} registrations, its limit"
            )
        try:
            objects = _stored_objects(stored)
        except LinkFormatError as exc:
            log.warning("stored registration of %s cannot be adopted: %s", stored.endpoint, exc)
            raise UnknownRegistrationError("stored registration unreadable") from None
        reg = Registration(
            reg_id=stored.registration_id,
            endpoint=stored.endpoint,
            remote=request.remote,
            lifetime=stored.lifetime,
            binding=stored.binding,
            version=stored.lwm2m_version,
            queue_mode=stored.queue_mode,
            objects=objects,
            deadline=time.monotonic() + (stored.expires_at - time.time()),
            identity=identity,
            protocols=list(stored.protocols) if stored.protocols is not None else None,
            delivery_method=stored.delivery_method,
            info_incomplete=not stored.info_complete,
        )
        self.by_id[reg.reg_id] = reg
        self.by_endpoint[reg.endpoint] = reg
        self._count("adoptions")
        log.info(
            "adopted the registration of %s (made at gateway %s) at its %s",
            reg.endpoint,
            stored.gateway_id or "?",
            action,
        )
        return reg

    async def update(self, reg_id: str, request: aiocoap.Message) -> aiocoap.Message:
        reg = await self._held_or_adopted(reg_id, request, "update")
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
        if reg.info_reading:
            reg.info_wake.set()  # a pass waiting to retry: the device is awake now
        elif reg.info_incomplete:
            self._spawn(self.read_device_info(reg))
        self._spawn(
            self.emit(
                events.Updated(
                    endpoint=reg.endpoint,
                    registration_id=reg.reg_id,
                    lifetime=reg.lifetime if "lt" in query else None,
                    binding=reg.binding if "b" in query else None,
                    objects=tuple(reg.object_links()) if objects_changed else None,
                    address=_address(request.remote),
                    identity=reg.identity or "",
                    root_path=reg.objects.root_path if objects_changed else None,
                )
            )
        )
        return aiocoap.Message(code=Code.CHANGED)

    async def deregister(self, reg_id: str, request: aiocoap.Message) -> aiocoap.Message:
        reg = await self._held_or_adopted(reg_id, request, "de-registration")
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
