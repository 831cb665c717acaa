"""A fleet of simulated LwM2M devices that update like SUIT processors or plain MCUboot clients.

Each device is an aiocoap context on its own UDP port (the server must be able to reach each one
separately, as through a NAT), all in one asyncio loop, so thousands fit in one process. A device
registers, answers reads/writes/executes on /3 and /5 in text/plain, opaque, TLV, SenML JSON and
SenML CBOR, lets the server observe /5/0/3 and /5/0/5, and takes a package either from a Package
URI write (pull: it downloads block by block, Block2) or pushed to /5/0/0 (Block1), as its /5/0/9
Delivery Method allows. An empty Package URI or an empty Package resets Object 5 to Idle from any
state. Two delivery profiles:

* ``suit``: the package is a SUIT envelope; the device checks it as DESIGN.md section 3 says
  (signature against its trust anchors, vendor, class, sequence, security counter, expiry by its
  own clock: :mod:`manifests.device_rules`), then fetches the payload from the manifest's URI
  and checks size and digest. Execute Update installs, reboots (re-registers with the new
  version) and raises the security counter after a good boot, or reverts on a boot fault.
* ``image``: like Zephyr's LwM2M client over MCUboot. The package is the raw MCUboot image,
  written into the secondary slot (Result 2 when it does not fit; Result 6 when it is not an
  MCUboot image). Execute Update checks the hash TLV and the signature against the device's
  bootloader key (Result 5 from Updating, as Zephyr reports it), then reboots: MCUboot refuses a
  downgrade (version below the running one, or security counter below the device's) or an image
  of another vendor/class UUID and the device comes back on the old image with Result 8; a boot
  fault reverts (8); otherwise the image is confirmed (1) and the device re-registers with the
  header's version as its /3/0/3. The secondary slot is held in memory: a simulator restarted
  with an image device in Downloaded brings it back Idle with Result 4.

Object 5 State and Result follow :class:`DeviceFirmwareObject`.

Faults (per device, or drawn per device from rates with a seeded RNG): ``download_drop`` (result
4), ``digest_mismatch`` (5), ``no_space`` (2), ``boot_fail`` (8 after a revert), ``offline``
(silent for a while after registering), ``slow_link`` (delay per block), ``clock_skew`` (seconds
added to its clock), ``wrong_class`` (its class ID differs from the one it claims),
``no_report`` (a SUIT device that signs no report of its updates).

State persists to a JSON file (atomically replaced) so a fleet survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import random
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from manifests import device_rules, device_trust
from manifests.images import delta as deltas
from manifests.images.encryption import NoEncryptionTlvError, decrypt_image
from manifests.images.mcuboot import IMAGE_MAGIC, ImageError, ImageInfo, parse_image
from manifests.images.signature import load_bootloader_key, verify_image_signature
from manifests.suit import keys as suit_keys
from manifests.suit import report as suit_report
from manifests.versions import VersionError, format_version, parse_version
from workers.lwm2m import content, dtls
from workers.lwm2m.block1 import Block1Assembler, BlockOptionError, IncompleteBodyError
from workers.lwm2m.dtls import MAX_PSK_BYTES
from workers.lwm2m.errors import LwM2MError, Object5TransitionError, PayloadTooLargeError
from workers.lwm2m.linkformat import ObjectLink, format_registration_payload
from workers.lwm2m.object5 import (
    PROTOCOL_SCHEMES,
    WRONG_PRECURSOR_PKG_NAME,
    DeliveryMethod,
    DeviceFirmwareObject,
    FwResult,
    FwState,
)
from workers.lwm2m.ports import claim_udp_port, release_udp_port
from workers.lwm2m.reads import read_answer

log = logging.getLogger("workers.lwm2m.simulator")

FAULTS = (
    "download_drop",
    "digest_mismatch",
    "no_space",
    "boot_fail",
    "offline",
    "slow_link",
    "clock_skew",
    "wrong_class",
    "no_report",
)


DELIVERY_PROFILES = ("suit", "image")
_MCUBOOT_MAGIC = IMAGE_MAGIC.to_bytes(4, "little")
_PACKAGE_PATH = ("5", "0", "0")
# The SUIT report object (docs/lwm2m.md, "SUIT reports"): the server writes the attempt's nonce
# to /26241/0/0 before it delivers; the device signs its report of the attempt into /26241/0/1.
REPORT_OBJECT = 26241
REPORT_NONCE_PATH = (REPORT_OBJECT, 0, 0)
REPORT_PATH = (REPORT_OBJECT, 0, 1)


class DownloadError(LwM2MError):
    """The device could not fetch the package (maps to Update Result 4)."""

    code = "device.download_failed"


class SlotFullError(DownloadError):
    """The package is larger than the device's update slot (maps to Update Result 2)."""

    code = "device.no_space"


@dataclass
class Faults:
    download_drop: bool = False
    digest_mismatch: bool = False
    no_space: bool = False
    boot_fail: bool = False
    offline_seconds: float = 0.0
    slow_link_seconds: float = 0.0
    clock_skew_seconds: float = 0.0
    wrong_class: bool = False
    no_report: bool = False  # a SUIT device that signs no report (an old or broken one)

    @classmethod
    def parse(cls, specs: list[str]) -> Faults:
        """'download_drop', 'offline=5', 'slow_link=0.05', 'clock_skew=-86400', ..."""
        faults = cls()
        for spec in specs:
            name, _, value = spec.partition("=")
            name = name.strip().replace("-", "_")
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
            if name == "offline":
                faults.offline_seconds = float(value or 30)
            elif name == "slow_link":
                faults.slow_link_seconds = float(value or 0.05)
            elif name == "clock_skew":
                faults.clock_skew_seconds = float(value or 3600)
            else:
                setattr(faults, name, True)
        return faults


