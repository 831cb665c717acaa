"""The device management interface (server to device): reads, writes and executes on a registered
device, over its current address or DTLS session, waiting for a queue-mode device to wake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import aiocoap
from aiocoap.numbers.codes import Code

from workers.lwm2m import content, dtls, logsafe
from workers.lwm2m.errors import (
    DeviceNotConnectedError,
    DeviceOperationError,
    DeviceTimeoutError,
)

if TYPE_CHECKING:
    from workers.lwm2m.gateway import GatewayConfig
from workers.lwm2m.registration import Registration

log = logsafe.guard(logging.getLogger("workers.lwm2m.gateway"))


# Block1 sizes: start at 1024 bytes (SZX 6), never below 16 (SZX 0).
BLOCK1_START_SZX = 6


async def put_block1(
    context: aiocoap.Context,
    payload: bytes,
    *,
    uri: str | None = None,
    remote: Any = None,
    uri_path: tuple[str, ...] | list[str] = (),
    content_format: int = content.CT_OPAQUE,
    szx: int = BLOCK1_START_SZX,
    timeout: float = 30.0,
    code: Code = Code.PUT,
) -> aiocoap.Message:
    """Send ``payload`` block-wise (RFC 7959 Block1) to ``uri`` (or ``remote`` + ``uri_path``);
    returns the answer to the last block, or the first answer that is neither 2.31 Continue
    nor a 4.13 asking for smaller blocks.

    Starts at ``2 ** (szx + 4)`` bytes per block and goes down when the peer asks for less:
    a 4.13 whose Block1 option carries a smaller SZX sends the same bytes again in smaller
    blocks (RFC 7959 2.9.3), a 2.31 Continue with a smaller SZX means the block was taken and
    the rest goes in the smaller size (RFC 7959 2.3, figure 13). Block 0 carries Size1.
    aiocoap's own block-wise handling is not used: it has no way to follow a smaller size.
    """
    if (uri is None) == (remote is None):
        raise ValueError("put_block1 needs either uri or remote")
    offset = 0
    while True:
        size = 1 << (szx + 4)
        chunk = payload[offset : offset + size]
        more = offset + size < len(payload)
        if remote is not None:
            message = aiocoap.Message(code=code, uri_path=list(uri_path), payload=chunk)
            message.remote = remote
        else:
            message = aiocoap.Message(code=code, uri=uri, payload=chunk)
        message.opt.content_format = content_format
        message.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(
            offset // size, more, szx
        )
        if offset == 0:
            message.opt.size1 = len(payload)
        response = await asyncio.wait_for(
            context.request(message, handle_blockwise=False).response, timeout=timeout
        )
        block1 = response.opt.block1
        smaller = block1 is not None and block1.size_exponent < szx
        if response.code == Code.REQUEST_ENTITY_TOO_LARGE and smaller:
            szx = block1.size_exponent  # same offset, smaller blocks (offset stays aligned)
            continue
        if response.code == Code.CONTINUE and more:
            offset += len(chunk)
            if smaller:
                szx = block1.size_exponent
            continue
        return response


def _client_error(code: Any) -> bool:
    """4.xx: the device refused the request itself; retrying the same request will not help."""
    return int(code) >> 5 == 4


class DeviceRequests:
    """Requests to a registered device (mixed into the Gateway)."""

    config: GatewayConfig
    context: aiocoap.Context | None

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

    async def write_blockwise(self, reg: Registration, path: content.Path, data: bytes) -> None:
        """Write opaque ``data`` to ``path`` with Block1 (a pushed firmware package to /5/0/0),
        in the block size the device accepts; an empty ``data`` is one plain PUT."""
        if self.context is None:
            raise DeviceNotConnectedError("gateway is stopped")
        await self._wait_reachable(reg)
        if dtls.session_closed(reg.remote):
            raise DeviceOperationError(f"{reg.endpoint}: DTLS session closed; awaiting reconnect")
        root = [s for s in reg.objects.root_path.strip("/").split("/") if s]
        uri_path = [*root, *map(str, path)]
        where = f"write {content.format_path(path)} on {reg.endpoint}"
        try:
            if data:
                response = await put_block1(
                    self.context,
                    data,
                    remote=reg.remote,
                    uri_path=uri_path,
                    timeout=self.config.request_timeout,
                )
            else:
                message = aiocoap.Message(
                    code=Code.PUT, uri_path=uri_path, payload=b"", content_format=content.CT_OPAQUE
                )
                message.remote = reg.remote
                response = await asyncio.wait_for(
                    self.context.request(message).response, timeout=self.config.request_timeout
                )
        except TimeoutError:
            raise DeviceTimeoutError(f"{where}: no answer in time") from None
        except aiocoap.error.Error as exc:
            raise DeviceOperationError(f"{where}: {exc}") from None
        self._check_response_peer(reg, response)
        if response.code not in (Code.CHANGED, Code.CREATED):
            raise DeviceOperationError(
                f"{where}: {response.code}", permanent=_client_error(response.code)
            )

    async def execute(self, reg: Registration, path: content.Path) -> None:
        response = await self._request(reg, Code.POST, path)
        if response.code != Code.CHANGED:
            raise DeviceOperationError(
                f"execute {content.format_path(path)} on {reg.endpoint}: {response.code}",
                permanent=_client_error(response.code),
            )
