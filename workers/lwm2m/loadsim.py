"""A load fleet: many LwM2M devices on one UDP socket, one asyncio loop, no aiocoap context.

The full simulator (:mod:`workers.lwm2m.simulator`) gives each device an aiocoap context on a
port of its own, about 10 KB and one file descriptor per device, and its loop's CPU competes
with whatever it is measuring. This fleet holds a device in a small slotted object: every
device has a loopback address of its own (``127.A.B.C``; Linux routes all of 127/8 to ``lo``)
and all of them share one socket bound to ``0.0.0.0:PORT``. A datagram goes out with
``IP_PKTINFO`` naming the device's address as its source; an incoming one carries, in the same
ancillary data, the address it was sent to, which says which device it is for. The gateway sees
distinct peers ``127.A.B.C:PORT``, as it would distinct devices behind NATs (and an
``SO_REUSEPORT`` group of gateways spreads them by that address).

Messages are encoded and decoded with aiocoap's :class:`aiocoap.Message` (the codec only). Per
device, this module implements what the firmware-update flow of the full simulator does on the
wire (the ``suit`` profile, pull delivery, NoSec):

* Register (``POST /rd?ep=..&lt=..&lwm2m=1.1&b=U``, link format ``</1/0>,</3/0>,</5>;ver=1.1,
  </5/0>``), Update (``POST /rd/<id>`` every half lifetime; 4.04 -> register again);
* reads of /3/0/{0,1,2,3,13,16} and /5/0/{1,3,5,8,9} in the format asked for (text, TLV,
  SenML: :mod:`workers.lwm2m.content`), Observe of /5/0/3 and /5/0/5 (RFC 7641; notifications
  confirmable, an RST ends the observation; ``Observe: 1`` deregisters);
* write of /5/0/1 (a Package URI starts the download, an empty one resets), write of an empty
  /5/0/0 (reset; a non-empty one is refused 4.05: pull only), execute /5/0/2 (install, reboot
  after ``reboot_delay``, register again with the new version) and /5/0/10 (cancel);
* the download: the SUIT envelope from the Package URI (Block2, ETag and Size2 checked), its
  signature against the trust anchors, the manifest against the device (vendor, class,
  sequence, security counter, expiry: :mod:`manifests.device_rules`), then the payload (Block2)
  with its size and SHA-256 checked as it streams, so no device holds an image.

What one process shares between devices: the outcome of verifying an envelope's signatures
(keyed by the envelope's SHA-256; the bytes decide it, not the device) and the decoded manifest.
Everything a device decides for itself (its manifest checks, its digest) it decides alone.

Confirmable requests follow RFC 7252 4.2 (ACK_TIMEOUT 2 s, random factor 1.5, 4
retransmissions); a request the gateway repeats (same message id) is answered from the last
reply, as the deduplication of 4.5 wants.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import heapq
import hmac
import json
import logging
import os
import random
import secrets
import socket
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from manifests import device_rules
from manifests.suit import keys as suit_keys
from manifests.suit import report as suit_report
from workers.lwm2m import content
from workers.lwm2m.errors import LwM2MError, Object5TransitionError
from workers.lwm2m.linkformat import ObjectLink, format_registration_payload
from workers.lwm2m.loaddtls import DTLSLink, psk_for
from workers.lwm2m.object5 import DeliveryMethod, DeviceFirmwareObject, FwResult, FwState
from workers.lwm2m.reads import read_answer

log = logging.getLogger("workers.lwm2m.loadsim")

# Linux: <linux/in.h> IP_PKTINFO (Python's socket module does not export it).
IP_PKTINFO = 8
_PKTINFO = struct.Struct("=i4s4s")
ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
# How long a device waits for the answer to one of its requests (as the full simulator).
EXCHANGE_SECONDS = 30.0
BLOCK_SZX = 6  # 1024-byte blocks
DATAGRAM_BYTES = 2048
# First octet after 127 of the device addresses: 127.0/16 is left alone (127.0.0.1 and friends).
FIRST_NET = 16


class LoadSimError(LwM2MError):
    code = "loadsim.error"


class DownloadFailedError(LoadSimError):
    code = "loadsim.download_failed"


def device_address(index: int) -> str:
    """The loopback address of device ``index`` (0 .. 15 * 65536 - 1)."""
    net, host = divmod(index, 65536)
    if not 0 <= net < 255 - FIRST_NET:
        raise ValueError(f"device index {index} is outside the loopback plan")
    return f"127.{FIRST_NET + net}.{host >> 8}.{host & 255}"


@dataclass
class LoadFleetSpec:
    """The devices of one load-simulator process: ``count`` devices ``prefix-NNNNNN`` numbered
    from ``first`` (processes of one fleet take disjoint ranges)."""

    server: str
    count: int
    vendor_id: str
    class_id: str
    trust_anchors_pem: list[str]
    first: int = 0
    prefix: str = "load"
    manufacturer: str = "Acme Sensors"
    model: str = "thermo-v2"
    version: str = "1.0.0"
    sequence_number: int = 1
    security_counter: int = 1
    lifetime: int = 300
    component_id: list[str] = field(default_factory=lambda: ["00"])
    payload_format: str = "mcuboot"
    manifest_profile: str = "extended"
    slot_size: int = 0x100000
    reboot_delay: float = 0.2
    # Registrations started at once (the rest wait their turn), and started per second (0: no
    # pacing), so a fleet coming up does not arrive as one burst unless asked to.
    register_concurrency: int = 500
    register_rate: float = 0.0
    # SUIT reports (docs/lwm2m.md, "SUIT reports"): a hex seed from which each device's Ed25519
    # report key is derived (``report_key``), so a process holds no key per device and the
    # server side can register the public keys from the same seed. Empty: no object 26241.
    report_seed: str = ""
    # DTLS (``--dtls``): a hex seed from which each device's PSK is derived
    # (:func:`workers.lwm2m.loaddtls.psk_for`; identity = endpoint), so the server side
    # provisions the same keys from the seed; the server is then a coaps:// URI.
    # Empty: NoSec.
    psk_seed: str = ""

    def __post_init__(self) -> None:
        if self.count < 0 or self.first < 0:
            raise ValueError("count and first must not be negative")
        device_address(self.first + max(self.count - 1, 0))  # within the address plan
        uuid.UUID(self.vendor_id)
        uuid.UUID(self.class_id)
        scheme = "coaps" if self.psk_seed else "coap"
        if urlsplit(self.server).scheme != scheme:
            raise ValueError(f"server {self.server!r} is not a {scheme}:// URI")
        if self.psk_seed:
            bytes.fromhex(self.psk_seed)


@dataclass
class Stats:
    registrations: int = 0
    register_failures: int = 0
    updates: int = 0
    reads: int = 0
    writes: int = 0
    executes: int = 0
    notifications: int = 0
    downloads_started: int = 0
    downloads_done: int = 0
    downloads_failed: int = 0
    downloading: int = 0
    max_downloading: int = 0
    blocks: int = 0
    installed: int = 0
    retransmissions: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0


class _Exchange:
    """One confirmable request of a device: answered by a piggybacked or a separate response."""

    __slots__ = ("acked", "future", "mid", "observed")

    def __init__(
        self, future: asyncio.Future[aiocoap.Message], mid: int, observed: bytes | None = None
    ) -> None:
        self.future = future
        self.mid = mid
        self.acked = False
        # A notification: the token of the observation it belongs to.
        self.observed = observed


REPORT_OBJECT = 26241
REPORT_NONCE_PATH = (REPORT_OBJECT, 0, 0)
REPORT_PATH = (REPORT_OBJECT, 0, 1)


def report_key(seed: str, index: int) -> Any:
    """Device ``index``'s report signing key, derived from the fleet's seed."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    material = hashlib.sha256(bytes.fromhex(seed) + index.to_bytes(8, "big")).digest()
    return Ed25519PrivateKey.from_private_bytes(material)


