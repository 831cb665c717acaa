"""A gateway restarted mid-command gets its unacknowledged `fw_update` back from the bus: the
claim recorded under the command id makes it resume, never repeat an irreversible step
(docs/lwm2m.md, "Command bus" and "Faults that lose nothing")."""

from __future__ import annotations

import asyncio
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
from workers.lwm2m.errors import LwM2MError
from workers.lwm2m.object5 import FwResult, FwState
from workers.lwm2m.simulator import Faults

ENDPOINT = "sim-00000"


def _package_writes(h: Harness) -> list[str]:
    return [
        e
        for e in h.fleet.devices[ENDPOINT].events
        if e.startswith("write_uri") and e != "write_uri ''"
    ]


def _downloads(h: Harness) -> int:
    return h.fleet.devices[ENDPOINT].events.count("downloaded")


async def _deliver(h: Harness, command: dict[str, Any]) -> dict[str, Any]:
    """Publish ``command`` on the gateway's bus and wait for its result."""
    before = len(h.sink.of("command_result"))
    h.gateway.bus.publish(h.gateway.config.gateway_id, command)
    await eventually(lambda: len(h.sink.of("command_result")) > before, timeout=25)
    result: dict[str, Any] = h.sink.of("command_result")[-1]
    return result


def _restart_memory(h: Harness) -> None:
    """What a SIGKILL and restart under the same id leaves: the gateway's memory of command ids
    is gone; the bus (Redis in production) keeps the claims."""
    h.gateway._commands_seen.clear()


def test_fw_update_redelivered_after_install_succeeds_without_a_second_package_write(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)
    command = {
        "command_id": uuid.uuid4().hex,
        "endpoint": ENDPOINT,
        "operation": "fw_update",
        "args": {"manifest_digest": release.digest},
    }

    async def scenario(h: Harness) -> None:
        first = await _deliver(h, command)
        assert first["ok"], first
        device = h.fleet.devices[ENDPOINT]
        assert device.state.version == "1.1.0" and device.boots == 1
        claimed = await h.gateway.bus.claimed(h.gateway.config.gateway_id, command["command_id"])
        assert claimed == "update_executed"
        await eventually(lambda: ENDPOINT in h.gateway.by_endpoint)
        _restart_memory(h)

        again = await _deliver(h, command)

        assert again["ok"], (again["error_code"], again["error"], again["result"])
        assert again["result"]["phase"] == "succeeded" and again["result"]["result"] == 1
        assert again["result"]["resumed"] is True
        assert again["result"]["firmware_version"] == "1.1.0"
        assert len(_package_writes(h)) == 1
        assert _downloads(h) == 1
        assert device.boots == 1
        assert device.fw.state is FwState.IDLE and device.fw.result is FwResult.SUCCESS

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=DictFirmware(
            envelopes={release.digest: release.envelope},
            images={hashlib.sha256(release.payload).hexdigest(): release.payload},
        ),
        timeout=60,
    )


def test_fw_update_redelivered_whose_first_run_never_wrote_the_package_runs_normally(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)
    command = {
        "command_id": uuid.uuid4().hex,
        "endpoint": ENDPOINT,
        "operation": "fw_update",
        "args": {"manifest_digest": release.digest},
    }

    async def scenario(h: Harness) -> None:
        # The first run ends before anything reaches the device's update state machine (the
        # envelope not yet published here): nothing claimed, no Package URI written.
        first = await _deliver(h, command)
        assert not first["ok"] and first["error_code"] == "lwm2m.firmware_unavailable", first
        assert (
            await h.gateway.bus.claimed(h.gateway.config.gateway_id, command["command_id"]) is None
        )
        assert _package_writes(h) == []
        h.firmware.envelopes[release.digest] = release.envelope
        _restart_memory(h)

        again = await _deliver(h, command)

        assert again["ok"], (again["error_code"], again["error"], again["result"])
        assert again["result"]["phase"] == "succeeded" and "resumed" not in again["result"]
        assert len(_package_writes(h)) == 1
        assert _downloads(h) == 1
        assert h.fleet.devices[ENDPOINT].state.version == "1.1.0"

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=DictFirmware(
            images={hashlib.sha256(release.payload).hexdigest(): release.payload},
        ),
        timeout=60,
    )


