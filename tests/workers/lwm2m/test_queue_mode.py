"""Queue mode (LwM2M binding UQ / the Q parameter): a device that sleeps between its updates is
only talked to while it is awake. A command for it waits for its next Update and goes out then;
one sent while it is awake goes at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from tests.workers.lwm2m.conftest import Harness, run_with_fleet
from workers.lwm2m import registration as registration_module

AWAKE = 0.3  # seconds a queue-mode device listens after each Update (QUEUE_AWAKE_SECONDS)


async def _update(device: Any) -> None:
    """The device wakes and sends a registration Update."""
    message = aiocoap.Message(code=Code.POST, uri=device._uri("/".join(device.location)))
    response = await device.context.request(message).response
    assert response.code == Code.CHANGED


def _record_requests(device: Any) -> list[float]:
    """When requests from the server reached the device (monotonic clock)."""
    arrivals: list[float] = []
    render = device.resource.render

    async def recording(request: aiocoap.Message) -> aiocoap.Message:
        arrivals.append(time.monotonic())
        return await render(request)

    device.resource.render = recording
    return arrivals


def test_a_command_for_a_sleeping_device_waits_for_its_next_update(
    signing_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registration_module, "QUEUE_AWAKE_SECONDS", AWAKE)

    async def scenario(h: Harness) -> None:
        device = h.fleet.devices["sim-00000"]
        registration = h.gateway.by_endpoint["sim-00000"]
        assert registration.queue_mode
        await asyncio.sleep(AWAKE * 4)  # the gateway's own reads are done; the device sleeps
        arrivals = _record_requests(device)
        read = asyncio.ensure_future(
            h.gateway.run_operation("sim-00000", "read", {"path": "/3/0/1"})
        )
        await asyncio.sleep(1.0)
        assert not read.done() and arrivals == []  # held while the device sleeps
        woke = time.monotonic()
        await _update(device)
        result = await asyncio.wait_for(read, 5)
        assert result == {"values": {"/3/0/1": "thermo-v2"}}
        assert len(arrivals) == 1 and arrivals[0] >= woke
        # Awake now: the next command goes at once, without waiting for another Update.
        started = time.monotonic()
        await asyncio.wait_for(
            h.gateway.run_operation("sim-00000", "read", {"path": "/3/0/0"}), AWAKE
        )
        assert len(arrivals) == 2 and arrivals[1] - started < AWAKE

    run_with_fleet(
        scenario,
        count=1,
        anchors=[signing_key.public_key()],
        spec_kwargs={"queue_mode": True, "lifetime": 3600},
    )