def report_public_keys(spec: LoadFleetSpec) -> dict[str, str]:
    """Endpoint -> public key PEM of every device of ``spec`` (what provisioning registers)."""
    return {
        f"{spec.prefix}-{index:06d}": suit_keys.public_key_pem(
            report_key(spec.report_seed, index)
        ).decode()
        for index in range(spec.first, spec.first + spec.count)
    }


class LoadDevice:
    __slots__ = (
        "_attempt",
        "_exchanges",
        "_last_reply",
        "_mid",
        "_observers",
        "addr",
        "boots",
        "endpoint",
        "fleet",
        "fw",
        "index",
        "link",
        "location",
        "registered",
        "report",
        "report_nonce",
        "security_counter",
        "sequence_number",
        "staged",
        "staged_digest",
        "update_due",
        "version",
    )

    def __init__(self, fleet: LoadFleet, index: int) -> None:
        spec = fleet.spec
        self.fleet = fleet
        self.index = index
        self.endpoint = f"{spec.prefix}-{index:06d}"
        self.addr = device_address(index)
        self.version = spec.version
        self.sequence_number = spec.sequence_number
        self.security_counter = spec.security_counter
        self.fw = DeviceFirmwareObject()
        self.location: str | None = None
        self.registered = False
        self.boots = 0
        self.staged: device_rules.ManifestFacts | None = None
        self.staged_digest = b""
        self.update_due = 0.0
        self.report_nonce = b""  # the server's nonce for the current attempt
        self.report = b""  # the signed report of the last attempt that ended
        self._attempt = 0
        self._mid = random.getrandbits(16)
        self._exchanges: dict[bytes, _Exchange] | None = None
        self._last_reply: tuple[int, bytes] | None = None
        # Observed path -> (token, next sequence number).
        self._observers: dict[tuple[int, ...], list[Any]] | None = None
        # The DTLS session (a spec with ``psk_seed``), else None: CoAP goes out as it is.
        self.link: DTLSLink | None = None
        if spec.psk_seed:
            self.link = DTLSLink(
                identity=self.endpoint.encode(),
                key=psk_for(spec.psk_seed, self.endpoint),
                send_raw=self._send_raw,
                deliver=self.received,
            )

    def _send_raw(self, data: bytes) -> None:
        self.fleet.send(self.addr, data)

    def send(self, data: bytes) -> None:
        """A CoAP message to the server (over the device's DTLS session if it has one)."""
        if self.link is None:
            self.fleet.send(self.addr, data)
        else:
            self.link.send(data)

    def datagram(self, data: bytes) -> None:
        """A datagram from the server to this device's address."""
        if self.link is None:
            self.received(data)
        else:
            self.link.received(data)

    # outgoing requests

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    async def request(self, message: aiocoap.Message) -> aiocoap.Message:
        """Send ``message`` confirmable and return the response (piggybacked or separate)."""
        loop = asyncio.get_running_loop()
        if self.link is not None:
            # The handshake has its own timers (RFC 6347); the exchange's start after it.
            await self.link.ready()
        token = secrets.token_bytes(4)
        message.mtype = Type.CON
        message.mid = self._next_mid()
        message.token = token
        if self._exchanges is None:
            self._exchanges = {}
        exchange = _Exchange(loop.create_future(), message.mid)
        self._exchanges[token] = exchange
        data = message.encode()
        deadline = loop.time() + EXCHANGE_SECONDS
        timeout = ACK_TIMEOUT * (1 + random.random() * (ACK_RANDOM_FACTOR - 1))  # noqa: S311
        try:
            self.send(data)
            for _ in range(MAX_RETRANSMIT + 1):
                done, _pending = await asyncio.wait({exchange.future}, timeout=timeout)
                if done or exchange.acked:
                    break
                self.fleet.stats.retransmissions += 1
                self.send(data)
                timeout *= 2
            remaining = deadline - loop.time()
            return await asyncio.wait_for(exchange.future, timeout=max(remaining, 0.0))
        finally:
            if self._exchanges is not None:
                self._exchanges.pop(token, None)
                if not self._exchanges:
                    self._exchanges = None

    def _message(self, code: Code, path: str, **kwargs: Any) -> aiocoap.Message:
        message = aiocoap.Message(code=code, **kwargs)
        message.opt.uri_path = [p for p in path.split("/") if p]
        return message

    async def register(self) -> None:
        spec = self.fleet.spec
        objects = [ObjectLink(1, 0), ObjectLink(3, 0), ObjectLink(5, None, "1.1"), ObjectLink(5, 0)]
        if spec.report_seed:
            objects.append(ObjectLink(REPORT_OBJECT, 0))
        message = self._message(
            Code.POST,
            "rd",
            payload=format_registration_payload(objects),
            content_format=content.CT_LINK_FORMAT,
        )
        message.opt.uri_query = [f"ep={self.endpoint}", f"lt={spec.lifetime}", "lwm2m=1.1", "b=U"]
        response = await self.request(message)
        if response.code != Code.CREATED:
            raise LoadSimError(f"registration refused: {response.code}")
        self.location = "/".join(response.opt.location_path)
        self.registered = True
        self.fleet.stats.registrations += 1
        self.fleet.last_registered = time.time()
        self.fleet.schedule_update(self)

    async def update(self) -> None:
        if self.location is None:
            return
        try:
            response = await self.request(self._message(Code.POST, self.location))
        except (TimeoutError, LoadSimError):
            self.fleet.schedule_update(self)
            return
        self.fleet.stats.updates += 1
        if response.code == Code.NOT_FOUND:
            self.registered = False
            await self.fleet.register_until_done(self)
            return
        self.fleet.schedule_update(self)

    # incoming datagrams

    def received(self, data: bytes) -> None:
        try:
            message = aiocoap.Message.decode(data)
        except aiocoap.error.UnparsableMessage:
            return
        if message.code.is_request():
            self._serve(message)
        elif message.mtype in (Type.ACK, Type.RST) and not message.code.is_response():
            self._empty_answer(message)
        else:
            self._response(message)

    def _empty_answer(self, message: aiocoap.Message) -> None:
        """An empty ACK (the response comes later) or an RST (a notification was refused)."""
        for exchange in list((self._exchanges or {}).values()):
            if exchange.mid == message.mid:
                if message.mtype is Type.RST and exchange.observed is not None:
                    exchange.acked = True  # a notification refused: the observer is gone
                    self._forget_observer(exchange.observed)
                elif message.mtype is Type.RST:
                    if not exchange.future.done():
                        exchange.future.set_exception(LoadSimError("reset by the server"))
                else:
                    exchange.acked = True

    def _response(self, message: aiocoap.Message) -> None:
        if message.mtype is Type.CON:
            ack = aiocoap.Message(code=Code.EMPTY)
            ack.mtype, ack.mid, ack.token = Type.ACK, message.mid, b""
            self.send(ack.encode())
        exchange = (self._exchanges or {}).get(message.token)
        if exchange is not None and not exchange.future.done():
            exchange.future.set_result(message)

    def _reply(self, request: aiocoap.Message, response: aiocoap.Message) -> None:
        response.mtype = Type.ACK if request.mtype is Type.CON else Type.NON
        response.mid = request.mid if request.mtype is Type.CON else self._next_mid()
        response.token = request.token
        data = response.encode()
        if request.mtype is Type.CON:
            self._last_reply = (request.mid, data)
        self.send(data)

    def _serve(self, request: aiocoap.Message) -> None:
        if (
            request.mtype is Type.CON
            and self._last_reply is not None
            and self._last_reply[0] == request.mid
        ):
            self.send(self._last_reply[1])  # a repeat: the same reply again
            return
        try:
            path = content.parse_path("/" + "/".join(request.opt.uri_path))
        except LwM2MError:
            self._reply(request, aiocoap.Message(code=Code.BAD_REQUEST))
            return
        try:
            response = self._handle(request, path)
        except Object5TransitionError:
            response = aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        except LwM2MError as exc:
            response = aiocoap.Message(code=Code.BAD_REQUEST, payload=str(exc)[:100].encode())
        self._reply(request, response)

    def _handle(self, request: aiocoap.Message, path: content.Path) -> aiocoap.Message:
        stats = self.fleet.stats
        if request.code == Code.GET:
            stats.reads += 1
            response = self._read(path, request.opt.accept)
            observe = request.opt.observe
            if response.code == Code.CONTENT and observe is not None:
                if observe == 0 and path in ((5, 0, 3), (5, 0, 5)):
                    if self._observers is None:
                        self._observers = {}
                    self._observers[path] = [request.token, 1]
                    response.opt.observe = 0
                elif observe == 1 and self._observers is not None:
                    self._observers.pop(path, None)
            return response
        if request.code == Code.PUT and path == (5, 0, 0):
            stats.writes += 1
            if request.opt.block1 is None and bytes(request.payload) in (b"", b"\0"):
                self._reset()
                return aiocoap.Message(code=Code.CHANGED)
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)  # pull only (/5/0/9 = 0)
        if request.code == Code.PUT:
            stats.writes += 1
            return self._write(path, request)
        if request.code == Code.POST:
            stats.executes += 1
            return self._execute(path)
        return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)

    # data model

    def values(self) -> dict[content.Path, content.Value]:
        spec = self.fleet.spec
        return {
            (3, 0, 0): spec.manufacturer,
            (3, 0, 1): spec.model,
            (3, 0, 2): f"LS{self.index:08d}",
            (3, 0, 3): self.version,
            (3, 0, 13): int(time.time()),
            (3, 0, 16): "U",
            (5, 0, 1): self.fw.package_uri,
            (5, 0, 3): int(self.fw.state),
            (5, 0, 5): int(self.fw.result),
            (5, 0, 8, 0): 0,
            (5, 0, 9): int(DeliveryMethod.PULL),
            **({REPORT_PATH: self.report} if spec.report_seed else {}),
        }

    def _read(self, path: content.Path, accept: int | None) -> aiocoap.Message:
        return read_answer(self.values(), path, accept)

    def _write(self, path: content.Path, request: aiocoap.Message) -> aiocoap.Message:
        if path == REPORT_NONCE_PATH and self.fleet.spec.report_seed:
            nonce = content.decode(request.opt.content_format, request.payload, path).get(path)
            if not isinstance(nonce, bytes) or len(nonce) > suit_report.MAX_NONCE_BYTES:
                return aiocoap.Message(code=Code.BAD_REQUEST)
            self.report_nonce, self.report = nonce, b""
            return aiocoap.Message(code=Code.CHANGED)
        if path != (5, 0, 1):
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        uri = content.decode(request.opt.content_format, request.payload, path).get(path)
        if not isinstance(uri, str) or len(uri.encode()) > 255:
            return aiocoap.Message(code=Code.BAD_REQUEST)
        if not uri:
            self._reset()
            return aiocoap.Message(code=Code.CHANGED)
        self.fw.write_uri(uri)
        self._attempt += 1
        parts = urlsplit(uri)
        if parts.scheme != "coap":
            self.fw.reject_uri(FwResult.UNSUPPORTED_PROTOCOL)
        elif not parts.hostname:
            self.fw.reject_uri(FwResult.INVALID_URI)
        else:
            self.fleet.spawn(self._download(uri, self._attempt))
        self._changed()
        return aiocoap.Message(code=Code.CHANGED)

    def _execute(self, path: content.Path) -> aiocoap.Message:
        if path == (5, 0, 2):
            self.fw.execute_update()
            self._changed()
            self.fleet.spawn(self._install_and_reboot())
            return aiocoap.Message(code=Code.CHANGED)
        if path == (5, 0, 10):
            self.fw.cancel()
            self._attempt += 1
            self.staged = None
            self._changed()
            return aiocoap.Message(code=Code.CHANGED)
        return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)

    def _reset(self) -> None:
        self.fw.reset()
        self._attempt += 1
        self.staged = None
        self._changed()

    # observation

    def _changed(self) -> None:
        """Notify the observers of /5/0/3 and /5/0/5 (confirmable; an RST ends one)."""
        if not self._observers:
            return
        for path, entry in list(self._observers.items()):
            token, seq = entry
            entry[1] = (seq + 1) & 0xFFFFFF
            response = self._read(path, None)
            response.opt.observe = seq
            self.fleet.spawn(self._notify(path, token, response))

    async def _notify(self, path: content.Path, token: bytes, message: aiocoap.Message) -> None:
        message.mtype = Type.CON
        message.mid = self._next_mid()
        message.token = token
        loop = asyncio.get_running_loop()
        if self._exchanges is None:
            self._exchanges = {}
        # Not a token (those are 4 bytes): an ACK or RST for this message id settles it.
        key = b"notify" + message.mid.to_bytes(2, "big")
        exchange = _Exchange(loop.create_future(), message.mid, observed=token)
        self._exchanges[key] = exchange
        data = message.encode()
        timeout = ACK_TIMEOUT
        self.fleet.stats.notifications += 1
        try:
            for _ in range(MAX_RETRANSMIT + 1):
                self.send(data)
                await asyncio.sleep(timeout)
                if exchange.acked or exchange.future.done():
                    return
                timeout *= 2
            self._forget_observer(token)  # never acknowledged: the observer is gone
        except LoadSimError:
            return
        finally:
            if self._exchanges is not None:
                self._exchanges.pop(key, None)
                if not self._exchanges:
                    self._exchanges = None

    def _forget_observer(self, token: bytes) -> None:
        if self._observers is None:
            return
        for path, entry in list(self._observers.items()):
            if entry[0] == token:
                del self._observers[path]

    # update

    async def fetch(self, uri: str, sink: Callable[[bytes], None]) -> int:
        """GET ``uri`` block by block (Block2), each block to ``sink``; the ETag must stay the
        same and the body must end at Size2. Returns the byte count."""
        parts = urlsplit(uri)
        path = parts.path
        num, etag, total, received = 0, None, None, 0
        while True:
            message = self._message(Code.GET, path)
            message.opt.block2 = BlockOption.BlockwiseTuple(num, False, BLOCK_SZX)
            try:
                response = await self.request(message)
            except (TimeoutError, LoadSimError) as exc:
                raise DownloadFailedError(f"{uri}: {exc or 'no answer'}") from None
            if response.code != Code.CONTENT:
                raise DownloadFailedError(f"{uri}: {response.code}")
            self.fleet.stats.blocks += 1
            if etag is None:
                etag, total = response.opt.etag, response.opt.size2
            elif response.opt.etag != etag:
                raise DownloadFailedError("resource changed during download")
            block = response.opt.block2
            payload = bytes(response.payload)
            received += len(payload)
            if total is not None and received > total:
                raise DownloadFailedError("more data than Size2 announced")
            sink(payload)
            if block is None or not block.more:
                return received
            if block.block_number != num:
                raise DownloadFailedError("unexpected block")
            num = received >> (block.size_exponent + 4)

    def _identity(self) -> device_rules.DeviceIdentity:
        spec = self.fleet.spec
        return device_rules.DeviceIdentity(
            vendor_id=uuid.UUID(spec.vendor_id),
            class_id=uuid.UUID(spec.class_id),
            component_id=tuple(bytes.fromhex(p) for p in spec.component_id),
            payload_format=spec.payload_format,
            slot_size=spec.slot_size,
            manifest_profile=spec.manifest_profile,
        )

    async def _download(self, uri: str, attempt: int) -> None:
        stats = self.fleet.stats
        stats.downloads_started += 1
        stats.downloading += 1
        stats.max_downloading = max(stats.max_downloading, stats.downloading)
        digest_of_manifest = b""
        try:
            envelope = bytearray()
            await self.fetch(uri, envelope.extend)
            facts = self.fleet.manifest_facts(bytes(envelope))
            digest_of_manifest = self.fleet.manifest_digest(bytes(envelope))
            device_rules.check_manifest(
                facts,
                device=self._identity(),
                installed=device_rules.InstalledFirmware(
                    self.version, self.sequence_number, self.security_counter
                ),
                now=dt.datetime.now(dt.UTC),
            )
            if facts.image_digest is None or facts.image_size is None:
                raise device_rules.MissingFieldError("manifest has no image digest or size")
            digest = hashlib.sha256()
            size = await self.fetch(_payload_uri(uri, facts), digest.update)
            if size != facts.image_size:
                raise device_rules.ImageSizeMismatchError(
                    f"payload is {size} bytes, manifest says {facts.image_size}"
                )
            if not hmac.compare_digest(digest.digest(), facts.image_digest):
                raise device_rules.ImageDigestMismatchError(
                    "payload SHA-256 differs from the manifest's image digest"
                )
        except device_rules.DeviceCheckError as exc:
            log.info("%s refuses update: %s [%s]", self.endpoint, exc, exc.code)
            stats.downloads_failed += 1
            if digest_of_manifest:
                self._sign_report(digest_of_manifest, exc.code)
            self._fail(FwResult(exc.fw_result), attempt)
            return
        except DownloadFailedError as exc:
            log.info("%s download failed: %s", self.endpoint, exc)
            stats.downloads_failed += 1
            if digest_of_manifest:
                self._sign_report(digest_of_manifest, "device.download_failed")
            self._fail(FwResult.CONNECTION_LOST, attempt)
            return
        finally:
            stats.downloading -= 1
        stats.downloads_done += 1
        if self.fw.state is not FwState.DOWNLOADING or attempt != self._attempt:
            return  # cancelled or reset meanwhile
        self.staged = facts
        self.staged_digest = digest_of_manifest
        self.fw.download_succeeded()
        self._changed()

    def _sign_report(self, manifest_digest: bytes, failure_code: str | None) -> None:
        """Sign the SUIT report of the attempt that just ended (told a nonce by the server)."""
        spec = self.fleet.spec
        if not spec.report_seed or not self.report_nonce:
            return
        report = suit_report.SUITReport(
            manifest_digest=manifest_digest,
            nonce=self.report_nonce,
            failure=None if failure_code is None else suit_report.failure_for(failure_code),
        )
        self.report = suit_report.sign_report(report, report_key(spec.report_seed, self.index))

    def _fail(self, result: FwResult, attempt: int) -> None:
        if self.fw.state is FwState.DOWNLOADING and attempt == self._attempt:
            self.fw.download_failed(result)
            self._changed()

    async def _install_and_reboot(self) -> None:
        staged = self.staged
        await asyncio.sleep(self.fleet.spec.reboot_delay)  # the 2.04 goes out first
        if self.fw.state is not FwState.UPDATING:
            return  # reset before the reboot
        self.boots += 1
        self.registered = False
        self._observers = None  # a reboot forgets every observation
        digest = self.staged_digest
        if staged is None:
            if digest:
                self._sign_report(digest, "device.boot_failed")
            self.fw.update_failed()
        else:
            if digest:
                self._sign_report(digest, None)
            self.version = staged.firmware_version or self.version
            self.sequence_number = staged.sequence_number
            self.security_counter = max(self.security_counter, staged.security_counter or 0)
            self.fw.update_succeeded()
            self.fleet.stats.installed += 1
        self.staged = None
        self.staged_digest = b""
        await self.fleet.register_until_done(self)