@dataclass
class DeviceState:
    """What a device keeps in flash; exactly what the JSON state file stores."""

    endpoint: str
    manufacturer: str
    model: str
    serial: str
    vendor_id: str
    class_id: str
    version: str = "1.0.0"
    sequence_number: int = 0
    security_counter: int = 0
    component_id: list[str] = field(default_factory=lambda: ["00"])
    payload_format: str = "mcuboot"
    manifest_profile: str = "extended"  # which SUIT envelopes it takes (docs/suit.md)
    slot_size: int = 0x100000
    fw_state: int = 0
    fw_result: int = 0
    package_uri: str = ""
    protocols: list[int] = field(default_factory=lambda: [0])
    lwm2m_version: str = "1.1"
    lifetime: int = 300
    queue_mode: bool = False
    faults: Faults = field(default_factory=Faults)
    staged: dict[str, Any] | None = None  # the verified, downloaded update awaiting Execute
    psk: str = ""  # DTLS pre-shared key (hex; identity = endpoint); empty: NoSec only
    delivery: str = "suit"  # "suit" (envelope, then payload) or "image" (raw MCUboot image)
    bootloader_key: str = ""  # image profile: the public key PEM MCUboot verifies images with
    downgrade_prevention: bool = True  # image profile: MCUboot refuses older version / counter
    delivery_method: int = int(DeliveryMethod.PULL)  # /5/0/9
    # suit profile: the signed device trust policy it holds (hex; docs/suit.md). Empty: it
    # checks one signature against its trust anchors, as devices without a policy do.
    trust_policy: str = ""
    # SUIT profile: the private key (PEM) the device signs its SUIT reports with, the nonce the
    # server gave the current attempt (hex) and the signed report of the last attempt (hex).
    report_key: str = ""
    report_nonce: str = ""
    report: str = ""
    # Payload decryption (docs/suit.md, "Encrypted payloads"): the kid (hex) the device's key is
    # named by in an encryption info, and the key: a class key-encryption key (hex) or the
    # device's own P-256 private key (PKCS#8 PEM). Empty: the device takes no encrypted payload.
    decryption_kid: str = ""
    decryption_key: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceState:
        data = dict(data)
        data["faults"] = Faults(**data.get("faults", {}))
        return cls(**data)


class _DeviceResource(resource.ObservableResource, resource.PathCapable):
    """The device's whole data model behind one resource (it parses paths itself)."""

    def __init__(self, device: SimulatedDevice) -> None:
        super().__init__()
        self.device = device
        self._observers: dict[tuple[str, ...], set[Any]] = {}

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        # A pushed package is taken block by block, so State shows Downloading while it arrives
        # and the slot bounds it; everything else is small and assembled by aiocoap.
        return not (
            request.code in (Code.PUT, Code.POST) and tuple(request.opt.uri_path) == _PACKAGE_PATH
        )

    async def add_observation(self, request: aiocoap.Message, serverobservation: Any) -> None:
        path = tuple(request.opt.uri_path)
        if path not in (("5", "0", "3"), ("5", "0", "5")):
            return
        observers = self._observers.setdefault(path, set())
        observers.add(serverobservation)
        serverobservation.accept(lambda: observers.discard(serverobservation))

    def notify(self) -> None:
        for observers in list(self._observers.values()):
            for observation in list(observers):
                observation.trigger()

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            path = content.parse_path("/" + "/".join(request.opt.uri_path))
        except LwM2MError:
            return aiocoap.Message(code=Code.BAD_REQUEST)
        try:
            if request.code == Code.GET:
                return self.device.handle_read(path, request.opt.accept)
            if request.code in (Code.PUT, Code.POST) and path == (5, 0, 0):
                return self.device.handle_package(request)
            if request.code == Code.PUT:
                return self.device.handle_write(path, request)
            if request.code == Code.POST:
                return self.device.handle_execute(path)
        except Object5TransitionError:
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        except LwM2MError as exc:
            return aiocoap.Message(code=Code.BAD_REQUEST, payload=str(exc)[:100].encode())
        return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)


