"""What every CoAP resource of the gateway shares: an LwM2MError becomes its CoAP code and one log
line; anything else a 5.00 with a traceback.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code

from workers.lwm2m import logsafe
from workers.lwm2m.errors import (
    LwM2MError,
)

if TYPE_CHECKING:
    from workers.lwm2m.gateway import Gateway

log = logsafe.guard(logging.getLogger("workers.lwm2m.gateway"))


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