def _payload_uri(package_uri: str, facts: device_rules.ManifestFacts) -> str:
    """The manifest's URI when it is an absolute CoAP URI, else the server's digest path."""
    if facts.uri and urlsplit(facts.uri).scheme in ("coap", "coaps"):
        return facts.uri
    if facts.image_digest is None:
        raise device_rules.MissingFieldError("manifest has no image digest")
    return urljoin(package_uri, f"/fw/i/{facts.image_digest.hex()}")


class LoadFleet:
    """The devices of one spec on one socket and one loop."""

    def __init__(self, spec: LoadFleetSpec) -> None:
        from manifests.suit import keys

        self.spec = spec
        self.stats = Stats()
        self.trust_anchors = [keys.load_public_key_pem(p.encode()) for p in spec.trust_anchors_pem]
        self.devices: list[LoadDevice] = [
            LoadDevice(self, spec.first + i) for i in range(spec.count)
        ]
        self.by_addr: dict[bytes, LoadDevice] = {socket.inet_aton(d.addr): d for d in self.devices}
        parts = urlsplit(spec.server)
        self.server = (socket.gethostbyname(parts.hostname or "127.0.0.1"), parts.port or 5683)
        self.sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._facts: dict[bytes, device_rules.ManifestFacts | device_rules.DeviceCheckError] = {}
        self._digests: dict[bytes, bytes] = {}  # envelope SHA-256 -> its manifest's SUIT digest
        self._due: list[tuple[float, int]] = []
        self._slots: asyncio.Semaphore | None = None
        # Wall-clock times (comparable between processes): registrations started, last done.
        self.started_at = 0.0
        self.last_registered = 0.0

    # socket

    def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - every device address is on lo
        sock.setblocking(False)
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def send(self, addr: str, data: bytes) -> None:
        if self.sock is None:
            return
        ancillary = [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(0, socket.inet_aton(addr), b""))]
        try:
            self.sock.sendmsg([data], ancillary, 0, self.server)
            self.stats.datagrams_out += 1
        except (BlockingIOError, OSError):
            pass  # a full send buffer drops the datagram; the exchange retransmits

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        space = socket.CMSG_SPACE(_PKTINFO.size)
        for _ in range(256):
            try:
                data, ancillary, _flags, _addr = sock.recvmsg(DATAGRAM_BYTES, space)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error from an earlier send
            self.stats.datagrams_in += 1
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    device = self.by_addr.get(_PKTINFO.unpack(value)[2])
                    if device is not None:
                        device.datagram(data)

    # bookkeeping shared by the devices

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("load device task failed", exc_info=task.exception())

    def manifest_facts(self, envelope: bytes) -> device_rules.ManifestFacts:
        """Decode and verify an envelope once per process (its bytes decide the outcome)."""
        key = hashlib.sha256(envelope).digest()
        known = self._facts.get(key)
        if known is None:
            known = self._verify(envelope)
            self._facts[key] = known
        if isinstance(known, device_rules.DeviceCheckError):
            raise known
        return known

    def manifest_digest(self, envelope: bytes) -> bytes:
        """The SUIT digest of a verified envelope's manifest (what a report names)."""
        return self._digests.get(hashlib.sha256(envelope).digest(), b"")

    def _verify(
        self, envelope_bytes: bytes
    ) -> device_rules.ManifestFacts | device_rules.DeviceCheckError:
        from manifests import suit

        try:
            try:
                envelope = suit.decode_envelope(envelope_bytes)
            except suit.SUITError as exc:
                raise device_rules.SignatureCheckError(f"envelope does not decode: {exc}") from None
            try:
                verdict = suit.verify_envelope(envelope, self.trust_anchors, threshold=1)
            except suit.SUITUnsupportedError as exc:
                raise device_rules.UnsupportedManifestError(str(exc)) from None
            device_rules.require_signature(list(verdict.valid_kids))
            self._digests[hashlib.sha256(envelope_bytes).digest()] = envelope.manifest_digest
            return device_rules.facts_from_manifest(envelope.manifest)
        except device_rules.DeviceCheckError as exc:
            return exc

    # registration and keep-alive

    def schedule_update(self, device: LoadDevice) -> None:
        device.update_due = time.monotonic() + max(self.spec.lifetime * 0.5, 0.5)
        heapq.heappush(self._due, (device.update_due, device.index - self.spec.first))

    async def _update_loop(self) -> None:
        while True:
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                due, i = heapq.heappop(self._due)
                device = self.devices[i]
                if device.registered and device.update_due == due:
                    self.spawn(device.update())
            await asyncio.sleep(0.1)

    async def register_until_done(self, device: LoadDevice) -> None:
        """Register; on refusal or silence, again after a pause (as the full simulator)."""
        while True:
            try:
                if self._slots is None:
                    await device.register()
                else:
                    async with self._slots:
                        await device.register()
                return
            except (LoadSimError, TimeoutError) as exc:
                self.stats.register_failures += 1
                log.info("%s: registration failed (%s), retrying", device.endpoint, exc)
                await asyncio.sleep(1 + random.random())  # noqa: S311

    async def start(self) -> None:
        """Open the socket and register every device (paced by the spec)."""
        self.open()
        self.started_at = time.time()
        self._slots = asyncio.Semaphore(self.spec.register_concurrency)
        self.spawn(self._update_loop())
        interval = 1 / self.spec.register_rate if self.spec.register_rate else 0.0
        for i, device in enumerate(self.devices):
            self.spawn(self.register_until_done(device))
            if interval:
                await asyncio.sleep(interval)
            elif i % 1000 == 999:
                await asyncio.sleep(0)

    def registered(self) -> int:
        return sum(1 for d in self.devices if d.registered)

    async def wait_registered(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.registered() < len(self.devices):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.registered()} of {len(self.devices)} devices registered in {timeout} s"
                )
            await asyncio.sleep(0.1)

    async def download_all(self, uri: str, *, concurrency: int) -> tuple[int, int]:
        """Every device fetches the envelope at ``uri`` and its payload, checked as in an update
        but outside Object 5 (a plain download, no campaign): (succeeded, failed)."""
        slots = asyncio.Semaphore(concurrency)
        ok = failed = 0

        async def one(device: LoadDevice) -> None:
            nonlocal ok, failed
            async with slots:
                self.stats.downloading += 1
                self.stats.max_downloading = max(self.stats.max_downloading, self.stats.downloading)
                try:
                    envelope = bytearray()
                    await device.fetch(uri, envelope.extend)
                    facts = self.manifest_facts(bytes(envelope))
                    digest = hashlib.sha256()
                    size = await device.fetch(_payload_uri(uri, facts), digest.update)
                    if size != facts.image_size or digest.digest() != facts.image_digest:
                        raise device_rules.ImageDigestMismatchError("payload differs")
                    ok += 1
                except (DownloadFailedError, device_rules.DeviceCheckError) as exc:
                    log.info("%s plain download failed: %s", device.endpoint, exc)
                    failed += 1
                finally:
                    self.stats.downloading -= 1

        self.stats.downloading = 0
        await asyncio.gather(*(one(d) for d in self.devices))
        return ok, failed

    def dtls_figures(self) -> dict[str, int]:
        """The fleet's DTLS sessions: up now, handshakes completed, flights sent again,
        handshakes given up and started over (all 0 without DTLS)."""
        links = [d.link for d in self.devices if d.link is not None]
        return {
            "connected": sum(1 for link in links if link.connected),
            "handshakes": sum(link.handshakes for link in links),
            "retransmissions": sum(link.retransmissions for link in links),
            "restarts": sum(link.restarts for link in links),
        }

    async def stop(self) -> None:
        for device in self.devices:
            if device.link is not None:
                device.link.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status(fleet: LoadFleet, **extra: Any) -> str:
    return json.dumps(
        {
            "registered": fleet.registered(),
            "devices": len(fleet.devices),
            "installed": sum(1 for d in fleet.devices if d.boots),
            "rss": rss_bytes(),
            "started_at": fleet.started_at,
            "last_registered": fleet.last_registered,
            "stats": dataclasses.asdict(fleet.stats),
            "dtls": fleet.dtls_figures(),
            **extra,
        },
        sort_keys=True,
    )


