"""The firmware-update driver (Object 5): writes the Package URI, follows State and Update Result
(observed, and polled as a fallback), executes Update in Downloaded, and reports the outcome; the
cancel operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import aiocoap
from aiocoap.numbers.codes import Code

from campaigns import events
from workers.lwm2m import content, logsafe
from workers.lwm2m.errors import (
    DeviceBusyError,
    DeviceOperationError,
    LwM2MError,
    UnsupportedProtocolError,
    UpdateCancelledError,
    UpdateFailedError,
    UpdateTimedOutError,
)
from workers.lwm2m.object5 import PROTOCOL_SCHEMES, FwState, Phase, UpdateTracker, Verdict

if TYPE_CHECKING:
    from workers.lwm2m.gateway import GatewayConfig
from workers.lwm2m.registration import Registration

log = logsafe.guard(logging.getLogger("workers.lwm2m.gateway"))


# Package URI schemes a device that registered over DTLS may be sent to.
SECURE_SCHEMES = frozenset({"coaps", "https", "coaps+tcp"})


class UpdateDriver:
    """Object 5 operations on a registered device (mixed into the Gateway)."""

    config: GatewayConfig
    context: aiocoap.Context | None
    by_endpoint: dict[str, Registration]
    _fw_attempts: dict[str, asyncio.Task[Any]]
    _fw_cancelled: set[str]

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
