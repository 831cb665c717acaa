"""Gateways sharing one UDP port (an SO_REUSEPORT group) only when every one of them asks to;
the kernel then spreads the devices over them by source address."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.workers.lwm2m.conftest import ListSink
from tests.workers.lwm2m.test_loadsim import LoopThread
from workers.lwm2m import loadsim
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.gateway import Gateway, GatewayConfig
from workers.lwm2m.ports import PortInUseError, claim_udp_port, release_udp_port

DEVICES = 60
ANY_UUID = "6d0f9f4e-0a53-4c39-9b8a-111111111111"


def _gateway(name: str, port: int, *, reuse_port: bool, bus: InMemoryCommandBus) -> Gateway:
    config = GatewayConfig(
        gateway_id=name, port=port, request_timeout=2, admission="open", reuse_port=reuse_port
    )
    return Gateway(config, bus=bus, sink=ListSink())


@pytest.fixture
def port() -> Iterator[int]:
    port = claim_udp_port("127.0.0.1")
    yield port
    release_udp_port("127.0.0.1", port)


def test_second_gateway_on_a_taken_port_is_refused_without_reuse_port(port: int) -> None:
    async def main() -> None:
        bus = InMemoryCommandBus()
        first = _gateway("gw-first", port, reuse_port=False, bus=bus)
        await first.start()
        try:
            for reuse in (False, True):
                second = _gateway("gw-second", port, reuse_port=reuse, bus=bus)
                # Without the flag the probe refuses; with it the kernel does, because the
                # first gateway did not join a group.
                with pytest.raises(PortInUseError if not reuse else OSError):
                    await second.start()
                await second.stop()
        finally:
            await first.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_gateway_without_reuse_port_is_not_joined_by_one_that_asks(port: int) -> None:
    """A reuse-port gateway cannot slip into the port of one started without the flag even
    though aiocoap sets SO_REUSEPORT on every socket it binds."""

    async def main() -> None:
        bus = InMemoryCommandBus()
        alone = _gateway("gw-alone", port, reuse_port=False, bus=bus)
        await alone.start()
        try:
            joiner = _gateway("gw-joiner", port, reuse_port=True, bus=bus)
            with pytest.raises(OSError, match="in use"):
                await joiner.start()
            await joiner.stop()
        finally:
            await alone.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_reuse_port_gateways_share_one_port_and_the_devices_spread_over_both(port: int) -> None:
    bus = InMemoryCommandBus()
    gateways = [_gateway(f"gw-{i}", port, reuse_port=True, bus=bus) for i in range(2)]
    gw_loops = [LoopThread(), LoopThread()]
    devices = LoopThread()
    spec = loadsim.LoadFleetSpec(
        server=f"coap://127.0.0.1:{port}",
        count=DEVICES,
        vendor_id=ANY_UUID,
        class_id=ANY_UUID,
        trust_anchors_pem=[],
        prefix="spread",
    )
    fleet = loadsim.LoadFleet(spec)
    try:
        for gw, loop in zip(gateways, gw_loops, strict=True):
            loop.call(gw.start())
        devices.call(fleet.start())
        devices.call(fleet.wait_registered(30), timeout=40)
        held: list[Any] = [set(gw.by_endpoint) for gw in gateways]
        assert held[0] | held[1] == {d.endpoint for d in fleet.devices}
        assert not held[0] & held[1]
        # Hashing 60 source addresses over two sockets leaves neither empty.
        assert held[0] and held[1], [len(h) for h in held]
        # Commands reach a device through the gateway that holds it.
        endpoint = sorted(held[1])[0]
        result = gw_loops[1].call(gateways[1].run_operation(endpoint, "read", {"path": "/3/0/3"}))
        assert result["values"]["/3/0/3"] == "1.0.0"
    finally:
        devices.call(fleet.stop())
        devices.stop()
        for gw, loop in zip(gateways, gw_loops, strict=True):
            loop.call(gw.stop())
            loop.stop()


class _BusFailingOnce(InMemoryCommandBus):
    """The in-memory bus whose first read fails as a Redis read does when it times out."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def consume(self, gateway_id: str) -> Any:
        if not self.failures:
            self.failures += 1
            raise TimeoutError("Timeout reading from 127.0.0.1:6379")
        async for item in super().consume(gateway_id):
            yield item


def test_gateway_keeps_taking_commands_after_its_bus_failed(port: int) -> None:
    async def main() -> None:
        bus = _BusFailingOnce()
        sink = ListSink()
        gateway = Gateway(
            GatewayConfig(gateway_id="gw-bus", port=port, request_timeout=2, admission="open"),
            bus=bus,
            sink=sink,
        )
        await gateway.start()
        fleet = loadsim.LoadFleet(
            loadsim.LoadFleetSpec(
                server=gateway.config.base_uri, count=1, vendor_id=ANY_UUID, class_id=ANY_UUID,
                trust_anchors_pem=[], prefix="bus",
            )
        )  # fmt: skip
        try:
            await fleet.start()
            await fleet.wait_registered(10)
            endpoint = fleet.devices[0].endpoint
            bus.publish(
                "gw-bus",
                {"command_id": "c-1", "endpoint": endpoint, "operation": "read",
                 "args": {"path": "/3/0/3"}},
            )  # fmt: skip
            for _ in range(100):
                if sink.of("command_result"):
                    break
                await asyncio.sleep(0.05)
            assert bus.failures == 1
            [result] = sink.of("command_result")
            assert result["ok"] and result["result"]["values"]["/3/0/3"] == "1.0.0"
        finally:
            await fleet.stop()
            await gateway.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
