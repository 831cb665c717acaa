"""The device-information reads that follow a registration are retried when they fail for a
passing reason, and what is still missing is read again at the device's next update: a device
that was too busy to answer once must not stay without a firmware version in the registry."""

from __future__ import annotations

import asyncio
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from tests.workers.lwm2m.conftest import Harness, eventually, run_with_fleet
from workers.lwm2m import registration as registration_module


def _busy_for(device: Any, path: tuple[str, ...], times: int) -> list[int]:
    """The device answers 5.03 to the first ``times`` GETs of ``path``; returns a call counter."""
    calls = [0]
    render = device.resource.render

    async def busy(request: aiocoap.Message) -> aiocoap.Message:
        if request.code == Code.GET and tuple(request.opt.uri_path) == path:
            calls[0] += 1
            if calls[0] <= times:
                return aiocoap.Message(code=Code.SERVICE_UNAVAILABLE)
        return await render(request)

    device.resource.render = busy
    return calls


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registration_module, "DEVICE_INFO_RETRY_SECONDS", 0.05)


def _versions(h: Harness, endpoint: str) -> list[str | None]:
    return [e["firmware_version"] for e in h.sink.of("device_info") if e["endpoint"] == endpoint]


def test_a_read_that_failed_once_is_tried_again(signing_key: Any) -> None:
    async def scenario(h: Harness) -> None:
        device = h.fleet.devices["sim-00000"]
        await eventually(lambda: _versions(h, "sim-00000") == ["1.0.0"])  # first registration
        # Re-register with the device busy for its first two version reads.
        calls = _busy_for(device, ("3", "0", "3"), 2)
        await device.register()
        await eventually(lambda: _versions(h, "sim-00000")[-1:] == ["1.0.0"] and calls[0] == 3)
        assert not h.gateway.by_endpoint["sim-00000"].info_incomplete

    run_with_fleet(scenario, count=1, anchors=[signing_key.public_key()])


def test_what_is_still_missing_is_read_at_the_next_update(signing_key: Any) -> None:
    async def scenario(h: Harness) -> None:
        device = h.fleet.devices["sim-00000"]
        await eventually(lambda: _versions(h, "sim-00000") == ["1.0.0"])  # first registration
        attempts = registration_module.DEVICE_INFO_ATTEMPTS
        calls = _busy_for(device, ("3", "0", "3"), attempts)
        before = len(_versions(h, "sim-00000"))
        await device.register()
        await eventually(lambda: len(_versions(h, "sim-00000")) == before + 1, timeout=5)
        assert _versions(h, "sim-00000")[-1] == "" and calls[0] == attempts  # not read
        assert h.gateway.by_endpoint["sim-00000"].info_incomplete
        update = aiocoap.Message(code=Code.POST, uri=device._uri("/".join(device.location)))
        assert (await device.context.request(update).response).code == Code.CHANGED
        await eventually(lambda: _versions(h, "sim-00000")[-1] == "1.0.0")
        await asyncio.sleep(0.1)
        assert not h.gateway.by_endpoint["sim-00000"].info_incomplete

    run_with_fleet(scenario, count=1, anchors=[signing_key.public_key()])


def test_read_info_reads_the_device_information_again(signing_key: Any) -> None:
    async def scenario(h: Harness) -> None:
        device = h.fleet.devices["sim-00000"]
        await eventually(lambda: _versions(h, "sim-00000") == ["1.0.0"])  # at registration
        device.state.version = "1.0.1"  # what the device reports has changed since
        result = await h.gateway.run_operation("sim-00000", "read_info", {})
        assert result == {}
        assert _versions(h, "sim-00000") == ["1.0.0", "1.0.1"]

    run_with_fleet(scenario, count=1, anchors=[signing_key.public_key()])


def test_what_is_still_missing_is_read_again_later_without_an_update(
    signing_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway under load does not give up: after the first attempts the device information
    is reported as it is and the rest is read again later, at most DEVICE_INFO_MAX_PAUSE apart,
    even when the device sends no Update."""
    monkeypatch.setattr(registration_module, "DEVICE_INFO_MAX_PAUSE", 0.2)

    async def scenario(h: Harness) -> None:
        device = h.fleet.devices["sim-00000"]
        await eventually(lambda: _versions(h, "sim-00000") == ["1.0.0"])  # first registration
        attempts = registration_module.DEVICE_INFO_ATTEMPTS
        calls = _busy_for(device, ("3", "0", "3"), attempts + 3)
        before = len(_versions(h, "sim-00000"))
        await device.register()
        # First what answered (no version), then, without any Update, the version.
        await eventually(lambda: _versions(h, "sim-00000")[before:] == ["", "1.0.0"], timeout=10)
        assert calls[0] == attempts + 4
        assert not h.gateway.by_endpoint["sim-00000"].info_incomplete

    run_with_fleet(scenario, count=1, anchors=[signing_key.public_key()])


def test_a_slow_device_is_read_in_one_pass_each_read_timed_alone(signing_key: Any) -> None:
    """CoAP allows one outstanding request per device (NSTART = 1, so aiocoap queues the rest):
    a pass asks one resource after the other, each with the whole request timeout, so a device
    that answers each read in most of a second (5 s timeout, 7 reads) is read in one pass; fired
    together, the last reads would time out while waiting behind their siblings."""

    async def scenario(h: Harness) -> None:
        device = h.fleet.devices["sim-00000"]
        await eventually(lambda: _versions(h, "sim-00000") == ["1.0.0"])
        render = device.resource.render
        gets = [0]

        async def slow(request: aiocoap.Message) -> aiocoap.Message:
            if request.code == Code.GET:
                gets[0] += 1
                await asyncio.sleep(0.9)
            return await render(request)

        device.resource.render = slow
        await h.gateway.run_operation("sim-00000", "read_info", {})
        assert gets[0] == 7  # one pass, nothing read twice
        assert _versions(h, "sim-00000")[-1] == "1.0.0"
        assert not h.gateway.by_endpoint["sim-00000"].info_incomplete

    run_with_fleet(scenario, count=1, anchors=[signing_key.public_key()])
