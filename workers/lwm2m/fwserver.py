"""The firmware server: ``/fw/m/<manifest digest>`` (the exact stored SUIT envelope),
``/fw/i/<image sha256>`` (the payload), ``/fw/s/<manifest digest>`` (the envelope with the
payload integrated, for devices that take one file) and ``/fw/t/<sha256>`` (a released device
trust policy), with hand-rolled Block2 so any block can be
requested directly (resumable), Size2 on every block and an ETag derived from the content
digest. Content is immutable once published, so caching it in memory is correct; an envelope
whose release is not yet approved (its released envelope not yet frozen) is served uncached.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import aiocoap
from aiocoap.numbers.codes import Code

from workers.lwm2m import content, fastfw, logsafe
from workers.lwm2m.blocks import block_slice
from workers.lwm2m.errors import (
    DeviceOperationError,
    FirmwareUnavailableError,
    LwM2MError,
)

if TYPE_CHECKING:
    from workers.lwm2m.gateway import GatewayConfig
from workers.lwm2m.resources import _Handler

log = logsafe.guard(logging.getLogger("workers.lwm2m.gateway"))


# Firmware bytes kept in memory by a gateway (least recently used dropped beyond this).
FW_CACHE_BYTES = 256 * 1024 * 1024


DEFAULT_BLOCK_SZX = 6


@dataclass(frozen=True)
class PublishedFile:
    """Bytes served under /fw and their ETag (first 8 bytes of their SHA-256, computed once)."""

    data: bytes
    etag: bytes
    # The options every block of it carries (ETag, Content-Format, Max-Age), encoded once.
    options: bytes = field(init=False, repr=False)

    # Direct answers already given, past their header and token, by the request's bytes past
    # its Uri-Path (``fastfw.remember``): 1 KiB blocks only, each under one encoding of its
    # Block2 option, so at most the file's size again.
    answers: dict[bytes, bytes] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", fastfw.static_options(self.etag))


class FirmwareSource(Protocol):
    def envelope(self, manifest_digest: str) -> bytes | None: ...

    def image(self, sha256: str) -> bytes | None: ...


# A source may also have ``integrated(manifest_digest) -> bytes | None`` (the envelope with its
# payload integrated, /fw/s/...); one without it serves no /fw/s. One with
# ``envelope_final(manifest_digest) -> bool`` says when an envelope may still change (a release
# not approved yet): such bytes are served but not cached.
# ``trust_policy(sha256)``: a signed device trust policy by the digest of its bytes (/fw/t/...).
KIND_GETTERS = {"m": "envelope", "i": "image", "s": "integrated", "t": "trust_policy"}


class DjangoFirmwareSource:
    """Envelopes as stored (exact bytes): the released envelope frozen at approval (author and
    every counted approver's signature) when the manifest's release has one, else the author's
    ``Manifest.envelope``; payloads from the image store."""

    def envelope(self, manifest_digest: str) -> bytes | None:
        from manifests.selectors import served_envelope

        return served_envelope(manifest_digest)

    def envelope_final(self, manifest_digest: str) -> bool:
        """Whether the envelope served for this digest can no longer change (its release's
        released envelope is frozen); until then the gateway does not cache it."""
        from manifests.selectors import envelope_frozen

        return envelope_frozen(manifest_digest)

    def trust_policy(self, sha256: str) -> bytes | None:
        """A released device trust policy, exact bytes, by their SHA-256."""
        from manifests.selectors import served_trust_policy

        return served_trust_policy(sha256)

    def image(self, sha256: str) -> bytes | None:
        """The stored blob of that digest, unless it is an image released encrypted: its
        plaintext is never served (only its ciphertext, under the ciphertext's own digest)."""
        from manifests.services import image_is_confidential, image_storage

        store = image_storage()
        if not store.exists(sha256) or image_is_confidential(sha256):
            return None
        data: bytes = store.read(sha256)
        return data

    def integrated(self, manifest_digest: str) -> bytes | None:
        """The envelope with its payload integrated (``manifests.services.integrated_envelope``,
        when this installation has it)."""
        try:
            from manifests import services
        except ImportError:  # pragma: no cover - the release side is always installed
            services = None  # type: ignore[assignment]
        build = getattr(services, "integrated_envelope", None)
        if build is None:
            raise FirmwareUnavailableError(
                "suit-integrated not available: manifests.services has no integrated_envelope",
                permanent=True,
            )
        data = build(manifest_digest)
        return bytes(data) if data is not None else None


class FirmwareResource(_Handler):
    """/fw/m/<manifest digest> and /fw/i/<sha256>: immutable, Block2 by block number."""

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # we answer Block2 ourselves so any block can be asked for directly

    async def handle(self, request: aiocoap.Message, path: tuple[str, ...]) -> aiocoap.Message:
        if request.code != Code.GET:
            return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        if len(path) != 2 or path[0] not in KIND_GETTERS:
            return aiocoap.Message(code=Code.NOT_FOUND)
        digest = path[1].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            return aiocoap.Message(code=Code.NOT_FOUND)
        try:
            published = await self.gateway.published_file(path[0], digest)
        except LwM2MError:
            published = None  # a delivery form this installation lacks: nothing to serve
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


class FirmwareServer:
    """Published firmware by kind and digest, cached; the Package URI of an envelope (mixed
    into the Gateway)."""

    config: GatewayConfig
    firmware: FirmwareSource
    _fw_cache: OrderedDict[tuple[str, str], PublishedFile]
    _fw_cache_bytes: int
    # The cached files by the exact Uri-Path options of their requests (``fastfw.path_key``).
    _fw_paths: dict[bytes, dict[bytes, bytes]]
    _io: ThreadPoolExecutor

    async def published_file(self, kind: str, digest: str) -> PublishedFile | None:
        """A firmware file by kind ("m" envelope, "i" image, "s" integrated envelope) and
        digest, with its ETag; cached (the bytes never change once published), least recently
        used dropped first. FirmwareUnavailableError when the source has no such kind."""
        key = (kind, digest)
        cached = self._fw_cache.get(key)
        if cached is not None:
            self._fw_cache.move_to_end(key)
            return cached
        loop = asyncio.get_running_loop()
        getter = getattr(self.firmware, KIND_GETTERS.get(kind, ""), None)
        if getter is None:
            raise FirmwareUnavailableError(
                f"this gateway's firmware source serves no /fw/{kind} files", permanent=True
            )
        data = await loop.run_in_executor(self._io, getter, digest)
        if data is None:
            return None
        final = getattr(self.firmware, "envelope_final", None)
        if (
            kind in ("m", "s")
            and final is not None
            and not await loop.run_in_executor(self._io, final, digest)
        ):
            # Not frozen yet: the released envelope replaces it at approval, so it is served
            # as it is now and not kept.
            return PublishedFile(data=data, etag=hashlib.sha256(data).digest()[:8])
        if kind in ("i", "t") and hashlib.sha256(data).hexdigest() != digest:
            log.error("stored file %s does not match its digest; not serving it", digest)
            return None
        published = PublishedFile(data=data, etag=hashlib.sha256(data).digest()[:8])
        self._fw_cache[key] = published
        self._fw_cache_bytes += len(data)
        path = fastfw.path_key(kind, digest)
        if path is not None:
            self._fw_paths[path] = published.answers
        while self._fw_cache_bytes > FW_CACHE_BYTES and len(self._fw_cache) > 1:
            (old_kind, old_digest), dropped = self._fw_cache.popitem(last=False)
            self._fw_cache_bytes -= len(dropped.data)
            old_path = fastfw.path_key(old_kind, old_digest)
            if old_path is not None:
                self._fw_paths.pop(old_path, None)
        return published

    def direct_fw_answer(self, datagram: bytes) -> bytes | None:
        """The answer to a Block2 GET of a cached /fw file, built without aiocoap
        (``workers.lwm2m.fastfw``), or None: any other request, a file not in the cache (not
        loaded yet, or never cached) or a block past its end, which the firmware resource
        answers. Only cached files: the cache holds what ``published_file`` decided to serve."""
        request = fastfw.parse_fw_get(datagram)
        if request is None:
            return None
        key = (request.kind, request.digest)
        cached = self._fw_cache.get(key)
        if cached is None:
            return None
        self._fw_cache.move_to_end(key)
        answer = fastfw.encode_block2(request, cached.data, cached.options)
        if answer is not None:
            fastfw.remember(request, datagram, answer, cached.answers)
        return answer

    def known_fw_answer(self, datagram: bytes) -> bytes | None:
        """The answer to a request equal, past its message id and token, to one
        ``direct_fw_answer`` answered (and remembered), or None (``fastfw.replay``)."""
        return fastfw.replay(datagram, self._fw_paths)

    def package_uri(self, manifest_digest: str, *, secure: bool = False, kind: str = "m") -> str:
        """Where a device downloads a file (by default the envelope of ``manifest_digest``; for
        kind "i" the digest is the image's); ``secure``: over this gateway's coaps listener."""
        base = self.config.dtls_base_uri if secure else self.config.base_uri
        if base is None:
            raise DeviceOperationError("no DTLS listener for a coaps Package URI", permanent=True)
        return f"{base}/fw/{kind}/{manifest_digest}"
