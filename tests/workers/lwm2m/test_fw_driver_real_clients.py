"""The Object 5 driver against fakes of the real clients (tests/workers/lwm2m/fakeclients.py,
after /work/shared/interop/README.md): Anjay's package check and Result 6, pull and push, Block2
at 1024, Observe kept until deregistered; Wakaama's start in State 1, 4.05 on /5/0/1, push only,
its clock offset, its exit on 4.04. One named test per behaviour."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from campaigns import events
from campaigns.rollouts import REASON_BY_ERROR_CODE, failure_reason
from campaigns.spec import FAILURE_REASONS
from tests.workers.lwm2m.conftest import DictFirmware, ListSink, eventually
from tests.workers.lwm2m.fakeclients import (
    ANJAY,
    WAKAAMA,
    WAKAAMA_CLOCK_OFFSET,
    FakeClient,
    anjay_package,
)
from workers.lwm2m import content, errors
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.gateway import Gateway, GatewayConfig

PAYLOAD = b'#!/bin/sh\nexec ./demo-3.15.0 "$@"\n' + bytes(range(256)) * 12
PACKAGE = anjay_package(PAYLOAD)
PACKAGE_SHA = hashlib.sha256(PACKAGE).hexdigest()
SUIT_ENVELOPE = b"\xd8\x6b\xa2" + b"not an anjay package" * 40
SUIT_DIGEST = hashlib.sha256(b"manifest").hexdigest()


@dataclass
class Rig:
    gateway: Gateway
    sink: ListSink
    firmware: DictFirmware
    clients: dict[str, FakeClient]

    async def update(self, endpoint: str, **args: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.gateway.run_operation(
            endpoint, "fw_update", {"manifest_digest": SUIT_DIGEST, **args}
        )
        return result

    async def command(self, endpoint: str, **args: Any) -> events.CommandResult:
        """Through the command bus, as the engine sends it: the reported CommandResult."""
        command_id = uuid.uuid4().hex
        assert isinstance(self.gateway.bus, InMemoryCommandBus)
        self.gateway.bus.publish(
            self.gateway.config.gateway_id,
            {
                "command_id": command_id,
                "endpoint": endpoint,
                "operation": "fw_update",
                "args": {"manifest_digest": SUIT_DIGEST, **args},
            },
        )
        await eventually(
            lambda: any(e["command_id"] == command_id for e in self.sink.of("command_result")),
            timeout=20,
        )
        (found,) = [e for e in self.sink.of("command_result") if e["command_id"] == command_id]
        event = events.event_from_dict(found)
        assert isinstance(event, events.CommandResult)
        return event


class IntegratedFirmware(DictFirmware):
    def integrated(self, manifest_digest: str) -> bytes | None:
        return PACKAGE if manifest_digest == SUIT_DIGEST else None


def run(
    scenario: Callable[[Rig], Awaitable[None]],
    *clients: FakeClient,
    firmware: DictFirmware | None = None,
    start_timeout: float = 1.0,
    timeout: float = 40,
) -> None:
    async def main() -> None:
        sink = ListSink()
        fw = firmware or DictFirmware(
            envelopes={SUIT_DIGEST: SUIT_ENVELOPE}, images={PACKAGE_SHA: PACKAGE}
        )
        gateway = Gateway(
            GatewayConfig(
                gateway_id=f"gw-{uuid.uuid4().hex[:6]}",
                port=0,
                fw_poll_seconds=0.2,
                request_timeout=3,
                fw_update_timeout=15,
                fw_start_timeout=start_timeout,
                admission="open",
            ),
            bus=InMemoryCommandBus(),
            sink=sink,
            firmware=fw,
        )
        await gateway.start()
        try:
            for client in clients:
                client.server_uri = gateway.config.base_uri
                await client.start()
            await eventually(lambda: len(sink.of("device_info")) >= len(clients), timeout=10)
            rig = Rig(gateway, sink, fw, {c.endpoint: c for c in clients})
            await asyncio.wait_for(scenario(rig), timeout)
        finally:
            for client in clients:
                await client.stop()
            await gateway.stop()

    asyncio.run(main())


def anjay(name: str = "acme.example-dev01", **kwargs: Any) -> FakeClient:
    return FakeClient(endpoint=name, server_uri="", profile=ANJAY, **kwargs)


def wakaama(name: str = "wakaama-01", **kwargs: Any) -> FakeClient:
    return FakeClient(endpoint=name, server_uri="", profile=WAKAAMA, **kwargs)


def reason_of(exc: errors.LwM2MError) -> str:
    """The rollout reason the engine records for this gateway failure."""
    return failure_reason(
        events.CommandResult(
            command_id="c",
            ok=False,
            result=getattr(exc, "result", None) or {},
            error_code=exc.code,
            permanent=getattr(exc, "permanent", True),
        )
    )


# --- Anjay ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pull", "push"])
def test_anjay_foreign_package_ends_unsupported_package(method: str) -> None:
    device = anjay()

    async def scenario(rig: Rig) -> None:
        with pytest.raises(errors.UpdateFailedError) as info:
            await rig.update(device.endpoint, method=method)
        assert info.value.result is not None and info.value.result["result"] == 6
        assert reason_of(info.value) == "unsupported_package"
        assert device.state == 0 and device.result == 6
        assert not any(line.startswith("execute") for line in device.log)

    run(scenario, device)


def test_anjay_pull_of_a_foreign_package_ends_unsupported_package() -> None:
    device = anjay()

    async def scenario(rig: Rig) -> None:
        result = await rig.command(device.endpoint)
        assert (result.ok, result.update_result, failure_reason(result)) == (
            False,
            6,
            "unsupported_package",
        )
        assert any(line.startswith("write /5/0/1 'coap://") for line in device.log)

    run(scenario, device)


@pytest.mark.parametrize("method", ["pull", "push"])
def test_anjay_takes_its_own_package_by_pull_and_by_push(method: str) -> None:
    device = anjay()

    async def scenario(rig: Rig) -> None:
        outcome = await rig.update(
            device.endpoint,
            delivery="image",
            image_sha256=PACKAGE_SHA,
            image_size=len(PACKAGE),
            method=method,
        )
        assert (outcome["phase"], outcome["result"], outcome["method"]) == (
            "succeeded",
            1,
            method,
        )
        assert device.received == PACKAGE
        assert device.version == "3.15.0" and device.registrations == 2
        assert [e["endpoint"] for e in rig.sink.of("fw_installed")] == [device.endpoint]
        wrote = "write /5/0/1 'coap://" if method == "pull" else "write /5/0/0 1024 bytes"
        assert any(line.startswith(wrote) for line in device.log)

    run(scenario, device)


def test_anjay_pull_downloads_with_block2_at_1024_bytes() -> None:
    device = anjay()

    async def scenario(rig: Rig) -> None:
        await rig.update(device.endpoint, delivery="image", image_sha256=PACKAGE_SHA)
        assert len(device.block2_szx) == -(-len(PACKAGE) // 1024)
        assert set(device.block2_szx) == {6}

    run(scenario, device)


def test_anjay_package_with_a_bad_crc_ends_integrity_check_failed() -> None:
    bad = anjay_package(PAYLOAD, crc=1)
    digest = hashlib.sha256(bad).hexdigest()
    device = anjay()

    async def scenario(rig: Rig) -> None:
        with pytest.raises(errors.UpdateFailedError) as info:
            await rig.update(device.endpoint, delivery="image", image_sha256=digest)
        assert reason_of(info.value) == "integrity_check_failed"

    run(scenario, device, firmware=DictFirmware(images={digest: bad}))


@pytest.mark.parametrize("shrink", ["413", "continue"])
def test_push_goes_down_to_the_block1_size_the_device_takes(shrink: str) -> None:
    device = anjay(max_block1_szx=4, block1_shrink=shrink)  # 256-byte blocks

    async def scenario(rig: Rig) -> None:
        outcome = await rig.update(
            device.endpoint, delivery="image", image_sha256=PACKAGE_SHA, method="push"
        )
        assert outcome["phase"] == "succeeded"
        assert device.received == PACKAGE
        sizes = device.block1_sizes
        if shrink == "continue":
            assert sizes[0] == 1024  # taken whole, the rest in the smaller size
            sizes = sizes[1:]
        assert set(sizes[:-1]) == {256} and 0 < sizes[-1] <= 256

    run(scenario, device)


def test_anjay_in_state_2_is_reset_by_an_empty_package_uri_then_updated() -> None:
    device = anjay()
    device.state = 2  # a package staged by someone else

    async def scenario(rig: Rig) -> None:
        outcome = await rig.update(device.endpoint, delivery="image", image_sha256=PACKAGE_SHA)
        assert outcome["phase"] == "succeeded"
        writes = [line for line in device.log if line.startswith("write")]
        assert writes[0] == "write /5/0/1 ''"
        assert writes[1].startswith("write /5/0/1 'coap://")

    run(scenario, device)


def test_device_in_updating_is_device_busy_and_not_reset() -> None:
    device = anjay()
    device.state = 3

    async def scenario(rig: Rig) -> None:
        with pytest.raises(errors.DeviceBusyError) as info:
            await rig.update(device.endpoint)
        assert info.value.permanent is False
        assert reason_of(info.value) == "device_busy"
        assert not any(line.startswith("write") for line in device.log)

    run(scenario, device)


def test_observation_is_deregistered_on_the_device_when_the_attempt_ends() -> None:
    device = anjay()

    async def scenario(rig: Rig) -> None:
        with pytest.raises(errors.UpdateFailedError):
            await rig.update(device.endpoint)
        assert device.observed_tokens
        assert set(device.observed_tokens) <= set(device.deregistered_tokens)
        assert device.observers() == 0
        sent = device.notifications_sent
        device.set_state(0, 0)
        await asyncio.sleep(0.3)
        assert device.notifications_sent == sent  # nothing notified after the attempt

    run(scenario, device)


def test_observations_of_both_registrations_are_deregistered_after_a_reboot() -> None:
    device = anjay()

    async def scenario(rig: Rig) -> None:
        await rig.update(device.endpoint, delivery="image", image_sha256=PACKAGE_SHA)
        await eventually(lambda: device.observers() == 0)
        assert set(device.observed_tokens) <= set(device.deregistered_tokens)

    run(scenario, device)


def test_anjay_fake_keeps_notifying_an_observation_the_server_forgot() -> None:
    """What the deregistration is for: aiocoap's cancel() only forgets the token, and a
    forgotten NON notification gets no Reset, so the device notifies on."""
    device = anjay()

    async def scenario(rig: Rig) -> None:
        client = await aiocoap.Context.create_client_context()
        try:
            message = aiocoap.Message(
                code=Code.GET, uri=f"coap://127.0.0.1:{device.port}/5/0/3", observe=0
            )
            request = client.request(message)
            await request.response
            request.observation.cancel()
            sent = device.notifications_sent
            for state in (1, 0, 1):
                device.set_state(state)
                await asyncio.sleep(0.1)
            await eventually(lambda: device.notifications_sent >= sent + 2)
            assert device.observers() == 1
            assert device.deregistered_tokens == []
        finally:
            await client.shutdown()

    run(scenario, device)


def test_download_that_runs_out_of_time_is_timed_out_not_never_started() -> None:
    device = anjay(stall_download=True)

    async def scenario(rig: Rig) -> None:
        with pytest.raises(errors.UpdateTimedOutError) as info:
            await rig.update(device.endpoint, timeout=2)
        assert info.value.permanent is False
        assert reason_of(info.value) == "timed_out"

    run(scenario, device, start_timeout=0.5)


def test_pull_only_device_without_a_scheme_we_serve_is_no_supported_delivery() -> None:
    device = FakeClient(
        endpoint="http-only", server_uri="", profile=replace(ANJAY, protocols=[2, 3])
    )
    device.profile.delivery_method = 0

    async def scenario(rig: Rig) -> None:
        with pytest.raises(errors.NoSupportedDeliveryError) as info:
            await rig.update(device.endpoint)
        assert info.value.permanent is True
        assert reason_of(info.value) == "no_supported_delivery"
        assert not any(line.startswith("write") for line in device.log)

    run(scenario, device)


def test_suit_integrated_is_pulled_from_fw_s() -> None:
    device = anjay()
    firmware = IntegratedFirmware()

    async def scenario(rig: Rig) -> None:
        outcome = await rig.update(device.endpoint, delivery="suit-integrated")
        assert outcome["phase"] == "succeeded"
        assert any(f"/fw/s/{SUIT_DIGEST}'" in line for line in device.log)

    run(scenario, device, firmware=firmware)


def test_suit_integrated_without_a_source_for_it_is_refused_before_any_write() -> None:
    device = anjay()

    async def scenario(rig: Rig) -> None:
        with pytest.raises(errors.FirmwareUnavailableError) as info:
            await rig.update(device.endpoint, delivery="suit-integrated")
        assert info.value.permanent is True
        assert not any(line.startswith("write") for line in device.log)

    run(scenario, device)


# --- Wakaama -------------------------------------------------------------------------------------


def test_wakaama_in_state_1_is_reset_and_never_read_for_its_uri() -> None:
    device = wakaama()

    async def scenario(rig: Rig) -> None:
        with pytest.raises(errors.UpdateNeverStartedError):
            await rig.update(device.endpoint, delivery="image", image_sha256=PACKAGE_SHA)
        assert not any(line.startswith("read /5/0/1") for line in device.log)
        writes = [line for line in device.log if line.startswith("write")]
        assert writes[0] == "write /5/0/0 0 bytes"  # the reset: an empty package (push only)
        assert writes[1].startswith("write /5/0/0 1024 bytes block 0/6")
        assert not any(line.startswith("execute") for line in device.log)

    run(scenario, device)


def test_wakaama_push_only_ends_update_never_started_not_dispatch_failed() -> None:
    device = wakaama()

    async def scenario(rig: Rig) -> None:
        result = await rig.command(
            device.endpoint, delivery="image", image_sha256=PACKAGE_SHA, method="pull"
        )
        assert result.ok is False
        assert result.error_code == "lwm2m.fw_update_never_started"
        assert result.permanent is True
        assert failure_reason(result) == "update_never_started"
        assert result.result["method"] == "push"  # pull asked for, push is all it has

    run(scenario, device)


def test_never_started_names_the_window_the_device_had_not_the_start_timeout() -> None:
    """A campaign's timeouts.device shorter than fw_start_timeout ends the wait first; against
    the real Wakaama client with timeouts.device 1m the detail said "in 120 s"."""
    device = wakaama()

    async def scenario(rig: Rig) -> None:
        result = await rig.command(
            device.endpoint, delivery="image", image_sha256=PACKAGE_SHA, timeout=2
        )
        assert failure_reason(result) == "update_never_started"
        assert "State never moved in 2 s after the package was pushed" in result.error

    run(scenario, device, start_timeout=120)


def test_wakaama_answers_4_05_to_a_read_of_the_package_uri() -> None:
    device = wakaama()

    async def scenario(rig: Rig) -> None:
        with pytest.raises(errors.DeviceOperationError, match=r"4\.05") as info:
            await rig.gateway.run_operation(device.endpoint, "read", {"path": "/5/0/1"})
        assert info.value.permanent is True

    run(scenario, device)


def test_wakaama_execute_moves_state_1_to_2_without_a_download() -> None:
    device = wakaama()

    async def scenario(rig: Rig) -> None:
        reg = rig.gateway.registration(device.endpoint)
        await rig.gateway.execute(reg, (5, 0, 2))
        assert (device.state, device.received) == (2, b"")

    run(scenario, device)


def test_wakaama_clock_offset_reaches_device_info() -> None:
    device = wakaama()

    async def scenario(rig: Rig) -> None:
        (info,) = rig.sink.of("device_info")
        assert info["manufacturer"] == "Open Mobile Alliance"
        assert info["protocols"] == [0, 1] and info["delivery_method"] == 1
        assert abs(info["device_time"] - (time.time() + WAKAAMA_CLOCK_OFFSET)) < 60

    run(scenario, device)


def test_wakaama_exits_when_its_registration_update_gets_4_04() -> None:
    device = wakaama()

    async def scenario(rig: Rig) -> None:
        reg = rig.gateway.registration(device.endpoint)
        await rig.gateway.deregister(reg.reg_id, _FromPeer(reg.remote))  # type: ignore[arg-type]
        assert await device.update() == Code.NOT_FOUND
        await eventually(lambda: device.exited and device.context is None)
        # Nothing reached its update state machine: the attempt waits (transient), not fails.
        with pytest.raises(errors.DeviceUnreachableError) as info:
            await rig.update(device.endpoint)
        assert info.value.permanent is False

    run(scenario, device)


@dataclass
class _FromPeer:
    """A request as if from the registration's own peer (the gateway forgetting it, e.g. a
    restart, seen from the device)."""

    remote: Any


# --- reasons -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (errors.UpdateNeverStartedError, "update_never_started"),
        (errors.NoSupportedDeliveryError, "no_supported_delivery"),
        (errors.PushRefusedError, "push_refused"),
        (errors.UpdateTimedOutError, "timed_out"),
        (errors.DeviceBusyError, "device_busy"),
        (errors.UnsupportedProtocolError, "unsupported_protocol"),
    ],
)
def test_each_driver_outcome_has_a_reason_an_operator_can_act_on(
    error: type[errors.DeviceOperationError], reason: str
) -> None:
    assert REASON_BY_ERROR_CODE[error.code] == reason
    assert reason in FAILURE_REASONS


def test_a_retry_while_the_previous_attempt_ends_waits_for_it_instead_of_busy() -> None:
    """The campaign retries as soon as the device reported its result; the gateway's previous
    attempt may still be deregistering its observation: the new attempt waits for it (not
    device_busy, which would fail the retry)."""
    device = anjay()

    async def scenario(rig: Rig) -> None:
        async def ending() -> None:
            await asyncio.sleep(0.5)  # the previous attempt's last steps
            rig.gateway._fw_attempts.pop(device.endpoint, None)

        previous = asyncio.get_running_loop().create_task(ending())
        rig.gateway._fw_attempts[device.endpoint] = previous
        result = await rig.update(device.endpoint, delivery="image", image_sha256=PACKAGE_SHA)
        assert result["phase"] == "succeeded"
        assert previous.done()

    run(scenario, device)


def test_an_attempt_still_running_after_the_handover_window_is_device_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.lwm2m import fwupdate

    monkeypatch.setattr(fwupdate, "HANDOVER_SECONDS", 0.3)
    device = anjay()

    async def scenario(rig: Rig) -> None:
        running = asyncio.get_running_loop().create_task(asyncio.sleep(30))
        rig.gateway._fw_attempts[device.endpoint] = running
        try:
            with pytest.raises(errors.DeviceBusyError):
                await rig.update(device.endpoint, delivery="image", image_sha256=PACKAGE_SHA)
            assert not any(line.startswith("write") for line in device.log)
        finally:
            running.cancel()

    run(scenario, device)


def test_the_delivery_method_read_at_registration_is_not_read_again_per_update() -> None:
    """/5/0/9 comes with the device information after registering; an update uses it."""
    device = anjay()
    reads: list[content.Path] = []
    handle = device.handle

    def counting(path: content.Path, request: aiocoap.Message) -> aiocoap.Message:
        if request.code == Code.GET:
            reads.append(path)
        return handle(path, request)

    device.handle = counting  # type: ignore[method-assign]

    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.gateway.by_endpoint[device.endpoint].delivery_method == 2)
        reads.clear()
        registered = device.log.count("register")
        await rig.update(device.endpoint, delivery="image", image_sha256=PACKAGE_SHA)
        await asyncio.sleep(0.3)  # the device information read after the reboot's registration
        # Only the device-information read of each new registration (the reboot's) reads it.
        assert reads.count((5, 0, 9)) == device.log.count("register") - registered == 1

    run(scenario, device)
