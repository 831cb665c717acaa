"""Two gateways at once: a device held by one moves to the other when the first dies, and
commands then reach it through the second (no state was only in the dead gateway's memory)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.workers.lwm2m.conftest import ListSink, eventually, fleet_spec
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.errors import DeviceNotConnectedError
from workers.lwm2m.gateway import Gateway, GatewayConfig
from workers.lwm2m.simulator import Fleet


def test_device_re_registers_with_second_gateway_after_first_dies() -> None:
    async def main() -> None:
        bus = InMemoryCommandBus()
        sinks = [ListSink(), ListSink()]
        gateways = [
            Gateway(
                GatewayConfig(gateway_id=f"gw-{i}", port=0, request_timeout=2, admission="open"),
                bus=bus,
                sink=s,
            )
            for i, s in enumerate(sinks)
        ]
        for gw in gateways:
            await gw.start()
        fleet = Fleet(server_uri=gateways[0].config.base_uri, trust_anchors=[])
        fleet.load_or_create(fleet_spec(2, lifetime=2))
        await fleet.start()
        await fleet.wait_registered(5)
        assert set(gateways[0].by_endpoint) == {"sim-00000", "sim-00001"}
        await gateways[0].stop()
        # The devices notice (update gets no answer) and fail over, as a client with a
        # server list would: here we point them at the second gateway.
        for device in fleet.devices.values():
            device.server_uri = gateways[1].config.base_uri
            device.registered.clear()
            await device.register()
        await eventually(lambda: set(gateways[1].by_endpoint) == {"sim-00000", "sim-00001"})
        result: Any = await gateways[1].run_operation("sim-00000", "read", {"path": "/3/0/3"})
        assert result["values"]["/3/0/3"] == "1.0.0"
        registered = [e for e in sinks[1].events if e["type"] == "registered"]
        assert {e["gateway_id"] for e in registered} == {"gw-1"}
        with pytest.raises(DeviceNotConnectedError):
            await gateways[0].run_operation("sim-00000", "read", {"path": "/3/0/3"})
        await fleet.stop(deregister=False)
        await gateways[1].stop()

    asyncio.run(asyncio.wait_for(main(), 30))
