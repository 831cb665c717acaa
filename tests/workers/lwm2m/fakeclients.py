"""Fake LwM2M clients that behave, case by case, like the real ones the gateway met
(``/work/shared/interop/README.md``): the Anjay demo client and the Wakaama example client.

Each is an aiocoap endpoint on loopback that registers at a gateway and serves /3/0 and /5/0.
They reproduce what the driver must cope with, not the whole of either client:

* Anjay (``profile="anjay"``): takes only its own package format (``anjay_package``; anything
  else ends in Update Result 6, a bad CRC in 5), by pull (Block2 at 1024 bytes) and by push
  (Block1 to /5/0/0); /5/0/8 = [0, 1, 4, 5], /5/0/9 = 2; Observe on /5/0/3 with NON
  notifications, kept until the server deregisters (a forgotten token is never told off); on
  Update it "reboots" into ``new_version`` and registers again with Result 1.
* Wakaama (``profile="wakaama"``): starts in State 1 without a download; a read of /5/0/1 is
  4.05; writes of /5/0/0 and /5/0/1 are taken and ignored; Execute /5/0/2 moves State 1 to 2;
  /5/0/8 = [0, 1], /5/0/9 = 1 (push only); TLV answers; /3/0/13 is its clock plus about 43
  years; it exits when its registration Update gets 4.04.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import NON

from workers.lwm2m import content
from workers.lwm2m.ports import claim_udp_port, release_udp_port

ANJAY_MAGIC = b"ANJAY_FW"
ANJAY_HEADER = struct.Struct(">8sHHIB")
# Wakaama's example Device object: its clock plus a constant of about 43 years.
WAKAAMA_CLOCK_OFFSET = int(43 * 365.25 * 86400)


def anjay_package(payload: bytes, *, version: bytes = b"1.0", crc: int | None = None) -> bytes:
    """A package in the Anjay demo's format: ``>8sHHIB{n}s`` header, then the payload."""
    crc = zlib.crc32(payload) if crc is None else crc
    return ANJAY_HEADER.pack(ANJAY_MAGIC, 2, 0, crc, len(version)) + version + payload


def anjay_check(package: bytes) -> int:
    """The Update Result the Anjay demo ends a download with: 0 (taken), 6 (not its format),
    5 (CRC mismatch)."""
    if len(package) < ANJAY_HEADER.size:
        return 6
    magic, header_version, force_error, crc, vlen = ANJAY_HEADER.unpack_from(package)
    version = package[ANJAY_HEADER.size : ANJAY_HEADER.size + vlen]
    if magic != ANJAY_MAGIC or header_version != 2 or force_error != 0 or version != b"1.0":
        return 6
    if zlib.crc32(package[ANJAY_HEADER.size + vlen :]) != crc:
        return 5
    return 0


@dataclass
class Profile:
    name: str
    manufacturer: str
    model: str
    version: str
    lwm2m: str
    protocols: list[int]
    delivery_method: int
    start_state: int = 0
    clock_offset: int = 0
    tlv_only: bool = False


ANJAY = Profile("anjay", "acme.example", "demo-client", "3.14.0", "1.2", [0, 1, 4, 5], 2)
WAKAAMA = Profile(
    "wakaama",
    "Open Mobile Alliance",
    "Lightweight M2M Client",
    "1.0",
    "1.1",
    [0, 1],
    1,
    start_state=1,
    clock_offset=WAKAAMA_CLOCK_OFFSET,
    tlv_only=True,
)
PROFILES = {"anjay": ANJAY, "wakaama": WAKAAMA}


class _PathResource(resource.ObservableResource):
    """One LwM2M resource of the fake; every request goes to the client."""

    def __init__(self, client: FakeClient, path: content.Path) -> None:
        super().__init__()
        self.client = client
        self.path = path
        self.renders: dict[bytes, int] = {}

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # Block1 / Block2 handled by the client, as the real ones do

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        response = self.client.handle(self.path, request)
        if request.opt.observe == 0 and response.code == Code.CONTENT:
            count = self.renders.get(request.token, 0)
            self.renders[request.token] = count + 1
            if count:
                response.mtype = NON  # notifications as NON: a forgotten one gets no Reset
                self.client.notifications_sent += 1
        return response

    async def add_observation(self, request: aiocoap.Message, serverobservation: Any) -> None:
        self.client.observed_tokens.append(request.token)
        await super().add_observation(request, serverobservation)


