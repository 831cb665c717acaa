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

    async def execute(self, reg: Registration, path: content.Path) -> None:
        response = await self._request(reg, Code.POST, path)
        if response.code != Code.CHANGED:
            raise DeviceOperationError(
                f"execute {content.format_path(path)} on {reg.endpoint}: {response.code}",
                permanent=_client_error(response.code),
            )