async def serve(spec: LoadFleetSpec, *, status_seconds: float, wait_for_go: bool = False) -> None:
    """Run one load fleet until stdin closes. Prints one JSON line per ``status_seconds`` and
    one answer per command line read from stdin (with ``wait_for_go``, the devices are built
    and start registering only when the line ``go`` is read: processes of one burst start
    together):

    ``status`` -> the status line; ``download URI CONCURRENCY`` -> every device downloads the
    envelope at URI and its payload (no campaign), answered with
    ``{"download": {"ok", "failed", "seconds", "max_downloading"}}``; ``quit`` ends it.
    """
    from manifests import suit  # noqa: F401 - imported before the baseline is measured

    loop = asyncio.get_running_loop()
    before = rss_bytes()
    fleet = LoadFleet(spec)
    built = rss_bytes()
    print(json.dumps({"built": len(fleet.devices), "rss_before": before, "rss": built}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if wait_for_go:
        while (await reader.readline()).strip() not in (b"go", b""):
            pass
    started = time.monotonic()
    await fleet.start()

    async def report() -> None:
        while True:
            await asyncio.sleep(status_seconds)
            print(_status(fleet, uptime=round(time.monotonic() - started, 3)), flush=True)

    reporter = asyncio.ensure_future(report())
    try:
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "quit":
                break
            if line[0] == "status":
                print(_status(fleet, uptime=round(time.monotonic() - started, 3)), flush=True)
            elif line[0] == "download" and len(line) == 3 and line[2].isdigit():
                fleet.stats.max_downloading = 0
                t0 = time.monotonic()
                ok, failed = await fleet.download_all(line[1], concurrency=int(line[2]))
                answer = {
                    "ok": ok,
                    "failed": failed,
                    "seconds": round(time.monotonic() - t0, 3),
                    "max_downloading": fleet.stats.max_downloading,
                }
                print(json.dumps({"download": answer}), flush=True)
            else:
                print(json.dumps({"error": f"unknown command {' '.join(line)!r}"}), flush=True)
    finally:
        reporter.cancel()
        await fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.lwm2m.loadsim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("spec", help="JSON file of LoadFleetSpec fields")
    parser.add_argument("--status-seconds", type=float, default=1.0)
    parser.add_argument(
        "--dtls",
        metavar="PSK_SEED",
        help="DTLS (PSK) to a coaps:// server; each device's key derives from this hex seed "
        "(the spec's psk_seed)",
    )
    parser.add_argument(
        "--wait-for-go", action="store_true", help="build the devices, register on a 'go' line"
    )
    args = parser.parse_args(argv)
    with open(args.spec) as f:
        try:
            fields = json.load(f)
            if args.dtls:
                fields["psk_seed"] = args.dtls
            spec = LoadFleetSpec(**fields)
        except (TypeError, ValueError) as exc:
            parser.error(f"{args.spec}: {exc}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(spec, status_seconds=args.status_seconds, wait_for_go=args.wait_for_go))
    return 0


if __name__ == "__main__":
    sys.exit(main())