class SimulatedDevice:
    def __init__(
        self,
        state: DeviceState,
        *,
        server_uri: str,
        trust_anchors: list[Any],
        on_change: Callable[[], None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.state = state
        self.server_uri = server_uri.rstrip("/")
        self.trust_anchors = trust_anchors
        self.on_change = on_change or (lambda: None)
        self.host = host
        self.fw = DeviceFirmwareObject(
            FwState(state.fw_state), FwResult(state.fw_result), state.package_uri
        )
        # The secondary slot of an image-profile device (kept in memory, not in the state file).
        self.slot: bytes | None = None
        # The primary slot: the image the device runs, what a delta is applied to (in memory
        # too: a restarted simulator knows none, so a delta is refused as on the wrong base
        # and the server falls back to the full image). A SUIT device's staged payload waits
        # beside it until the reboot.
        self.installed_image: bytes | None = None
        # Package Name (/5/0/6): set to WRONG_PRECURSOR_PKG_NAME with a wrong-base refusal of
        # a delta, cleared when the next attempt begins.
        self.pkg_name = ""
        self._staged_image: bytes | None = None
        lost = {FwState.DOWNLOADING, FwState.UPDATING}
        if state.delivery == "image":
            lost.add(FwState.DOWNLOADED)
        if self.fw.state in lost:
            # Power loss mid-download/update: a real device restarts the attempt; ours gives up.
            self.fw = DeviceFirmwareObject(FwState.IDLE, FwResult.CONNECTION_LOST, "")
        # Bumped by every start, reset and cancel: a download still running for an older attempt
        # finds it changed and leaves Object 5 alone.
        self._attempt = 0
        self._push: Block1Assembler | None = None  # a pushed package arriving block by block
        self.reboot_delay = 0.05  # between the 2.04 to Execute Update and the "reboot"
        self.context: aiocoap.Context | None = None
        self.port: int | None = None
        self.resource = _DeviceResource(self)
        self.location: tuple[str, ...] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.registered = asyncio.Event()
        self.boots = 0
        self.events: list[str] = []
        # Payload bytes this device received in Block2 responses (the delta benchmark's bytes on
        # the wire; CoAP headers excluded).
        self.bytes_fetched = 0
        # aiocoap keeps a DTLS client session only while something references it.
        self._dtls_session: Any = None

    # lifecycle

    @property
    def secure(self) -> bool:
        """Whether this device talks to its server over DTLS (a coaps server URI)."""
        return urlsplit(self.server_uri).scheme == "coaps"

    async def start(self) -> None:
        await self.open()
        self.begin()

    async def open(self) -> None:
        """The device's CoAP context (its socket, or its DTLS client), before it talks."""
        if self.secure:
            await self._start_dtls()
        else:
            # An exclusive port, not port 0: see workers.lwm2m.ports for why.
            self.port = claim_udp_port(self.host)
            self.context = await aiocoap.Context.create_server_context(
                self.resource, bind=(self.host, self.port), transports=["udp6"]
            )

    def begin(self) -> None:
        """Register, then keep the registration up (after :meth:`open`)."""
        self._spawn(self._registration_loop())

    async def _start_dtls(self) -> None:
        """DTLS client with the device's PSK; the server's requests come back on its session,
        so the device listens on no port of its own."""
        if not self.state.psk:
            raise LwM2MError(f"{self.state.endpoint}: a coaps server needs a PSK (FleetSpec.dtls)")
        self.context = await dtls.client_context(self.resource)
        self.context.client_credentials.load_from_dict(
            {
                f"{self.server_uri}/*": {
                    "dtls": {
                        "psk": bytes.fromhex(self.state.psk),
                        "client-identity": self.state.endpoint.encode(),
                    }
                }
            }
        )

    def _drop_dtls_session(self) -> None:
        """Forget a DTLS session that stopped working; the next request shakes hands anew."""
        session, self._dtls_session = self._dtls_session, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.shutdown()

    async def stop(self, *, deregister: bool = True) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if deregister and self.location and self.context is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.context.request(
                        aiocoap.Message(code=Code.DELETE, uri=self._uri("/".join(self.location)))
                    ).response,
                    timeout=2,
                )
        if self.context is not None:
            await self.context.shutdown()
            self.context = None
        self._dtls_session = None
        if self.port is not None:
            release_udp_port(self.host, self.port)
            self.port = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _uri(self, path: str) -> str:
        return f"{self.server_uri}/{path.lstrip('/')}"

    def now(self) -> dt.datetime:
        """The device's own clock (skewed when the fault says so)."""
        return dt.datetime.fromtimestamp(
            time.time() + self.state.faults.clock_skew_seconds, tz=dt.UTC
        )

    def _persist(self) -> None:
        self.state.fw_state = int(self.fw.state)
        self.state.fw_result = int(self.fw.result)
        self.state.package_uri = self.fw.package_uri
        self.on_change()
        self.resource.notify()

    # registration

    def _objects(self) -> list[ObjectLink]:
        ver = "1.1" if self.state.lwm2m_version != "1.0" else None
        return [
            ObjectLink(1, 0),
            ObjectLink(3, 0),
            ObjectLink(5, None, ver),
            ObjectLink(5, 0),
            *([ObjectLink(REPORT_OBJECT, 0)] if self.state.report_key else []),
        ]

    async def register(self) -> None:
        if self.context is None:
            raise LwM2MError("device is not started")
        query = [
            f"ep={self.state.endpoint}",
            f"lt={self.state.lifetime}",
            f"lwm2m={self.state.lwm2m_version}",
        ]
        if self.state.lwm2m_version == "1.0":
            query.append("b=UQ" if self.state.queue_mode else "b=U")
        else:
            query.append("b=U")
            if self.state.queue_mode:
                query.append("Q")
        message = aiocoap.Message(
            code=Code.POST,
            uri=self._uri("rd"),
            payload=format_registration_payload(self._objects()),
            content_format=content.CT_LINK_FORMAT,
        )
        message.opt.uri_query = query
        response = await asyncio.wait_for(self.context.request(message).response, timeout=30)
        if response.code != Code.CREATED:
            raise LwM2MError(f"registration refused: {response.code} {response.payload[:80]!r}")
        self.location = tuple(response.opt.location_path)
        if self.secure:
            self._dtls_session = response.remote
        self.registered.set()
        self.events.append("registered")

    async def _registration_loop(self) -> None:
        if self.state.faults.offline_seconds:
            await asyncio.sleep(self.state.faults.offline_seconds)
        while True:
            try:
                await self.register()
                break
            except (LwM2MError, aiocoap.error.Error, TimeoutError, OSError) as exc:
                log.info("%s: registration failed (%s), retrying", self.state.endpoint, exc)
                await asyncio.sleep(1)
        interval = max(self.state.lifetime * 0.5, 0.5)
        while True:
            await asyncio.sleep(interval)
            if self.location is None or self.context is None:
                continue
            message = aiocoap.Message(code=Code.POST, uri=self._uri("/".join(self.location)))
            try:
                response = await asyncio.wait_for(
                    self.context.request(message).response, timeout=30
                )
            except (aiocoap.error.Error, TimeoutError, OSError):
                self._drop_dtls_session()
                continue
            if response.code == Code.NOT_FOUND:
                self.registered.clear()
                with contextlib.suppress(LwM2MError, aiocoap.error.Error, TimeoutError, OSError):
                    await self.register()

    # data model

    def values(self) -> dict[content.Path, content.Value]:
        s = self.state
        values: dict[content.Path, content.Value] = {
            (3, 0, 0): s.manufacturer,
            (3, 0, 1): s.model,
            (3, 0, 2): s.serial,
            (3, 0, 3): s.version,
            (3, 0, 13): int(self.now().timestamp()),
            (3, 0, 16): "U",
            (5, 0, 1): self.fw.package_uri,
            (5, 0, 3): int(self.fw.state),
            (5, 0, 5): int(self.fw.result),
            (5, 0, 6): self.pkg_name,
            (5, 0, 9): int(s.delivery_method),
        }
        for i, proto in enumerate(s.protocols):
            values[(5, 0, 8, i)] = proto
        if s.report_key:
            values[REPORT_PATH] = bytes.fromhex(s.report)
        return values

    def handle_read(self, path: content.Path, accept: int | None) -> aiocoap.Message:
        return read_answer(self.values(), path, accept)

    def handle_write(self, path: content.Path, request: aiocoap.Message) -> aiocoap.Message:
        if path == REPORT_NONCE_PATH and self.state.report_key:
            nonce = content.decode(request.opt.content_format, request.payload, path).get(path)
            if not isinstance(nonce, bytes) or len(nonce) > suit_report.MAX_NONCE_BYTES:
                return aiocoap.Message(code=Code.BAD_REQUEST)
            self.state.report_nonce, self.state.report = nonce.hex(), ""
            self._persist()
            return aiocoap.Message(code=Code.CHANGED)
        if path != (5, 0, 1):
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        values = content.decode(request.opt.content_format, request.payload, path)
        uri = values.get(path)
        if not isinstance(uri, str) or len(uri.encode()) > 255:
            return aiocoap.Message(code=Code.BAD_REQUEST)
        if uri and self.state.delivery_method == DeliveryMethod.PUSH:
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        if uri:
            self.fw.write_uri(uri)
        else:
            self._reset()
        self._attempt += 1
        self.pkg_name = ""
        self.events.append(f"write_uri {uri!r}")
        if uri:
            scheme = urlsplit(uri).scheme
            if scheme not in {PROTOCOL_SCHEMES.get(p) for p in self.state.protocols}:
                self.fw.reject_uri(FwResult.UNSUPPORTED_PROTOCOL)
            elif not urlsplit(uri).hostname:
                self.fw.reject_uri(FwResult.INVALID_URI)
            elif self.state.delivery == "image":
                self._spawn(self._download_image(uri, self._attempt))
            else:
                self._spawn(self._download(uri, self._attempt))
        self._persist()
        return aiocoap.Message(code=Code.CHANGED)

    def _reset(self) -> None:
        """Empty Package URI or Package: Idle, Result 0, whatever was under way is dropped."""
        self.fw.reset()
        self._attempt += 1
        self._push = None
        self.slot = None
        self.state.staged = None

    def handle_package(self, request: aiocoap.Message) -> aiocoap.Message:
        """A write of /5/0/0 (push), one Block1 block at a time (LwM2M 1.1 E.6, RFC 7959)."""
        if request.opt.content_format not in (None, content.CT_OPAQUE):
            return aiocoap.Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        block = request.opt.block1
        num, more, szx = (
            (block.block_number, block.more, block.size_exponent) if block else (0, False, 6)
        )
        payload = bytes(request.payload)
        if num == 0 and not more and payload in (b"", b"\0"):
            self._reset()
            self.events.append("write_package empty")
            self._persist()
            return aiocoap.Message(code=Code.CHANGED)
        if self.state.delivery_method == DeliveryMethod.PULL:
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        if num == 0 and not (self._push is not None and self.fw.state is FwState.DOWNLOADING):
            self.fw.start_push()  # refused (4.05) unless Idle
            self._attempt += 1
            self.pkg_name = ""
            self._push = Block1Assembler(
                max_bytes=self._slot_size(), max_assemblies=1, max_per_peer=1, ttl=60
            )
            self.events.append("push started")
            self._persist()
        elif self._push is None:
            return aiocoap.Message(code=Code.REQUEST_ENTITY_INCOMPLETE)
        try:
            body = self._push.feed(
                "package",
                peer="server",
                num=num,
                more=more,
                szx=szx,
                payload=payload,
                size1=request.opt.size1,
                now=time.monotonic(),
            )
        except PayloadTooLargeError:
            self._push_failed(FwResult.NOT_ENOUGH_FLASH, "push refused: larger than the slot")
            response = aiocoap.Message(code=Code.REQUEST_ENTITY_TOO_LARGE)
            response.opt.size1 = self._slot_size()
            return response
        except IncompleteBodyError:
            self._push_failed(FwResult.CONNECTION_LOST, "push failed: block out of sequence")
            return aiocoap.Message(code=Code.REQUEST_ENTITY_INCOMPLETE)
        except BlockOptionError:
            self._push_failed(FwResult.CONNECTION_LOST, "push failed: bad Block1")
            return aiocoap.Message(code=Code.BAD_REQUEST)
        if body is None:
            response = aiocoap.Message(code=Code.CONTINUE)
            response.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(num, True, szx)
            return response
        self._push = None
        self.events.append(f"push received {len(body)} bytes")
        if self.state.delivery == "image":
            self._image_received(body, self._attempt)
        else:
            self._spawn(self._suit_download(self._attempt, base_uri=self.server_uri, pushed=body))
        response = aiocoap.Message(code=Code.CHANGED)
        if block is not None:
            response.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(num, False, szx)
        return response

    def _push_failed(self, result: FwResult, event: str) -> None:
        self._push = None
        self.events.append(event)
        self._fail_download(result, self._attempt)

    def handle_execute(self, path: content.Path) -> aiocoap.Message:
        if path == (5, 0, 2):
            self.fw.execute_update()
            self._persist()
            self._spawn(self._install_and_reboot())
            return aiocoap.Message(code=Code.CHANGED)
        if path == (5, 0, 10):
            self.fw.cancel()
            self._attempt += 1
            self._push = None
            self.slot = None
            self.state.staged = None
            self._persist()
            return aiocoap.Message(code=Code.CHANGED)
        return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)

    # update

    async def fetch(
        self, uri: str, *, drop_after: int | None = None, max_size: int | None = None
    ) -> bytes:
        """GET with Block2, block by block (resumable by number); checks ETag stays the same.

        With ``max_size`` (the slot an image is written into) a larger Size2, or more data, ends
        the download with :class:`SlotFullError`."""
        if self.context is None:
            raise DownloadError("device is not started")
        szx, num, etag, total = 6, 0, None, None
        buffer = bytearray()
        # The server's address as resolved for the first block, reused for the rest (aiocoap
        # otherwise resolves the URI's host again, through the executor, for every block).
        remote = None
        while True:
            if drop_after is not None and num >= drop_after:
                raise DownloadError("link dropped")
            if self.state.faults.slow_link_seconds:
                await asyncio.sleep(self.state.faults.slow_link_seconds)
            message = aiocoap.Message(code=Code.GET, uri=uri)
            message.opt.block2 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(num, False, szx)
            if remote is not None:
                message.remote = remote
            try:
                response = await asyncio.wait_for(
                    self.context.request(message, handle_blockwise=False).response, timeout=30
                )
            except (aiocoap.error.Error, TimeoutError, OSError) as exc:
                raise DownloadError(f"{uri}: {exc}") from None
            if response.code != Code.CONTENT:
                raise DownloadError(f"{uri}: {response.code}")
            self.bytes_fetched += len(response.payload)
            if etag is None:
                etag, total = response.opt.etag, response.opt.size2
                remote = response.remote
                if max_size is not None and total is not None and total > max_size:
                    raise SlotFullError(f"{total} bytes do not fit a slot of {max_size}")
            elif response.opt.etag != etag:
                raise DownloadError("resource changed during download")
            block = response.opt.block2
            if block is None:
                if max_size is not None and len(response.payload) > max_size:
                    raise SlotFullError(f"{len(response.payload)} bytes exceed {max_size}")
                return bytes(response.payload)
            if block.block_number != num:
                raise DownloadError("unexpected block")
            buffer += response.payload
            if total is not None and len(buffer) > total:
                raise DownloadError("more data than Size2 announced")
            if max_size is not None and len(buffer) > max_size:
                raise SlotFullError(f"more than {max_size} bytes")
            if not block.more:
                return bytes(buffer)
            szx = block.size_exponent
            num = len(buffer) >> (szx + 4)

    def _identity(self) -> device_rules.DeviceIdentity:
        class_id = uuid.UUID(self.state.class_id)
        if self.state.faults.wrong_class:
            class_id = uuid.uuid5(class_id, "another-class")
        return device_rules.DeviceIdentity(
            vendor_id=uuid.UUID(self.state.vendor_id),
            class_id=class_id,
            component_id=tuple(bytes.fromhex(p) for p in self.state.component_id),
            payload_format=self.state.payload_format,
            slot_size=self._slot_size(),
            manifest_profile=self.state.manifest_profile,
            can_decrypt=bool(self.state.decryption_key),
            decryption_kids=frozenset(
                [bytes.fromhex(self.state.decryption_kid)] if self.state.decryption_kid else []
            ),
        )

    def _decryption_key(self) -> Any:
        """The device's decryption key: a PEM private key (P-256, X25519) or a hex KEK."""
        key = self.state.decryption_key
        if key.startswith("-----BEGIN"):
            return serialization.load_pem_private_key(key.encode(), password=None)
        return bytes.fromhex(key)

    def _decrypt(self, ciphertext: bytes, envelope: Any) -> bytes:
        """The plaintext of an encrypted payload, as the device's SUIT processor decrypts it
        after verifying the manifest; each failure is a device refusal with its own reason."""
        from manifests import suit

        key = self._decryption_key()
        try:
            return suit.decrypt_payload(
                ciphertext,
                envelope.manifest.encryption_info[0],
                kid=bytes.fromhex(self.state.decryption_kid),
                key=key,
            )
        except suit.SUITNoRecipientError as exc:
            raise device_rules.DecryptionNoRecipientError(str(exc)) from None
        except suit.SUITKeyUnwrapError as exc:
            raise device_rules.DecryptionKeyUnwrapError(str(exc)) from None
        except suit.SUITCiphertextError as exc:
            raise device_rules.DecryptionTagError(str(exc)) from None
        except suit.SUITEncryptionError as exc:
            raise device_rules.UnsupportedManifestError(str(exc)) from None

    def _slot_size(self) -> int:
        return 1024 if self.state.faults.no_space else self.state.slot_size

    async def _download(self, uri: str, attempt: int) -> None:
        """Pull of a SUIT envelope from the Package URI, then its payload."""
        await self._suit_download(attempt, base_uri=uri)

    async def _suit_download(
        self, attempt: int, *, base_uri: str, pushed: bytes | None = None
    ) -> None:
        """Check the envelope (fetched from ``base_uri``, or pushed), fetch and check the payload;
        a payload path without a host is resolved against ``base_uri``."""
        from manifests import suit

        faults = self.state.faults
        digest = b""  # the manifest's SUIT digest, once the envelope decoded
        try:
            envelope_bytes = pushed if pushed is not None else await self.fetch(base_uri)
            if device_trust.is_trust_policy(envelope_bytes):
                # Its report names the document's SHA-256 as the manifest digest.
                digest = hashlib.sha256(envelope_bytes).digest()
                return self._stage_trust_policy(envelope_bytes, digest, attempt)
            try:
                envelope = suit.decode_envelope(envelope_bytes)
            except suit.SUITError as exc:
                raise device_rules.SignatureCheckError(f"envelope does not decode: {exc}") from None
            digest = envelope.manifest_digest
            device_trust.verify_for_device(
                envelope,
                self.state.trust_policy,
                anchors=self.trust_anchors,
                now=self.now(),
                decrypting=bool(self.state.decryption_key),
            )
            facts = device_rules.facts_from_manifest(envelope.manifest)
            device_rules.check_manifest(
                facts,
                device=self._identity(),
                installed=device_rules.InstalledFirmware(
                    self.state.version, self.state.sequence_number, self.state.security_counter
                ),
                now=self.now(),
            )
            drop = 2 if faults.download_drop else None
            delta_uri = self._delta_uri(base_uri) if pushed is None else None
            if delta_uri is not None:
                # The signed manifest stays the authority: its precursors and image digest.
                if facts.image_digest is None:
                    raise device_rules.MissingFieldError("manifest has no image digest")
                payload = device_rules.apply_delta_update(
                    self.installed_image or b"",
                    await self.fetch(delta_uri, drop_after=drop, max_size=self._slot_size()),
                    result_digest=facts.image_digest,
                    signed_precursors=facts.precursor_digests,
                )
                self.events.append("delta applied")
            else:
                payload_uri = self._payload_uri(base_uri, facts)
                payload = await self.fetch(payload_uri, drop_after=drop)
            if faults.digest_mismatch and payload:
                payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
            if facts.encrypted:
                payload = self._decrypt(payload, envelope)
            device_rules.check_payload(payload, facts)
        except device_rules.DeviceCheckError as exc:
            self._refused_wrong_base(exc.code)
            self.events.append(f"refused {exc.code}")
            log.info("%s refuses update: %s [%s]", self.state.endpoint, exc, exc.code)
            if digest and attempt == self._attempt:
                self._sign_report(digest, exc.code)
            self._fail_download(FwResult(exc.fw_result), attempt)
            return
        except DownloadError as exc:
            self.events.append("download failed")
            log.info("%s download failed: %s", self.state.endpoint, exc)
            if digest and attempt == self._attempt:
                self._sign_report(digest, "device.download_failed")
            self._fail_download(FwResult.CONNECTION_LOST, attempt)
            return
        if self.fw.state is not FwState.DOWNLOADING or attempt != self._attempt:
            return  # cancelled meanwhile
        self.state.staged = {
            "manifest_digest": digest.hex(),
            "version": facts.firmware_version,
            "sequence_number": facts.sequence_number,
            "security_counter": facts.security_counter,
        }
        self._staged_image = payload
        self.fw.download_succeeded()
        self.events.append("downloaded")
        self._persist()

    def _stage_trust_policy(self, data: bytes, digest: bytes, attempt: int) -> None:
        """A trust-policy package: staged when the device's rotation rule accepts it (raises
        the refusal otherwise); Execute Update makes it the device's policy."""
        policy = device_trust.next_policy(
            self.state.trust_policy,
            data,
            class_id=self._identity().class_id,
            anchors=self.trust_anchors,
            now=self.now(),
        )
        if self.fw.state is not FwState.DOWNLOADING or attempt != self._attempt:
            return  # cancelled meanwhile
        self.state.staged = {
            "trust_policy": policy.raw.hex(),
            "version": policy.version,
            "manifest_digest": digest.hex(),
        }
        self.fw.download_succeeded()
        self.events.append("downloaded")
        self._persist()

    def _fail_download(self, result: FwResult, attempt: int) -> None:
        if self.fw.state is FwState.DOWNLOADING and attempt == self._attempt:
            self.fw.download_failed(result)
            self._persist()

    async def _download_image(self, uri: str, attempt: int) -> None:
        """Pull of a raw MCUboot image into the secondary slot."""
        drop = 2 if self.state.faults.download_drop else None
        try:
            image = await self.fetch(uri, drop_after=drop, max_size=self._slot_size())
        except SlotFullError as exc:
            self.events.append("refused device.no_space")
            log.info("%s refuses update: %s", self.state.endpoint, exc)
            self._fail_download(FwResult.NOT_ENOUGH_FLASH, attempt)
            return
        except DownloadError as exc:
            self.events.append("download failed")
            log.info("%s download failed: %s", self.state.endpoint, exc)
            self._fail_download(FwResult.CONNECTION_LOST, attempt)
            return
        self._image_received(image, attempt)

    def _image_received(self, image: bytes, attempt: int) -> None:
        """The whole image is in the slot: Downloaded, unless it is no MCUboot image at all
        (Zephyr's client reports that at the end of the download, Result 6)."""
        if self.fw.state is not FwState.DOWNLOADING or attempt != self._attempt:
            return  # cancelled meanwhile
        if image[:4] == deltas.MAGIC:
            # A delta: refused unless made for the running image; the result then goes through
            # MCUboot's own hash and signature checks at Update like any image.
            try:
                image = device_rules.apply_delta_update(
                    self.installed_image or b"",
                    image,
                    result_digest=deltas.read_header(image).result_sha256,
                    signed_precursors=None,
                )
            except (device_rules.DeviceCheckError, deltas.DeltaError) as exc:
                self._refused_wrong_base(exc.code)
                self.events.append(f"refused {exc.code}")
                log.info("%s refuses delta: %s [%s]", self.state.endpoint, exc, exc.code)
                result = getattr(exc, "fw_result", FwResult.UNSUPPORTED_PACKAGE_TYPE)
                self._fail_download(FwResult(result), attempt)
                return
            self.events.append("delta applied")
        if image[:4] != _MCUBOOT_MAGIC:
            self.events.append("refused device.not_mcuboot")
            log.info("%s refuses update: not an MCUboot image", self.state.endpoint)
            self._fail_download(FwResult.UNSUPPORTED_PACKAGE_TYPE, attempt)
            return
        if self.state.faults.digest_mismatch:
            # Flash corruption in the body (past the header, so the magic still reads right).
            at = min(len(image) - 1, int.from_bytes(image[8:10], "little"))
            image = image[:at] + bytes([image[at] ^ 0xFF]) + image[at + 1 :]
        self.slot = image
        self.fw.download_succeeded()
        self.events.append("downloaded")
        self._persist()

    def _refused_wrong_base(self, code: str) -> None:
        """A delta refused as not made for the running image says so in /5/0/6 (both
        profiles; a SUIT device's signed report says it too)."""
        if code == device_rules.WrongPrecursorError.code:
            self.pkg_name = WRONG_PRECURSOR_PKG_NAME

    @staticmethod
    def _delta_uri(package_uri: str) -> str | None:
        """The delta the server offers with this envelope (``?delta=<sha256>`` on the Package
        URI: the signed manifest cannot name it, it names the result), on the same server."""
        values = parse_qs(urlsplit(package_uri).query).get("delta")
        if not values:
            return None
        digest = values[0].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise device_rules.DeltaFailedError("the offered delta is not named by a SHA-256")
        return urljoin(package_uri, f"/fw/i/{digest}")

    @staticmethod
    def _payload_uri(package_uri: str, facts: device_rules.ManifestFacts) -> str:
        """The manifest's URI when it is an absolute CoAP URI, else the server's digest path.
        An encrypted payload is fetched from the manifest's URI only (resolved against the
        Package URI): the image digest names the plaintext, which no server publishes."""
        if facts.uri and urlsplit(facts.uri).scheme in ("coap", "coaps"):
            return facts.uri
        if facts.encrypted:
            if not facts.uri or facts.uri.startswith("#"):
                raise device_rules.MissingFieldError("an encrypted payload needs a fetch URI")
            return urljoin(package_uri, facts.uri)
        if facts.image_digest is None:
            raise device_rules.MissingFieldError("manifest has no image digest")
        return urljoin(package_uri, f"/fw/i/{facts.image_digest.hex()}")

    def _sign_report(self, manifest_digest: bytes, failure_code: str | None) -> None:
        """Sign the SUIT report of the attempt that just ended (a device with a report key, told
        a nonce by the server; without a nonce there is no attempt to report on)."""
        if not self.state.report_key or not self.state.report_nonce or self.state.faults.no_report:
            return
        key = suit_keys.load_private_key_pem(self.state.report_key.encode())
        report = suit_report.SUITReport(
            manifest_digest=manifest_digest,
            nonce=bytes.fromhex(self.state.report_nonce),
            failure=None
            if failure_code is None
            else suit_report.failure_for(
                failure_code, running_digest=hashlib.sha256(self.installed_image or b"").digest()
            ),
        )
        self.state.report = suit_report.sign_report(report, key).hex()
        self.events.append("report " + ("success" if failure_code is None else failure_code))

    async def _install_and_reboot(self) -> None:
        if self.state.delivery == "image":
            await self._install_image()
            return
        staged = self.state.staged
        await asyncio.sleep(self.reboot_delay)  # the 2.04 goes out before the "reboot"
        if self.fw.state is not FwState.UPDATING:
            return  # reset before the reboot: nothing is installed
        self.registered.clear()
        self.boots += 1
        digest = bytes.fromhex(str((staged or {}).get("manifest_digest") or ""))
        if staged is None or self.state.faults.boot_fail:
            # MCUboot test boot failed: revert to the old image, report failure.
            if digest:
                self._sign_report(digest, "device.boot_failed")
            self.fw.update_failed()
            self.events.append("boot failed, reverted")
        elif "trust_policy" in staged:
            self.state.trust_policy = str(staged["trust_policy"])
            if digest:
                self._sign_report(digest, None)
            self.fw.update_succeeded()
            self.events.append(f"trust policy v{staged['version']}")
        else:
            self.state.version = str(staged["version"])
            self.state.sequence_number = int(staged["sequence_number"])
            # Raised only after the new image booted and confirmed itself.
            self.state.security_counter = max(
                self.state.security_counter,
                int(staged["security_counter"] or 0),  # standard profile: none in the manifest
            )
            if digest:
                self._sign_report(digest, None)
            if self._staged_image is not None:
                self.installed_image = self._staged_image
            self.fw.update_succeeded()
            self.events.append(f"booted {self.state.version}")
        self.state.staged = None
        self._staged_image = None
        self._persist()
        await self.register()

    async def _install_image(self) -> None:
        """Check the slot as the client does at Update, then reboot through MCUboot."""
        await asyncio.sleep(self.reboot_delay)  # the 2.04 goes out before the "reboot"
        if self.fw.state is not FwState.UPDATING:
            return  # reset before the reboot: nothing is installed
        image, self.slot = self.slot, None
        try:
            if image is None:
                raise ImageError("the secondary slot is empty")
            if parse_image(image).is_encrypted:
                # MCUboot decrypts the body while swapping it in, then checks the plaintext's
                # hash and signature: a wrong key or an altered body fails one of them.
                if not self.state.decryption_key:
                    raise NoEncryptionTlvError("the image is encrypted and this device has no key")
                image = decrypt_image(image, self._decryption_key())
            info = verify_image_signature(image, self.state.bootloader_key)
        except ImageError as exc:
            self.events.append(f"refused {exc.code}")
            log.info("%s refuses update: %s [%s]", self.state.endpoint, exc, exc.code)
            self.fw.update_failed(result=FwResult.INTEGRITY_CHECK_FAILURE)
            self._persist()
            return
        self.registered.clear()
        self.boots += 1
        refusal = self._bootloader_refusal(info)
        if refusal is not None:
            # MCUboot leaves the image unbooted; the old image comes back and says so.
            self.fw.update_failed()
            self.events.append(f"bootloader refused: {refusal}")
            log.info("%s: MCUboot refused the image: %s", self.state.endpoint, refusal)
        elif self.state.faults.boot_fail:
            self.fw.update_failed()
            self.events.append("boot failed, reverted")
        else:
            self.state.version = format_version(info.version_tuple or (0, 0, 0, 0))
            if info.security_counter is not None:
                # MCUboot raises its stored counter once the image is confirmed.
                self.state.security_counter = max(
                    self.state.security_counter, info.security_counter
                )
            self.installed_image = image
            self.fw.update_succeeded()
            self.events.append(f"booted {self.state.version}")
        self._persist()
        await self.register()

    def _bootloader_refusal(self, info: ImageInfo) -> str | None:
        """What MCUboot refuses at boot: another vendor/class UUID (when the image names one),
        and with downgrade prevention a lower version (major.minor.revision, as MCUboot compares
        them without the build number) or a security counter below the device's (an image
        without one cannot pass hardware rollback protection)."""
        identity = self._identity()
        if info.vendor_uuid is not None and info.vendor_uuid != identity.vendor_id:
            return f"vendor UUID {info.vendor_uuid} is not {identity.vendor_id}"
        if info.class_uuid is not None and info.class_uuid != identity.class_id:
            return f"class UUID {info.class_uuid} is not {identity.class_id}"
        if not self.state.downgrade_prevention:
            return None
        offered = info.version_tuple or (0, 0, 0, 0)
        try:
            running = parse_version(self.state.version)
        except VersionError:
            running = (0, 0, 0, 0)
        if offered[:3] < running[:3]:
            return f"version {info.version} is below the running {self.state.version}"
        if info.security_counter is None:
            return "no security counter TLV"
        if info.security_counter < self.state.security_counter:
            return (
                f"security counter {info.security_counter} is below the device's "
                f"{self.state.security_counter}"
            )
        return None


