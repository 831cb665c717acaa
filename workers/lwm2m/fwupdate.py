"""The firmware-update driver (Object 5): reset to Idle, deliver the package (pull: write the
Package URI; push: Block1 write of /5/0/0), follow State and Update Result (observed, and polled
as a fallback), execute Update in Downloaded, confirm, deregister the observation; the cancel
operation.

Built against what real clients do (``/work/shared/interop/README.md``, docs/lwm2m.md "Firmware
update driver"): a device may start in any State (Wakaama sits in Downloading without a
download), may answer a read of the Package URI with 4.05, may accept writes and do nothing, may
keep notifying an observation the server forgot. So the driver never reads /5/0/1, resets
before delivering, judges progress by a change from what it saw after the reset, and ends every
observation it started on the device itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiocoap
from aiocoap.numbers.codes import Code

from campaigns import events
from workers.lwm2m import content, logsafe
from workers.lwm2m.errors import (
    DeviceBusyError,
    DeviceNotConnectedError,
    DeviceOperationError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    FirmwareUnavailableError,
    LwM2MError,
    NoSupportedDeliveryError,
    PushRefusedError,
    UnsupportedProtocolError,
    UpdateCancelledError,
    UpdateFailedError,
    UpdateNeverStartedError,
    UpdateTimedOutError,
)
from workers.lwm2m.object5 import (
    DOWNLOAD_FAILURES,
    PKG_NAME_PATH,
    PROTOCOL_SCHEMES,
    WRONG_PRECURSOR_PKG_NAME,
    FwResult,
    FwState,
    Phase,
    UpdateTracker,
    Verdict,
)

if TYPE_CHECKING:
    from workers.lwm2m.bus import InMemoryCommandBus, RedisCommandBus
    from workers.lwm2m.fwserver import PublishedFile
    from workers.lwm2m.gateway import GatewayConfig
from workers.lwm2m.registration import Registration

log = logsafe.guard(logging.getLogger("workers.lwm2m.gateway"))


# Package URI schemes a device that registered over DTLS may be sent to.
SECURE_SCHEMES = frozenset({"coaps", "https", "coaps+tcp"})

# /5/0/9 Firmware Update Delivery Method.
DELIVERY_PULL, DELIVERY_PUSH, DELIVERY_BOTH = 0, 1, 2

# What each delivery form serves: the firmware server's kind ("/fw/<kind>/<digest>").
# "trust-policy": a signed device trust policy (docs/suit.md), filed under the SHA-256 of the
# document, which the command passes as ``manifest_digest``.
DELIVERY_KINDS = {"suit": "m", "image": "i", "suit-integrated": "s", "trust-policy": "t"}

# The SUIT report object (docs/lwm2m.md, "SUIT reports"): the attempt's nonce is written to
# /26241/0/0 before delivery; the device's signed report of the attempt is read from /26241/0/1.
# The outcome's ``refusal`` when the device said a delta's base is not its running image.
WRONG_PRECURSOR = "wrong_precursor"
REPORT_NONCE_PATH = (26241, 0, 0)
REPORT_PATH = (26241, 0, 1)
MAX_NONCE_HEX = 128
# A report read that got no answer is tried again (1, 2, 4 s apart).
REPORT_READ_ATTEMPTS = 4
REPORT_READ_RETRY_SECONDS = 1.0

# A deregistration (GET with Observe: 1) waits at most this long for the device's answer.
DEREGISTER_TIMEOUT = 5.0
# A new attempt for a device whose previous attempt is still ending (its outcome decided, its
# observation being deregistered) waits this long for it before the device counts as busy.
HANDOVER_SECONDS = DEREGISTER_TIMEOUT + 5.0

# Claim phases (docs/lwm2m.md, "Command bus"), recorded on the bus under the command id before
# the step they name: a command given back after a restart resumes from what was claimed.
CLAIM_PACKAGE_WRITTEN = "package_written"
CLAIM_UPDATE_EXECUTED = "update_executed"
CLAIM_CANCELLED = "cancelled"


@dataclass(frozen=True)
class UpdateRequest:
    """The ``fw_update`` command's arguments, checked. Old form: only ``manifest_digest``
    (and ``timeout``): a SUIT envelope, pulled."""

    manifest_digest: str
    delivery: str = "suit"
    image_sha256: str | None = None
    image_size: int | None = None
    method: str = "pull"
    timeout: float | None = None
    uri: str | None = None
    # SUIT profiles: the nonce (hex) the device signs into its report of this attempt.
    report_nonce: str = ""
    # A delta offered instead of the full image (its SHA-256 in the image store): an image
    # device gets the delta itself; a SUIT device the envelope with ``?delta=`` on its URI.
    delta_sha256: str | None = None

    @property
    def kind(self) -> str:
        return DELIVERY_KINDS[self.delivery]

    @property
    def file_digest(self) -> str:
        """The digest the firmware server files the delivered bytes under."""
        if self.delivery == "image" and self.delta_sha256 is not None:
            return self.delta_sha256
        if self.delivery == "image":
            assert self.image_sha256 is not None  # noqa: S101 - checked in parse
            return self.image_sha256
        return self.manifest_digest


def _hex64(value: Any) -> str | None:
    text = str(value or "").lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        return None
    return text


def parse_update_args(args: dict[str, Any]) -> UpdateRequest:
    """The command's arguments as an UpdateRequest; a permanent DeviceOperationError names the
    first one that is wrong (the same command can never succeed)."""
    digest = _hex64(args.get("manifest_digest"))
    if digest is None:
        raise DeviceOperationError("fw_update needs manifest_digest", permanent=True)
    delivery = str(args.get("delivery") or "suit")
    if delivery not in DELIVERY_KINDS:
        raise DeviceOperationError(f"fw_update: unknown delivery {delivery!r}", permanent=True)
    method = str(args.get("method") or "pull")
    if method not in ("pull", "push"):
        raise DeviceOperationError(f"fw_update: unknown method {method!r}", permanent=True)
    image_sha256 = _hex64(args.get("image_sha256")) if args.get("image_sha256") else None
    if delivery == "image" and image_sha256 is None:
        raise DeviceOperationError("fw_update of an image needs image_sha256", permanent=True)
    delta = _hex64(args.get("delta_sha256")) if args.get("delta_sha256") else None
    if args.get("delta_sha256") and delta is None:
        raise DeviceOperationError("fw_update: delta_sha256 is not a SHA-256", permanent=True)
    if delta is not None and not (delivery == "image" or (delivery == "suit" and method == "pull")):
        raise DeviceOperationError(
            f"fw_update: a delta goes to image devices or pulling SUIT devices, not {delivery} "
            f"({method})",
            permanent=True,
        )
    size = args.get("image_size")
    timeout = args.get("timeout")
    nonce = str(args.get("report_nonce") or "").lower()
    if len(nonce) > MAX_NONCE_HEX or any(c not in "0123456789abcdef" for c in nonce):
        raise DeviceOperationError("fw_update: report_nonce is not hex", permanent=True)
    if len(nonce) % 2:
        raise DeviceOperationError("fw_update: report_nonce is not whole bytes", permanent=True)
    return UpdateRequest(
        manifest_digest=digest,
        delivery=delivery,
        image_sha256=image_sha256,
        image_size=int(size) if isinstance(size, int) and not isinstance(size, bool) else None,
        method=method,
        timeout=float(timeout) if isinstance(timeout, int | float) and timeout > 0 else None,
        uri=str(args["uri"]) if args.get("uri") else None,
        report_nonce=nonce,
        delta_sha256=delta,
    )


def choose_method(
    preferred: str,
    *,
    delivery_method: int | None,
    pull_refusal: UnsupportedProtocolError | None,
    explicit_uri: bool,
) -> str:
    """Pull or push for a device whose /5/0/9 is ``delivery_method`` (None: unknown, taken as
    pull only, the one form every LwM2M 1.0 client with Object 5 has). ``pull_refusal`` is why
    the Package URI cannot be used (its scheme), if it cannot. The preferred method when the
    device supports it, else the other; an explicit URI is pulled or refused."""
    can_pull = delivery_method in (None, DELIVERY_PULL, DELIVERY_BOTH) and pull_refusal is None
    can_push = delivery_method in (DELIVERY_PUSH, DELIVERY_BOTH) and not explicit_uri
    for method in (preferred, "push" if preferred == "pull" else "pull"):
        if (method == "pull" and can_pull) or (method == "push" and can_push):
            return method
    if explicit_uri and pull_refusal is not None:
        raise pull_refusal
    offered = {
        None: "no /5/0/9 (pull only)",
        DELIVERY_PULL: "pull only",
        DELIVERY_PUSH: "push only",
        DELIVERY_BOTH: "pull and push",
    }.get(delivery_method, f"an unknown /5/0/9 value {delivery_method!r}")
    why = f": {pull_refusal}" if pull_refusal is not None else ""
    raise NoSupportedDeliveryError(f"device offers {offered}{why}", permanent=True)


@dataclass
class _Attempt:
    """One update attempt as the driver follows it. ``stuck`` is the State/Result the device
    showed after a reset it did not carry out: seeing it again is no progress."""

    endpoint: str
    request: UpdateRequest
    method: str
    tracker: UpdateTracker
    changed: asyncio.Event
    stuck: tuple[int, int] | None = None
    observer: asyncio.Task[Any] | None = None
    suit_report: str = ""  # the device's signed report of this attempt (hex), once read
    command_id: str = ""  # the command running it ("": no claims recorded)
    resumed: bool = False  # taken over from a run of the same command before a restart
    firmware_version: str | None = None  # /3/0/3 as a resumed attempt found it
    uri_unanswered: bool = False  # the Package URI write timed out: the device may have it
    executed_at: float = 0.0  # time.monotonic() of the last Execute /5/0/2 sent

    def outcome(self) -> dict[str, Any]:
        tracker = self.tracker
        outcome: dict[str, Any] = {
            "phase": tracker.phase.name.lower(),
            "result": int(tracker.result) if tracker.result is not None else None,
            "manifest_digest": self.request.manifest_digest,
            "method": self.method,
        }
        if self.suit_report:
            outcome["suit_report"] = self.suit_report
        if self.resumed:
            outcome["resumed"] = True
            outcome["firmware_version"] = self.firmware_version
        return outcome


class UpdateDriver:
    """Object 5 operations on a registered device (mixed into the Gateway)."""

    config: GatewayConfig
    context: aiocoap.Context | None
    bus: InMemoryCommandBus | RedisCommandBus
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

    async def _delivery_method(self, reg: Registration) -> int | None:
        """/5/0/9 of the device (the registration's when it holds one, else one read); None
        when the device does not say (an error answer, no answer)."""
        if reg.delivery_method is not None:
            return reg.delivery_method
        try:
            value = (await self.read(reg, (5, 0, 9))).get((5, 0, 9))
        except LwM2MError as exc:
            log.info("read /5/0/9 on %s failed (%s): taken as pull only", reg.endpoint, exc)
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    async def _claim(self, attempt: _Attempt, phase: str) -> None:
        """Record, before taking it, that the attempt's command takes the step ``phase``."""
        if attempt.command_id:
            await self.bus.claim(self.config.gateway_id, attempt.command_id, phase)

    async def _op_fw_update(
        self, endpoint: str, args: dict[str, Any], *, command_id: str = ""
    ) -> dict[str, Any]:
        """One update attempt: reset, deliver (pull or push), follow, execute, confirm. The
        same command given back after a restart (a claim recorded under its id) resumes."""
        request = parse_update_args(args)
        claimed = await self.bus.claimed(self.config.gateway_id, command_id) if command_id else None
        if claimed is not None and claimed != CLAIM_CANCELLED:
            # The device may be rebooting into what the first run installed: its registration
            # comes back with its next Register or Update. Sending the update again instead
            # (what an unreachable device gets) could deliver it twice.
            reg = await self._registration_within(endpoint, request, claimed)
        else:
            try:
                reg = self.registration(endpoint)
            except DeviceNotConnectedError as exc:
                raise DeviceUnreachableError(str(exc), permanent=False) from None
        running = self._fw_attempts.get(endpoint)
        this = asyncio.current_task()
        if running is not None and running is not this and not running.done():
            # The campaign may retry as soon as the device reported its result, while the
            # previous attempt still deregisters its observation: let that attempt end first.
            give_up = time.monotonic() + HANDOVER_SECONDS
            while self._fw_attempts.get(endpoint) is running and not running.done():
                if time.monotonic() > give_up:
                    raise DeviceBusyError(
                        f"{endpoint}: another update attempt is running on this gateway",
                        permanent=False,
                    )
                await asyncio.sleep(0.05)
        if this is not None:
            self._fw_attempts[endpoint] = this
        try:
            if claimed == CLAIM_CANCELLED:
                raise _cancelled(endpoint, request)
            if claimed is not None:
                return await self._fw_resume(endpoint, reg, request, command_id, claimed)
            return await self._fw_update_attempt(endpoint, reg, request, command_id)
        except asyncio.CancelledError:
            if endpoint not in self._fw_cancelled:
                raise  # the gateway is stopping
            self._fw_cancelled.discard(endpoint)
            if this is not None:
                this.uncancel()
            if command_id:
                # Given back after a restart, the command reports its cancellation again
                # instead of delivering the update the operator cancelled.
                await self.bus.claim(self.config.gateway_id, command_id, CLAIM_CANCELLED)
            raise _cancelled(endpoint, request) from None
        finally:
            if self._fw_attempts.get(endpoint) is this:
                self._fw_attempts.pop(endpoint, None)

    async def _plan(self, reg: Registration, request: UpdateRequest) -> tuple[str, str | None]:
        """(method, Package URI for a pull) for this device."""
        uri = request.uri or self.package_uri(
            request.file_digest, secure=reg.identity is not None, kind=request.kind
        )
        if request.delta_sha256 is not None and request.delivery == "suit" and not request.uri:
            uri += f"?delta={request.delta_sha256}"
        refusal: UnsupportedProtocolError | None = None
        try:
            self._check_scheme(reg, uri)
        except UnsupportedProtocolError as exc:
            refusal = exc
        method = choose_method(
            request.method,
            delivery_method=await self._delivery_method(reg),
            pull_refusal=refusal,
            explicit_uri=request.uri is not None,
        )
        return method, uri if method == "pull" else None

    async def _package(self, request: UpdateRequest) -> PublishedFile:
        """The bytes this update delivers (pushed, or served to the device's pull)."""
        published = await self.published_file(request.kind, request.file_digest)
        if published is None:
            raise FirmwareUnavailableError(
                f"/fw/{request.kind}/{request.file_digest} is not published", permanent=True
            )
        return published

    async def _fw_reset(self, reg: Registration, method: str) -> None:
        """Back to Idle (LwM2M 1.1 Object 5: an empty Package URI, or an empty Package, resets
        the state machine): the URI for a device that pulls, /5/0/0 for a push-only one."""
        if method == "pull":
            try:
                await self.write(reg, (5, 0, 1), "")
                return
            except DeviceOperationError as exc:
                if not exc.permanent:
                    raise
                log.info("reset of %s by an empty Package URI refused: %s", reg.endpoint, exc)
        await self.write_blockwise(reg, (5, 0, 0), b"")

    async def _registration_within(
        self, endpoint: str, request: UpdateRequest, claimed: str
    ) -> Registration:
        """The device's registration here, waited for up to the update's timeout."""
        give_up = time.monotonic() + (request.timeout or self.config.fw_update_timeout)
        while (reg := self.by_endpoint.get(endpoint)) is None:
            if time.monotonic() > give_up:
                raise UpdateTimedOutError(
                    f"{endpoint}: resumed update ({claimed}) timed out waiting for the device "
                    "to register",
                    result={
                        "phase": claimed,
                        "result": None,
                        "manifest_digest": request.manifest_digest,
                        "resumed": True,
                    },
                )
            await asyncio.sleep(min(self.config.fw_poll_seconds, 1.0))
        return reg

    async def _fw_resume(
        self,
        endpoint: str,
        reg: Registration,
        request: UpdateRequest,
        command_id: str,
        claimed: str,
    ) -> dict[str, Any]:
        """Take over an attempt this command began before the gateway restarted: nothing is
        written again; the device's State and Update Result say where it is (already ended:
        its outcome; still under way: followed to its end, Update executed if it waits
        Downloaded and the first run never executed it)."""
        if claimed == CLAIM_PACKAGE_WRITTEN:
            status: tuple[int, int] | None = None
            with contextlib.suppress(LwM2MError):
                status = await self._fw_status(reg)
            if status == (FwState.IDLE, FwResult.INITIAL):
                # Claimed, but the gateway stopped before the package reached the device (or
                # the device dropped it): never executed, so delivering it is the first time.
                log.info(
                    "%s: command %s claimed no delivery the device holds", endpoint, command_id
                )
                return await self._fw_update_attempt(endpoint, reg, request, command_id)
        log.info("%s: command %s resumed from %s", endpoint, command_id, claimed)
        method = "push" if reg.delivery_method == DELIVERY_PUSH else request.method
        tracker = UpdateTracker()
        tracker.uri_written()
        if claimed == CLAIM_UPDATE_EXECUTED:
            tracker.phase = Phase.UPDATE_EXECUTED
        attempt = _Attempt(endpoint, request, method, tracker, asyncio.Event())
        attempt.command_id = command_id
        attempt.resumed = True
        # The first run's Execute, if it was sent, is given a request timeout to show.
        attempt.executed_at = time.monotonic()
        deadline = time.monotonic() + (request.timeout or self.config.fw_update_timeout)
        with contextlib.suppress(LwM2MError):
            value = (await self.read(reg, (3, 0, 3))).get((3, 0, 3))
            attempt.firmware_version = value if isinstance(value, str) else None
        attempt.observer = self._spawn(self._observe_fw(reg, attempt))
        try:
            await self._follow(reg, attempt, deadline)
        finally:
            await self._end_observer(attempt)
        return await self._fw_outcome(endpoint, reg, attempt)

    async def _report_version(self, endpoint: str, reg: Registration) -> None:
        """The firmware version (/3/0/3) of a device that reported its update's success under
        the registration it had before: no registration's information read follows to report
        the new version (the device's Register after the reboot was lost while its gateway was
        down and its next Update was adopted by the one started again, or the device keeps its
        registration across the reboot). Without it the registry keeps the old version and the
        rollout, whose success rests on the version, never completes. Read in the background
        (the command's result does not wait for it), reported as a ``device_info`` event that
        says when it was read."""
        reading = time.time()
        try:
            value = (await self.read(reg, (3, 0, 3))).get((3, 0, 3))
        except LwM2MError as exc:
            log.info("%s: firmware version after the update not read: %s", endpoint, exc)
            return
        if isinstance(value, str) and value:
            await self.emit(
                events.DeviceInfo(endpoint=endpoint, firmware_version=value, at=reading)
            )

    async def _end_observer(self, attempt: _Attempt) -> None:
        observer = attempt.observer
        if observer is None:
            return
        observer.cancel()
        # Let the deregistration go out before the outcome is reported.
        await asyncio.wait({observer}, timeout=DEREGISTER_TIMEOUT + 1)

    async def _fw_outcome(
        self, endpoint: str, reg: Registration, attempt: _Attempt
    ) -> dict[str, Any]:
        """The ended attempt's outcome (with the device's SUIT report when the command gave a
        nonce); success emits fw_installed, anything else raises UpdateFailedError."""
        request, tracker = attempt.request, attempt.tracker
        if request.report_nonce:
            attempt.suit_report = await self._read_report(
                endpoint, self.by_endpoint.get(endpoint) or reg
            )
        outcome = attempt.outcome()
        if tracker.phase is Phase.SUCCEEDED:
            await self.emit(
                events.FwInstalled(endpoint=endpoint, manifest_digest=request.manifest_digest)
            )
            if (self.by_endpoint.get(endpoint) or reg) is reg:
                self._spawn(self._report_version(endpoint, reg))
            return outcome
        if (
            request.delta_sha256 is not None
            and tracker.result == FwResult.UNSUPPORTED_PACKAGE_TYPE
            and await self._refused_wrong_base(self.by_endpoint.get(endpoint) or reg)
        ):
            outcome["refusal"] = WRONG_PRECURSOR
        raise UpdateFailedError(
            f"{endpoint}: update {tracker.phase.name.lower()} with result {outcome['result']}",
            permanent=True,
            result=outcome,
        )

    async def _fw_update_attempt(
        self, endpoint: str, reg: Registration, request: UpdateRequest, command_id: str = ""
    ) -> dict[str, Any]:
        try:
            method, uri = await self._plan(reg, request)
            # A pull of a file we do not have, or a delivery form not installed here, fails now
            # (clearly) rather than as the device's download failure; an explicit URI is the
            # caller's.
            package = await self._package(request) if uri is None or request.uri is None else None
            timeout = request.timeout or self.config.fw_update_timeout
            deadline = time.monotonic() + timeout
            state, result = await self._fw_status(reg)
        except (DeviceTimeoutError, DeviceNotConnectedError) as exc:
            # Nothing asked of the device's update state machine yet: it waits, not fails.
            raise DeviceUnreachableError(
                f"{endpoint}: not reachable before the update began ({exc})", permanent=False
            ) from None
        if state == FwState.UPDATING:
            raise DeviceBusyError(
                f"{endpoint} is installing (State Updating) and cannot be reset", permanent=False
            )
        attempt = _Attempt(endpoint, request, method, UpdateTracker(), asyncio.Event())
        attempt.command_id = command_id
        if state != FwState.IDLE:
            try:
                await self._fw_reset(reg, method)
                state, result = await self._fw_status(reg)
            except DeviceTimeoutError as exc:
                # A reset to Idle, taken or not, installs nothing, and the next attempt resets
                # again: not reached, so it waits.
                raise DeviceUnreachableError(
                    f"{endpoint}: not reachable while reset before the update ({exc})",
                    permanent=False,
                ) from None
            if state == FwState.UPDATING:
                raise DeviceBusyError(f"{endpoint} went to Updating on a reset", permanent=False)
            if state != FwState.IDLE:
                log.warning(
                    "%s kept State %s after a reset to Idle; progress is a change from it",
                    endpoint,
                    state,
                )
                attempt.stuck = (state, result)
        if request.report_nonce:
            try:
                await self._write_report_nonce(reg, request.report_nonce)
            except DeviceTimeoutError as exc:
                # Still nothing asked of Object 5 (the nonce is the report object's): it waits.
                raise DeviceUnreachableError(
                    f"{endpoint}: not reachable before the update began ({exc})", permanent=False
                ) from None
        attempt.observer = self._spawn(self._observe_fw(reg, attempt))
        try:
            await self._claim(attempt, CLAIM_PACKAGE_WRITTEN)
            attempt.tracker.uri_written()
            if method == "pull":
                assert uri is not None  # noqa: S101 - _plan gives a pull its URI
                try:
                    await self.write(reg, (5, 0, 1), uri)
                except DeviceTimeoutError as exc:
                    # The write may have reached the device without its answer reaching us:
                    # followed as written. If the state never moves, nothing started, and
                    # the attempt ends as not reached (``_follow``), not as a failure.
                    log.warning(
                        "%s: Package URI write unanswered (%s); following it", endpoint, exc
                    )
                    attempt.uri_unanswered = True
            else:
                assert package is not None  # noqa: S101 - a push always loads its package
                await self._push(reg, attempt, package.data)
            await self._follow(reg, attempt, deadline)
        finally:
            await self._end_observer(attempt)
        return await self._fw_outcome(endpoint, reg, attempt)

    async def _refused_wrong_base(self, reg: Registration) -> bool:
        """Whether a device that refused a delta with Update Result 6 says, by this product's
        convention (Package Name ``WRONG_PRECURSOR_PKG_NAME``), that the delta's base is not
        its running image. Best effort: a device that does not answer, or answers anything
        else (a real client's own package name), made no such claim."""
        try:
            value = (await self.read(reg, PKG_NAME_PATH)).get(PKG_NAME_PATH)
        except LwM2MError as exc:
            log.debug("read of %s's Package Name failed: %s", reg.endpoint, exc)
            return False
        return value == WRONG_PRECURSOR_PKG_NAME

    async def _write_report_nonce(self, reg: Registration, nonce: str) -> None:
        """Give the device this attempt's report nonce. A device without the report object
        refuses the write: the update goes on, and the server, finding no report, does not
        take its success (docs/suit.md, "Device reports")."""
        try:
            await self.write(reg, REPORT_NONCE_PATH, bytes.fromhex(nonce))
        except DeviceOperationError as exc:
            if not exc.permanent:
                raise
            log.info("%s takes no report nonce: %s", reg.endpoint, exc)

    async def _read_report(self, endpoint: str, reg: Registration) -> str:
        """The device's signed report of the attempt that just ended (hex; "" when it has
        none: the server decides what a missing report means). A read that got no answer is
        tried again, REPORT_READ_ATTEMPTS times in all with a growing pause (on the device's
        current registration): the report decides the attempt, so a busy moment must not
        lose it; a definite answer (4.04: no report object) is not tried again."""
        for attempt in range(REPORT_READ_ATTEMPTS):
            if attempt:
                await asyncio.sleep(REPORT_READ_RETRY_SECONDS * 2 ** (attempt - 1))
                reg = self.by_endpoint.get(endpoint) or reg
            try:
                value = (await self.read(reg, REPORT_PATH)).get(REPORT_PATH)
            except DeviceOperationError as exc:
                log.info("read of %s's SUIT report failed: %s", endpoint, exc)
                if exc.permanent:
                    return ""
                continue
            except LwM2MError as exc:
                log.info("read of %s's SUIT report failed: %s", endpoint, exc)
                continue
            return value.hex() if isinstance(value, bytes) else ""
        log.warning("%s's SUIT report unread after %d attempts", endpoint, REPORT_READ_ATTEMPTS)
        return ""

    async def _push(self, reg: Registration, attempt: _Attempt, data: bytes) -> None:
        """Block1 write of the package to /5/0/0. A 4.xx answer: the device's Update Result
        says why when it set one (Anjay: 6 for a package not in its format), else
        PushRefusedError."""
        try:
            await self.write_blockwise(reg, (5, 0, 0), data)
        except DeviceOperationError as exc:
            if not exc.permanent:
                raise
            refusal = exc
        else:
            return
        status: tuple[int, int] | None = None
        with contextlib.suppress(LwM2MError):
            status = await self._fw_status(reg)
        if status is not None and status[1] in DOWNLOAD_FAILURES:
            attempt.tracker.report(*status)
            result = {**attempt.outcome(), "result": status[1]}
            if (
                attempt.request.delta_sha256 is not None
                and status[1] == FwResult.UNSUPPORTED_PACKAGE_TYPE
                and await self._refused_wrong_base(reg)
            ):
                result["refusal"] = WRONG_PRECURSOR
            raise UpdateFailedError(
                f"{reg.endpoint}: pushed package refused with Update Result {status[1]}",
                permanent=True,
                result=result,
            )
        raise PushRefusedError(
            f"{reg.endpoint}: pushed package refused: {refusal}",
            permanent=True,
            result=attempt.outcome(),
        )

    async def _follow(
        self,
        reg: Registration,
        attempt: _Attempt,
        deadline: float,
    ) -> None:
        """Poll (and take notifications) until the attempt ends; execute Update in Downloaded;
        follow the device's new registration after its reboot."""
        tracker = attempt.tracker
        started = time.monotonic()
        start_deadline = min(deadline, started + self.config.fw_start_timeout)
        while not tracker.phase.terminal:
            now = time.monotonic()
            if tracker.phase is Phase.URI_WRITTEN and now > start_deadline:
                if attempt.uri_unanswered:
                    # Nothing shows the device ever had the URI: not reached, so it waits
                    # (a late copy of the write is undone by the next attempt's reset).
                    raise DeviceUnreachableError(
                        f"{attempt.endpoint}: Package URI write unanswered and State never moved",
                        permanent=False,
                    )
                raise UpdateNeverStartedError(
                    # The window it had: fw_start_timeout, or less when the update's own
                    # timeout (the campaign's timeouts.device) ends first.
                    f"{attempt.endpoint}: State never moved in "
                    f"{round(start_deadline - started):g} s after the package was "
                    f"{'pushed' if attempt.method == 'push' else 'offered'}",
                    permanent=True,
                    result=attempt.outcome(),
                )
            if now > deadline:
                raise UpdateTimedOutError(
                    f"{attempt.endpoint}: update timed out in {tracker.phase.name}",
                    result=attempt.outcome(),
                )
            # Cleared before the reads, so a notification that arrives while they run is not
            # lost: the wait below then returns at once.
            attempt.changed.clear()
            current_reg = self.by_endpoint.get(attempt.endpoint)
            if current_reg is not None and current_reg is not reg:
                reg = current_reg  # rebooted and re-registered: follow the new registration
                if attempt.observer is not None:
                    attempt.observer.cancel()
                attempt.observer = self._spawn(self._observe_fw(reg, attempt))
            if current_reg is not None:
                with contextlib.suppress(LwM2MError):
                    state, result = await self._fw_status(reg)
                    await self._apply_report(reg, attempt, state, result)
                    await self._execute_again_if_lost(reg, attempt, state, result)
            if tracker.can_execute:
                staged: int | None = None
                try:
                    staged, _ = await self._fw_status(reg)
                except DeviceTimeoutError as exc:
                    # A loaded device or gateway: read again at the next poll, until the
                    # attempt's deadline, rather than end an attempt that is going well.
                    log.info("%s: state before Execute not read (%s); again", reg.endpoint, exc)
                if staged == FwState.DOWNLOADED:
                    await self._claim(attempt, CLAIM_UPDATE_EXECUTED)
                    try:
                        await self.execute(reg, (5, 0, 2))
                    except DeviceTimeoutError as exc:
                        # The Execute may have been carried out without its answer reaching
                        # us (a device rebooting at once, or one slow under load): followed
                        # as executed. The device's next report or registration says how it
                        # ended; one that never got it stays Downloaded until the deadline.
                        # Executing again could install twice.
                        log.warning(
                            "%s: Execute /5/0/2 unanswered (%s); following it as executed",
                            reg.endpoint,
                            exc,
                        )
                    tracker.update_executed()
                    attempt.executed_at = time.monotonic()
                    continue
            if tracker.phase.terminal:
                break  # the read above ended it: no poll interval to wait out
            wait = min(self.config.fw_poll_seconds, max(0.0, deadline - time.monotonic()))
            if tracker.phase is Phase.URI_WRITTEN:
                wait = min(wait, max(0.0, start_deadline - time.monotonic()))
            await _changed_or_replaced(attempt, reg, timeout=wait + 0.01)

    async def _execute_again_if_lost(
        self, reg: Registration, attempt: _Attempt, state: int, result: int
    ) -> None:
        """Execute /5/0/2 again for a device still Downloaded (Result 0) a request timeout after
        it was executed: that Execute never reached it (its answer lost under load, or the
        gateway killed between claiming the step and sending it, then resumed). Safe to
        repeat: Execute acts only in Downloaded and the install consumes the package, so a
        device that did get the first one refuses this one (it is Updating, or Idle)."""
        if attempt.tracker.phase is not Phase.UPDATE_EXECUTED:
            return
        if (state, result) != (FwState.DOWNLOADED, FwResult.INITIAL):
            return
        if time.monotonic() - attempt.executed_at < self.config.request_timeout:
            return
        log.warning("%s: still Downloaded after Execute; executing Update again", reg.endpoint)
        attempt.executed_at = time.monotonic()
        try:
            await self.execute(reg, (5, 0, 2))
        except DeviceOperationError as exc:
            log.info("%s: Execute /5/0/2 again not taken (%s)", reg.endpoint, exc)

    async def _apply_report(
        self, reg: Registration, attempt: _Attempt, state: int, result: int
    ) -> None:
        if attempt.stuck is not None:
            if (state, result) == attempt.stuck:
                return  # what the device showed before anything was delivered: no progress
            attempt.stuck = None
        verdict = attempt.tracker.report(state, result)
        if verdict is Verdict.ADVANCED:
            await self.emit(events.FwStatus(endpoint=reg.endpoint, state=state, result=result))

    async def _observe_fw(self, reg: Registration, attempt: _Attempt) -> None:
        """Observe /5/0/3 (and read /5/0/5 on each change): faster than polling, best effort.
        Ends with a deregistration on the device (RFC 7641 3.6)."""
        if self.context is None:
            return
        root = [s for s in reg.objects.root_path.strip("/").split("/") if s]
        uri_path = [*root, "5", "0", "3"]
        message = aiocoap.Message(code=Code.GET, uri_path=uri_path, observe=0)
        message.remote = reg.remote
        request = self.context.request(message, handle_blockwise=False)
        token: bytes | None = None
        try:
            first = await asyncio.wait_for(request.response, timeout=self.config.request_timeout)
            if first.code != Code.CONTENT or first.opt.observe is None:
                return
            token = first.token
            async for notification in request.observation:
                if notification.code != Code.CONTENT:
                    break
                self._check_response_peer(reg, notification)
                with contextlib.suppress(LwM2MError, ValueError, TypeError):
                    state = content.decode(
                        notification.opt.content_format, notification.payload, (5, 0, 3)
                    )[(5, 0, 3)]
                    res = await self.read(reg, (5, 0, 5))
                    await self._apply_report(
                        reg,
                        attempt,
                        int(state),  # type: ignore[arg-type]
                        int(res[(5, 0, 5)]),  # type: ignore[arg-type]
                    )
                    attempt.changed.set()
        except (TimeoutError, aiocoap.error.Error, LwM2MError) as exc:
            log.debug("observation of %s ended: %s", reg.endpoint, exc)
        finally:
            if request.observation is not None and not request.observation.cancelled:
                request.observation.cancel()
            # aiocoap's cancel() only forgets the observation: the token stays registered
            # until the next notification, and a NON notification for a forgotten token is
            # dropped without a Reset, so a device (Anjay) notifies on for ever. Tell it.
            stop = getattr(request, "_stop_interest", None)
            if callable(stop):
                stop()
            if token is not None:
                await self._deregister_observation(reg, uri_path, token)

    async def _deregister_observation(
        self, reg: Registration, uri_path: list[str], token: bytes
    ) -> None:
        """GET with Observe: 1 and the observation's token (RFC 7641 3.6)."""
        if self.context is None:
            return
        message = aiocoap.Message(code=Code.GET, uri_path=uri_path, observe=1)
        message.remote = reg.remote
        try:
            answer = await asyncio.wait_for(
                request_with_token(self.context, message, token), timeout=DEREGISTER_TIMEOUT
            )
            log.debug("observation of %s deregistered: %s", reg.endpoint, answer.code)
        except (TimeoutError, aiocoap.error.Error, OSError) as exc:
            log.info("deregistration of %s's observation got no answer: %s", reg.endpoint, exc)


def _cancelled(endpoint: str, request: UpdateRequest) -> UpdateCancelledError:
    return UpdateCancelledError(
        f"{endpoint}: update cancelled",
        permanent=True,
        result={"phase": "cancelled", "result": 10, "manifest_digest": request.manifest_digest},
    )


async def _changed_or_replaced(attempt: _Attempt, reg: Registration, *, timeout: float) -> None:
    """Wait for a notification, the registration's replacement (the device rebooted and
    registered again: its new State and Result are there to read, no poll interval to wait out)
    or ``timeout``. A registration already replaced (or ended) with no new one yet is not waited
    on: it would wake the loop at once, over and over."""
    waiters = [asyncio.ensure_future(attempt.changed.wait())]
    if not reg.replaced.is_set():
        waiters.append(asyncio.ensure_future(reg.replaced.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def request_with_token(
    context: aiocoap.Context, message: aiocoap.Message, token: bytes
) -> aiocoap.Message:
    """Send ``message`` with the given token and return the answer.

    aiocoap (0.4.17) picks every request's token itself; a deregistration must reuse the
    observation's. The request goes through the same interface aiocoap would use, with the
    token-manager's token chosen for this one call (no await between setting and sending, so
    no other request can take it)."""
    from aiocoap.pipe import Pipe

    interface = await context.find_remote_and_interface(message)
    pipe = Pipe(message, context.log)
    answer: asyncio.Future[aiocoap.Message] = asyncio.get_running_loop().create_future()

    def on_event(event: Any) -> bool:
        if answer.done():
            return False
        if event.message is not None:
            answer.set_result(event.message)
        else:
            answer.set_exception(event.exception or aiocoap.error.Error("no answer"))
        return False

    stop = pipe.on_event(on_event)
    manager = interface
    original = type(manager).next_token if hasattr(manager, "next_token") else None
    if original is not None:
        manager.next_token = lambda: token  # type: ignore[method-assign]
    try:
        interface.request(pipe)
    finally:
        if original is not None:
            del manager.next_token
    try:
        return await answer
    finally:
        stop()


__all__ = [
    "FwResult",
    "UpdateDriver",
    "UpdateRequest",
    "choose_method",
    "parse_update_args",
    "request_with_token",
]
