"""A loaded device or gateway answers late: a request whose answer never came may still have
been carried out. The update driver follows the device instead of failing the attempt on a
missing answer, and an attempt that never reached the device's update state machine ends as
``lwm2m.device_unreachable`` (the campaign waits for it) rather than as a failure
(docs/lwm2m.md, "Device information under load")."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any

from tests.workers.lwm2m.conftest import (
    DictFirmware,
    Harness,
    eventually,
    make_release,
    run_with_fleet,
)
from workers.lwm2m.errors import DeviceTimeoutError

ENDPOINT = "sim-00000"


async def _update(h: Harness, release: Any) -> dict[str, Any]:
    before = len(h.sink.of("command_result"))
    h.gateway.bus.publish(
        h.gateway.config.gateway_id,
        {
            "command_id": uuid.uuid4().hex,
            "endpoint": ENDPOINT,
            "operation": "fw_update",
            "args": {"manifest_digest": release.digest},
        },
    )
    await eventually(lambda: len(h.sink.of("command_result")) > before, timeout=40)
    result: dict[str, Any] = h.sink.of("command_result")[-1]
    return result


def _firmware(release: Any) -> DictFirmware:
    return DictFirmware(
        envelopes={release.digest: release.envelope},
        images={hashlib.sha256(release.payload).hexdigest(): release.payload},
    )


def _run_one(scenario: Any, signing_key: Any, release: Any) -> None:
    """Run ``scenario`` against one simulated device trusting ``signing_key``, which is offered
    the release's firmware."""
    run_with_fleet(
        scenario, count=1, anchors=[signing_key.public_key()], firmware=_firmware(release),
        timeout=60,
    )  # fmt: skip


def _package_writes(h: Harness) -> list[str]:
    return [
        e
        for e in h.fleet.devices[ENDPOINT].events
        if e.startswith("write_uri") and e != "write_uri ''"
    ]


def test_an_execute_carried_out_whose_answer_never_came_is_a_success_not_a_failure(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)

    async def scenario(h: Harness) -> None:
        execute = h.gateway.execute
        executes: list[Any] = []

        async def unanswered(reg: Any, path: Any) -> None:
            executes.append(path)
            await execute(reg, path)
            if path == (5, 0, 2):
                raise DeviceTimeoutError(f"{reg.endpoint} did not answer in time")

        h.gateway.execute = unanswered  # type: ignore[method-assign]
        result = await _update(h, release)

        assert result["ok"], (result["error_code"], result["error"], result["result"])
        assert result["result"]["phase"] == "succeeded"
        device = h.fleet.devices[ENDPOINT]
        assert device.state.version == "1.1.0" and device.boots == 1
        assert executes.count((5, 0, 2)) == 1  # never executed twice

    _run_one(scenario, signing_key, release)


def test_a_package_uri_write_carried_out_whose_answer_never_came_is_followed(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)

    async def scenario(h: Harness) -> None:
        write = h.gateway.write

        async def unanswered(reg: Any, path: Any, value: Any) -> None:
            await write(reg, path, value)
            if path == (5, 0, 1) and value:
                raise DeviceTimeoutError(f"{reg.endpoint} did not answer in time")

        h.gateway.write = unanswered  # type: ignore[method-assign]
        result = await _update(h, release)

        assert result["ok"], (result["error_code"], result["error"], result["result"])
        assert len(_package_writes(h)) == 1
        device = h.fleet.devices[ENDPOINT]
        assert device.state.version == "1.1.0" and device.boots == 1

    _run_one(scenario, signing_key, release)


def test_a_package_uri_write_lost_on_the_way_ends_as_unreachable_not_as_a_failure(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)

    async def scenario(h: Harness) -> None:
        h.gateway.config = dataclasses.replace(h.gateway.config, fw_start_timeout=2.0)
        write = h.gateway.write

        async def lost(reg: Any, path: Any, value: Any) -> None:
            if path == (5, 0, 1) and value:
                raise DeviceTimeoutError(f"{reg.endpoint} did not answer in time")
            await write(reg, path, value)

        h.gateway.write = lost  # type: ignore[method-assign]
        result = await _update(h, release)

        assert not result["ok"]
        assert (result["error_code"], result["permanent"]) == ("lwm2m.device_unreachable", False)
        assert _package_writes(h) == []
        assert h.fleet.devices[ENDPOINT].boots == 0

    _run_one(scenario, signing_key, release)


def test_an_execute_lost_on_the_way_is_sent_again_while_the_device_waits_downloaded(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)

    async def scenario(h: Harness) -> None:
        h.gateway.config = dataclasses.replace(h.gateway.config, request_timeout=1.0)
        execute = h.gateway.execute
        executes: list[Any] = []

        async def first_lost(reg: Any, path: Any) -> None:
            executes.append(path)
            if path == (5, 0, 2) and len(executes) == 1:
                raise DeviceTimeoutError(f"{reg.endpoint} did not answer in time")
            await execute(reg, path)

        h.gateway.execute = first_lost  # type: ignore[method-assign]
        result = await _update(h, release)

        assert result["ok"], (result["error_code"], result["error"], result["result"])
        assert executes.count((5, 0, 2)) == 2
        device = h.fleet.devices[ENDPOINT]
        assert device.state.version == "1.1.0" and device.boots == 1

    _run_one(scenario, signing_key, release)


def test_a_gateway_killed_between_claiming_execute_and_sending_it_executes_on_resume(
    signing_key: Any,
) -> None:
    """The chaos scenario's stall: the claim said "update_executed", the device sat in
    Downloaded, and the resumed command waited for a reboot that was never asked for."""
    release = make_release(signing_key)
    command_id = uuid.uuid4().hex

    async def scenario(h: Harness) -> None:
        h.gateway.config = dataclasses.replace(h.gateway.config, request_timeout=1.0)
        gateway_id = h.gateway.config.gateway_id
        uri = h.gateway.package_uri(release.digest, secure=False, kind="m")
        await h.gateway.run_operation(ENDPOINT, "write_uri", {"uri": uri})
        device = h.fleet.devices[ENDPOINT]
        await eventually(lambda: device.events.count("downloaded") == 1, timeout=20)
        await h.gateway.bus.claim(gateway_id, command_id, "update_executed")
        before = len(h.sink.of("command_result"))
        h.gateway.bus.publish(
            gateway_id,
            {
                "command_id": command_id,
                "endpoint": ENDPOINT,
                "operation": "fw_update",
                "args": {"manifest_digest": release.digest},
            },
        )
        await eventually(lambda: len(h.sink.of("command_result")) > before, timeout=40)
        result = h.sink.of("command_result")[-1]

        assert result["ok"], (result["error_code"], result["error"], result["result"])
        assert result["result"]["resumed"] is True
        assert len(_package_writes(h)) == 1
        assert device.state.version == "1.1.0" and device.boots == 1

    _run_one(scenario, signing_key, release)