@dataclass
class FleetSpec:
    count: int
    manufacturer: str
    model: str
    vendor_id: str
    class_id: str
    prefix: str = "sim"
    version: str = "1.0.0"
    sequence_number: int = 0
    security_counter: int = 0
    lifetime: int = 300
    payload_format: str = "mcuboot"
    manifest_profile: str = "extended"
    component_id: list[str] = field(default_factory=lambda: ["00"])
    # Give each device a random DTLS PSK (kept in its state) and coaps in /5/0/8.
    dtls: bool = False
    # Queue mode: the device registers with UQ (1.0) or Q (1.1) and sleeps between updates.
    queue_mode: bool = False
    lwm2m_version: str = "1.1"
    # "suit": the package is a SUIT envelope; "image": the raw MCUboot image (Zephyr + MCUboot).
    delivery: str = "suit"
    # Image profile: the public key PEM of the imgtool key the device's MCUboot was built with.
    bootloader_key: str = ""
    # Image profile: MCUboot refuses a lower version or a lower security counter.
    downgrade_prevention: bool = True
    slot_size: int = 0x100000
    # /5/0/9 (0 pull, 1 push, 2 both) and /5/0/8 (0 coap, 1 coaps, ...; dtls adds coaps).
    delivery_method: int = int(DeliveryMethod.PULL)
    protocols: list[int] = field(default_factory=lambda: [0])
    # suit profile: the signed device trust policy (hex) every device is provisioned with.
    trust_policy: str = ""
    # Payload decryption: a class key-encryption key (hex, 16 or 32 bytes) every device holds,
    # named by ``decryption_kid`` (hex); or ``device_keys``: each device its own P-256 key, named
    # by its endpoint (docs/suit.md, "Encrypted payloads"). Image profile: the key MCUboot
    # decrypts images with (a P-256 or X25519 private key PEM, or an AES-KW key in hex).
    decryption_kid: str = ""
    decryption_key: str = ""
    device_keys: bool = False

    def __post_init__(self) -> None:
        if self.delivery not in DELIVERY_PROFILES:
            raise ValueError(f"delivery {self.delivery!r} is not one of {DELIVERY_PROFILES}")
        if self.delivery == "image":
            if not self.bootloader_key:
                raise ValueError("an image-profile fleet needs its bootloader_key (public PEM)")
            try:
                load_bootloader_key(self.bootloader_key)
            except ImageError as exc:
                raise ValueError(f"bootloader_key: {exc}") from None
        DeliveryMethod(self.delivery_method)  # ValueError when out of range
        unknown = [p for p in self.protocols if p not in PROTOCOL_SCHEMES]
        if unknown or not self.protocols:
            raise ValueError(f"protocols {self.protocols} are not /5/0/8 values")
        if self.slot_size <= 0:
            raise ValueError("slot_size must be positive")
        if self.delivery == "suit" and bool(self.decryption_kid) != bool(self.decryption_key):
            raise ValueError("decryption_kid and decryption_key go together")
        if (
            self.decryption_key
            and not self.decryption_key.startswith("-----BEGIN")
            and len(bytes.fromhex(self.decryption_key)) not in (16, 32)
        ):
            raise ValueError("decryption_key is a PEM private key or a 16/32-byte KEK in hex")
        if self.device_keys and self.decryption_key:
            raise ValueError("a fleet holds a class key or device keys, not both")