@dataclass
class FakeClient:
    """One fake device. ``log`` records what the server did to it, in order."""

    endpoint: str
    server_uri: str
    profile: Profile = field(default_factory=lambda: ANJAY)
    lifetime: int = 60
    update_interval: float | None = None
    new_version: str = "3.15.0"
    # Largest Block1 SZX taken on /5/0/0, and how a larger block is answered: "413" (4.13 with
    # the size) or "continue" (2.31 Continue with the smaller size).
    max_block1_szx: int = 6
    block1_shrink: str = "413"
    # Go to Downloading on a Package URI and never finish (a download that runs out of time).
    stall_download: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    state: int = 0
    result: int = 0
    package_uri: str = ""
    version: str = ""
    log: list[str] = field(default_factory=list)
    observed_tokens: list[bytes] = field(default_factory=list)
    deregistered_tokens: list[bytes] = field(default_factory=list)
    notifications_sent: int = 0
    block1_sizes: list[int] = field(default_factory=list)
    block2_szx: list[int] = field(default_factory=list)
    received: bytes = b""
    exited: bool = False
    registrations: int = 0

    def __post_init__(self) -> None:
        self.state = self.profile.start_state
        self.version = self.profile.version
        self.context: aiocoap.Context | None = None
        self.location: list[str] | None = None
        self._buffer = bytearray()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resources: dict[content.Path, _PathResource] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        site = resource.Site()
        paths: list[content.Path] = [(3, 0, r) for r in (0, 1, 2, 3, 13)]
        paths += [(5, 0, r) for r in (0, 1, 2, 3, 5, 8, 9)]
        for path in paths:
            self._resources[path] = _PathResource(self, path)
            site.add_resource([str(p) for p in path], self._resources[path])
        self.port = claim_udp_port(self.host)
        self.context = await aiocoap.Context.create_server_context(
            site, bind=(self.host, self.port), transports=["udp6"]
        )
        await self.register()
        if self.update_interval:
            self._spawn(self._update_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        context, self.context = self.context, None
        if context is not None:
            await context.shutdown()
            release_udp_port(self.host, self.port)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, uri: str, **kwargs: Any) -> aiocoap.Message:
        assert self.context is not None
        message = aiocoap.Message(code=Code.POST, uri=uri, **kwargs)
        return await asyncio.wait_for(self.context.request(message).response, timeout=10)

    async def register(self) -> None:
        query = f"ep={self.endpoint}&lt={self.lifetime}&lwm2m={self.profile.lwm2m}&b=U"
        response = await self._post(
            f"{self.server_uri}/rd?{query}",
            payload=b"</1/0>,</3/0>,</5/0>",
            content_format=content.CT_LINK_FORMAT,
        )
        assert response.code == Code.CREATED, response
        self.location = list(response.opt.location_path)
        self.registrations += 1
        self.log.append("register")

    async def update(self) -> Code:
        """One registration Update; Wakaama exits on 4.04 (Anjay registers again)."""
        assert self.location is not None
        response = await self._post(f"{self.server_uri}/{'/'.join(self.location)}")
        self.log.append(f"update -> {response.code}")
        if response.code == Code.NOT_FOUND:
            if self.profile.name == "wakaama":
                self.exited = True
                self._spawn(self.stop())
            else:
                await self.register()
        return response.code

    async def _update_loop(self) -> None:
        assert self.update_interval is not None
        while not self.exited:
            await asyncio.sleep(self.update_interval)
            with contextlib.suppress(aiocoap.error.Error, TimeoutError):
                await self.update()

    def observers(self) -> int:
        return len(self._resources[(5, 0, 3)]._observations)

    def set_state(self, state: int, result: int | None = None) -> None:
        self.state = state
        if result is not None:
            self.result = result
        self._resources[(5, 0, 3)].updated_state()

    # --- data model ----------------------------------------------------------------------------

    def values(self) -> dict[content.Path, content.Value]:
        values: dict[content.Path, content.Value] = {
            (3, 0, 0): self.profile.manufacturer,
            (3, 0, 1): self.profile.model,
            (3, 0, 2): f"{self.endpoint}-serial",
            (3, 0, 3): self.version,
            (3, 0, 13): int(time.time()) + self.profile.clock_offset,
            (5, 0, 1): self.package_uri,
            (5, 0, 3): self.state,
            (5, 0, 5): self.result,
            (5, 0, 9): self.profile.delivery_method,
        }
        for i, proto in enumerate(self.profile.protocols):
            values[(5, 0, 8, i)] = proto
        return values

    def handle(self, path: content.Path, request: aiocoap.Message) -> aiocoap.Message:
        if request.code == Code.GET:
            return self._read(path, request)
        if request.code == Code.PUT:
            return self._write(path, request)
        if request.code == Code.POST:
            return self._execute(path)
        return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)

    def _read(self, path: content.Path, request: aiocoap.Message) -> aiocoap.Message:
        if request.opt.observe == 1:
            self.deregistered_tokens.append(request.token)
            self.log.append(f"deregister {request.token.hex()}")
        if path == (5, 0, 1) and self.profile.name == "wakaama":
            self.log.append("read /5/0/1 -> 4.05")
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        if path == (5, 0, 0):
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        selected = {p: v for p, v in self.values().items() if p[:3] == path}
        single = list(selected) == [path]
        fmt = content.CT_TEXT if single and not self.profile.tlv_only else content.CT_TLV
        payload = content.encode(fmt, selected, path)
        return aiocoap.Message(code=Code.CONTENT, payload=payload, content_format=fmt)

    def _write(self, path: content.Path, request: aiocoap.Message) -> aiocoap.Message:
        if path == (5, 0, 0):
            return self._write_package(request)
        if path != (5, 0, 1):
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        uri = content.decode(request.opt.content_format, request.payload, path).get(path)
        self.log.append(f"write /5/0/1 {uri!r}")
        if self.profile.name == "wakaama":
            return aiocoap.Message(code=Code.CHANGED)  # taken, and nothing happens
        if not isinstance(uri, str):
            return aiocoap.Message(code=Code.BAD_REQUEST)
        if uri == "":
            self.package_uri = ""
            self.set_state(0, 0)
            return aiocoap.Message(code=Code.CHANGED)
        if self.state != 0:
            return aiocoap.Message(code=Code.BAD_REQUEST)
        self.package_uri = uri
        self.set_state(1, 0)
        if not self.stall_download:
            self._spawn(self._download(uri))
        return aiocoap.Message(code=Code.CHANGED)

    def _write_package(self, request: aiocoap.Message) -> aiocoap.Message:
        block1 = request.opt.block1
        self.log.append(
            f"write /5/0/0 {len(request.payload)} bytes"
            + (f" block {block1.block_number}/{block1.size_exponent}" if block1 else "")
        )
        if self.profile.name == "wakaama":
            return aiocoap.Message(code=Code.CHANGED)  # taken, and nothing happens
        if block1 is None:
            if not request.payload:
                self.set_state(0, 0)  # an empty package resets to Idle
                return aiocoap.Message(code=Code.CHANGED)
            return self._package_done(bytes(request.payload), None)
        num, more, szx = block1.block_number, block1.more, block1.size_exponent
        if szx > self.max_block1_szx and (self.block1_shrink == "413" or not more):
            answer = aiocoap.Message(code=Code.REQUEST_ENTITY_TOO_LARGE)
            answer.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(
                0, False, self.max_block1_szx
            )
            return answer
        offset = num * (1 << (szx + 4))
        if num == 0:
            self._buffer = bytearray()
            self.set_state(1, 0)
        if offset != len(self._buffer):
            return aiocoap.Message(code=Code.REQUEST_ENTITY_INCOMPLETE)
        self._buffer += request.payload
        self.block1_sizes.append(len(request.payload))
        if len(self._buffer) >= ANJAY_HEADER.size and anjay_check(bytes(self._buffer)) == 6:
            self.set_state(0, 6)  # the header says it is not ours: refused at once
            return aiocoap.Message(code=Code.BAD_REQUEST)
        if more:
            answer = aiocoap.Message(code=Code.CONTINUE)
            answer.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(
                num, True, min(szx, self.max_block1_szx)
            )
            return answer
        return self._package_done(bytes(self._buffer), block1)

    def _package_done(self, package: bytes, block1: Any) -> aiocoap.Message:
        self.received = package
        verdict = anjay_check(package)
        if verdict:
            self.set_state(0, verdict)
            return aiocoap.Message(code=Code.BAD_REQUEST)
        self.set_state(2, 0)
        answer = aiocoap.Message(code=Code.CHANGED)
        if block1 is not None:
            answer.opt.block1 = block1
        return answer

    def _execute(self, path: content.Path) -> aiocoap.Message:
        self.log.append(f"execute {content.format_path(path)} in State {self.state}")
        if path != (5, 0, 2):
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        if self.profile.name == "wakaama":
            if self.state == 1:
                self.set_state(2)  # its example object: 1 -> 2, no download involved
                return aiocoap.Message(code=Code.CHANGED)
            return aiocoap.Message(code=Code.BAD_REQUEST)
        if self.state != 2:
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        self.set_state(3)
        self._spawn(self._reboot())
        return aiocoap.Message(code=Code.CHANGED)

    async def _reboot(self) -> None:
        """Anjay execv()s the payload: the "new firmware" registers again, Result 1."""
        await asyncio.sleep(0.1)
        self.version = self.new_version
        self.state, self.result, self.package_uri = 0, 1, ""
        await self.register()

    async def _download(self, uri: str) -> None:
        """Pull with Block2 at 1024 bytes (SZX 6), block by block."""
        assert self.context is not None
        data = bytearray()
        num = 0
        while True:
            message = aiocoap.Message(code=Code.GET, uri=uri)
            message.opt.block2 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(num, False, 6)
            try:
                response = await asyncio.wait_for(
                    self.context.request(message, handle_blockwise=False).response, timeout=10
                )
            except (aiocoap.error.Error, TimeoutError):
                self.set_state(0, 4)
                return
            if response.code != Code.CONTENT:
                self.set_state(0, 7 if response.code == Code.NOT_FOUND else 4)
                return
            block2 = response.opt.block2
            self.block2_szx.append(block2.size_exponent if block2 else -1)
            data += response.payload
            if block2 is None or not block2.more:
                break
            num += 1
        self.received = bytes(data)
        verdict = anjay_check(self.received)
        self.set_state(*((0, verdict) if verdict else (2, 0)))