def test_fw_update_redelivered_mid_download_is_followed_and_executed_without_a_second_write(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)
    command = {
        "command_id": uuid.uuid4().hex,
        "endpoint": ENDPOINT,
        "operation": "fw_update",
        "args": {"manifest_digest": release.digest},
    }

    async def scenario(h: Harness) -> None:
        # The first run claimed the package write and wrote the Package URI, then the gateway
        # died: the device downloads on its own.
        gateway_id = h.gateway.config.gateway_id
        await h.gateway.bus.claim(gateway_id, command["command_id"], "package_written")
        uri = h.gateway.package_uri(release.digest, secure=False, kind="m")
        await h.gateway.run_operation(ENDPOINT, "write_uri", {"uri": uri})

        again = await _deliver(h, command)

        assert again["ok"], (again["error_code"], again["error"], again["result"])
        assert again["result"]["phase"] == "succeeded" and again["result"]["resumed"] is True
        assert len(_package_writes(h)) == 1
        assert _downloads(h) == 1
        device = h.fleet.devices[ENDPOINT]
        assert device.state.version == "1.1.0" and device.boots == 1
        assert await h.gateway.bus.claimed(gateway_id, command["command_id"]) == "update_executed"

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=DictFirmware(
            envelopes={release.digest: release.envelope},
            images={hashlib.sha256(release.payload).hexdigest(): release.payload},
        ),
        timeout=60,
    )


def test_fw_update_redelivered_after_a_claim_whose_write_never_reached_the_device_runs_normally(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)
    command = {
        "command_id": uuid.uuid4().hex,
        "endpoint": ENDPOINT,
        "operation": "fw_update",
        "args": {"manifest_digest": release.digest},
    }

    async def scenario(h: Harness) -> None:
        # The first run claimed the package write and died before sending it: the device is
        # Idle with Result 0 and was never told to update.
        gateway_id = h.gateway.config.gateway_id
        await h.gateway.bus.claim(gateway_id, command["command_id"], "package_written")

        again = await _deliver(h, command)

        assert again["ok"], (again["error_code"], again["error"], again["result"])
        assert again["result"]["phase"] == "succeeded" and "resumed" not in again["result"]
        assert len(_package_writes(h)) == 1
        assert h.fleet.devices[ENDPOINT].state.version == "1.1.0"

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=DictFirmware(
            envelopes={release.digest: release.envelope},
            images={hashlib.sha256(release.payload).hexdigest(): release.payload},
        ),
        timeout=60,
    )


def test_fw_update_cancelled_then_redelivered_reports_the_cancellation_without_delivering(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)
    command = {
        "command_id": uuid.uuid4().hex,
        "endpoint": ENDPOINT,
        "operation": "fw_update",
        "args": {"manifest_digest": release.digest},
    }

    async def scenario(h: Harness) -> None:
        gateway_id = h.gateway.config.gateway_id
        before = len(h.sink.of("command_result"))
        h.gateway.bus.publish(gateway_id, command)
        await eventually(lambda: len(_package_writes(h)) == 1)
        await h.gateway.run_operation(ENDPOINT, "fw_cancel", {})
        await eventually(lambda: len(h.sink.of("command_result")) > before, timeout=25)
        first = h.sink.of("command_result")[-1]
        assert not first["ok"] and first["result"]["phase"] == "cancelled", first
        assert await h.gateway.bus.claimed(gateway_id, command["command_id"]) == "cancelled"
        _restart_memory(h)

        again = await _deliver(h, command)

        assert not again["ok"] and again["error_code"] == first["error_code"]
        assert again["result"]["phase"] == "cancelled"
        assert len(_package_writes(h)) == 1
        assert h.fleet.devices[ENDPOINT].state.version == "1.0.0"

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=DictFirmware(
            envelopes={release.digest: release.envelope},
            images={hashlib.sha256(release.payload).hexdigest(): release.payload},
        ),
        faults={ENDPOINT: Faults(slow_link_seconds=0.2)},
        timeout=60,
    )