class Fleet:
    """Many devices in one loop, with their state in one JSON file."""

    def __init__(
        self,
        *,
        server_uri: str,
        trust_anchors: list[Any],
        state_file: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.server_uri = server_uri
        self.trust_anchors = trust_anchors
        self.state_file = state_file
        self.host = host
        self.devices: dict[str, SimulatedDevice] = {}
        self._dirty = False

    def load_or_create(
        self,
        spec: FleetSpec,
        *,
        faults: Faults | None = None,
        fault_rates: dict[str, float] | None = None,
        seed: int = 0,
    ) -> list[DeviceState]:
        """Devices from the state file when it has them, else new ones from ``spec``."""
        states: dict[str, DeviceState] = {}
        if self.state_file is not None and self.state_file.exists():
            raw = json.loads(self.state_file.read_text())
            for item in raw.get("devices", []):
                state = DeviceState.from_json(item)
                states[state.endpoint] = state
        rng = random.Random(seed)  # noqa: S311 - fault injection, not cryptography
        for i in range(spec.count):
            endpoint = f"{spec.prefix}-{i:05d}"
            if endpoint in states:
                continue
            device_faults = dataclasses.replace(faults) if faults else Faults()
            for name, rate in (fault_rates or {}).items():
                if rng.random() < rate:
                    extra = Faults.parse([name])
                    for f in dataclasses.fields(Faults):
                        default = getattr(Faults(), f.name)
                        if getattr(extra, f.name) != default:
                            setattr(device_faults, f.name, getattr(extra, f.name))
            states[endpoint] = DeviceState(
                endpoint=endpoint,
                manufacturer=spec.manufacturer,
                model=spec.model,
                serial=f"SN{i:08d}",
                vendor_id=spec.vendor_id,
                class_id=spec.class_id,
                version=spec.version,
                sequence_number=spec.sequence_number,
                security_counter=spec.security_counter,
                lifetime=spec.lifetime,
                payload_format=spec.payload_format,
                manifest_profile=spec.manifest_profile,
                component_id=list(spec.component_id),
                faults=device_faults,
                queue_mode=spec.queue_mode,
                lwm2m_version=spec.lwm2m_version,
                delivery=spec.delivery,
                bootloader_key=spec.bootloader_key,
                downgrade_prevention=spec.downgrade_prevention,
                slot_size=spec.slot_size,
                delivery_method=int(spec.delivery_method),
                protocols=list(spec.protocols),
                trust_policy=spec.trust_policy,
                decryption_kid=spec.decryption_kid,
                decryption_key=spec.decryption_key,
            )
            if spec.device_keys:
                private = ec.generate_private_key(ec.SECP256R1())
                states[endpoint].decryption_kid = endpoint.encode().hex()
                states[endpoint].decryption_key = private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode()
        for state in states.values():
            if state.delivery == "suit" and not state.report_key:
                key = suit_keys.generate_private_key("Ed25519")
                state.report_key = suit_keys.private_key_pem(key).decode()
        if spec.dtls:
            for state in states.values():
                if not state.psk:
                    state.psk = secrets.token_hex(MAX_PSK_BYTES)
                if 1 not in state.protocols:
                    state.protocols = [*state.protocols, 1]  # coaps
        for state in states.values():
            self.devices[state.endpoint] = SimulatedDevice(
                state,
                server_uri=self.server_uri,
                trust_anchors=self.trust_anchors,
                on_change=self._mark_dirty,
                host=self.host,
            )
        self.save()
        return [d.state for d in self.devices.values()]

    def decryption_public_keys(self) -> dict[str, tuple[bytes, str]]:
        """Endpoint -> (kid, public key PEM) of the devices holding their own P-256 key (to
        register them on the server)."""
        out = {}
        for endpoint, device in self.devices.items():
            key = device.state.decryption_key
            if key.startswith("-----BEGIN"):
                private = serialization.load_pem_private_key(key.encode(), password=None)
                pem = private.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                out[endpoint] = (bytes.fromhex(device.state.decryption_kid), pem.decode())
        return out

    def psks(self) -> dict[str, bytes]:
        """Endpoint -> PSK of the devices that have one (to provision them on the server)."""
        return {
            endpoint: bytes.fromhex(device.state.psk)
            for endpoint, device in self.devices.items()
            if device.state.psk
        }

    def report_keys(self) -> dict[str, str]:
        """Endpoint -> public report key (PEM) of the SUIT devices (to register on the server)."""
        return {
            endpoint: suit_keys.public_key_pem(
                suit_keys.load_private_key_pem(device.state.report_key.encode())
            ).decode()
            for endpoint, device in self.devices.items()
            if device.state.report_key
        }

    def _mark_dirty(self) -> None:
        self._dirty = True
        self.save()

    def save(self) -> None:
        if self.state_file is None:
            return
        data = {"devices": [d.state.to_json() for d in self.devices.values()]}
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.state_file)
        self._dirty = False

    async def start(self, *, concurrency: int = 200) -> None:
        semaphore = asyncio.Semaphore(concurrency)

        async def _one(device: SimulatedDevice) -> None:
            async with semaphore:
                await device.start()

        await asyncio.gather(*(_one(d) for d in self.devices.values()))

    async def open(self, *, concurrency: int = 200) -> None:
        """Every device's context, none talking yet (:meth:`begin` starts them at once)."""
        semaphore = asyncio.Semaphore(concurrency)

        async def _one(device: SimulatedDevice) -> None:
            async with semaphore:
                await device.open()

        await asyncio.gather(*(_one(d) for d in self.devices.values()))

    def begin(self) -> None:
        """Every opened device registers now: one burst."""
        for device in self.devices.values():
            device.begin()

    async def wait_registered(self, timeout: float = 30) -> None:
        await asyncio.wait_for(
            asyncio.gather(*(d.registered.wait() for d in self.devices.values())), timeout
        )

    async def stop(self, *, deregister: bool = True) -> None:
        await asyncio.gather(
            *(d.stop(deregister=deregister) for d in self.devices.values()),
            return_exceptions=True,
        )
        self.save()