def test_fw_update_redelivered_before_the_device_registers_again_waits_for_it_and_resumes(
    signing_key: Any,
) -> None:
    release = make_release(signing_key)
    command = {
        "command_id": uuid.uuid4().hex,
        "endpoint": ENDPOINT,
        "operation": "fw_update",
        "args": {"manifest_digest": release.digest},
    }

    async def scenario(h: Harness) -> None:
        first = await _deliver(h, command)
        assert first["ok"], first
        await eventually(lambda: ENDPOINT in h.gateway.by_endpoint)
        # The restarted gateway holds no registration of the device yet.
        h.gateway.by_endpoint.clear()
        h.gateway.by_id.clear()
        _restart_memory(h)
        before = len(h.sink.of("command_result"))
        h.gateway.bus.publish(h.gateway.config.gateway_id, command)
        await asyncio.sleep(0.5)
        assert len(h.sink.of("command_result")) == before  # waiting, not failed as unreachable
        device = h.fleet.devices[ENDPOINT]
        device.registered.clear()
        await device.register()
        await eventually(lambda: len(h.sink.of("command_result")) > before, timeout=25)
        again = h.sink.of("command_result")[-1]

        assert again["ok"], (again["error_code"], again["error"], again["result"])
        assert again["result"]["phase"] == "succeeded" and again["result"]["resumed"] is True
        assert len(_package_writes(h)) == 1
        assert device.boots == 1

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=DictFirmware(
            envelopes={release.digest: release.envelope},
            images={hashlib.sha256(release.payload).hexdigest(): release.payload},
        ),
        timeout=60,
    )


def test_an_update_whose_register_after_the_reboot_was_lost_still_reports_the_new_version(
    signing_key: Any,
) -> None:
    """The device rebooted into 1.1.0 while its gateway was down: its Register was lost, and it
    goes on with Updates of its old registration (which a gateway started again adopts). No
    registration's information read follows, so the gateway reads /3/0/3 itself after the
    success and reports it; without that the registry kept 1.0.0 and the rollout, whose command
    succeeded, never completed (the chaos scenario's stuck rollout)."""
    release = make_release(signing_key)
    command = {
        "command_id": uuid.uuid4().hex,
        "endpoint": ENDPOINT,
        "operation": "fw_update",
        "args": {"manifest_digest": release.digest},
    }

    async def scenario(h: Harness) -> None:
        await eventually(lambda: any(e["endpoint"] == ENDPOINT for e in h.sink.of("device_info")))
        device = h.fleet.devices[ENDPOINT]
        register = device.register
        lost: list[int] = []

        async def lost_once() -> None:
            if not lost:
                lost.append(1)
                device.registered.set()  # the device goes on under its old registration
                raise LwM2MError("registration lost: the gateway is down")
            await register()

        device.register = lost_once  # type: ignore[method-assign]
        before = len(h.sink.of("device_info"))
        result = await _deliver(h, command)
        assert result["ok"], result
        assert lost and device.state.version == "1.1.0" and device.boots == 1
        await eventually(
            lambda: any(
                e["firmware_version"] == "1.1.0" for e in h.sink.of("device_info")[before:]
            ),
            timeout=25,
        )

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        firmware=DictFirmware(
            envelopes={release.digest: release.envelope},
            images={hashlib.sha256(release.payload).hexdigest(): release.payload},
        ),
        timeout=60,
    )
