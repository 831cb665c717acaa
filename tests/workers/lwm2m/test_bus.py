"""Command bus: the Redis stream bus (real Redis) and the in-memory bus share one contract."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest

from workers.lwm2m.bus import CLAIM_TTL_SECONDS, InMemoryCommandBus, RedisCommandBus, bus_for_url
from workers.lwm2m.errors import DeviceNotConnectedError

REDIS_URL = os.environ.get("LWM2M_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")


async def _take(bus: Any, gateway_id: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    agen = bus.consume(gateway_id)
    try:
        while len(out) < n:
            out.append(await asyncio.wait_for(agen.__anext__(), 5))
    finally:
        await agen.aclose()
    return out


def test_redis_bus_routes_per_gateway_and_redelivers_unacked() -> None:
    _redis_or_skip()
    gw_a, gw_b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        bus = RedisCommandBus(REDIS_URL)
        try:
            bus.publish(gw_a, {"command_id": "1", "operation": "read"})
            bus.publish(gw_b, {"command_id": "2", "operation": "read"})
            bus.publish(gw_a, {"command_id": "3", "operation": "read"})
            got = await _take(bus, gw_a, 2)
            assert [c["command_id"] for _, c in got] == ["1", "3"]
            await bus.ack(gw_a, got[0][0])
            # A restart under the same id gets back what it had not acknowledged.
            again = await _take(bus, gw_a, 1)
            assert again[0][1]["command_id"] == "3"
            other = await _take(bus, gw_b, 1)
            assert other[0][1]["command_id"] == "2"
        finally:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(REDIS_URL)
            await client.delete(bus.stream(gw_a), bus.stream(gw_b))
            await client.aclose()
            await bus.close()

    asyncio.run(main())


def test_redis_bus_keeps_a_command_claim_per_gateway_with_an_expiry() -> None:
    """The claim a restarted gateway resumes from survives the gateway (it is in Redis), is
    per gateway and command id, moves forward with the phase, and expires."""
    _redis_or_skip()
    gw_a, gw_b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        bus = RedisCommandBus(REDIS_URL)
        restarted = RedisCommandBus(REDIS_URL)
        try:
            assert await bus.claimed(gw_a, "7") is None
            await bus.claim(gw_a, "7", "package_written")
            await bus.claim(gw_a, "7", "update_executed")
            assert await restarted.claimed(gw_a, "7") == "update_executed"
            assert await restarted.claimed(gw_b, "7") is None
            client = await bus._client()
            ttl = await client.ttl(bus.claim_key(gw_a, "7"))
            assert 0 < ttl <= CLAIM_TTL_SECONDS
        finally:
            client = await bus._client()
            await client.delete(bus.claim_key(gw_a, "7"))
            await bus.close()
            await restarted.close()

    asyncio.run(main())


def test_memory_bus_keeps_a_command_claim_per_gateway() -> None:
    async def main() -> None:
        bus = InMemoryCommandBus()
        assert await bus.claimed("gw-a", "7") is None
        await bus.claim("gw-a", "7", "package_written")
        assert await bus.claimed("gw-a", "7") == "package_written"
        assert await bus.claimed("gw-b", "7") is None

    asyncio.run(main())


def test_memory_bus_refuses_unknown_gateway_and_delivers_across_threads() -> None:
    bus = InMemoryCommandBus()
    with pytest.raises(DeviceNotConnectedError):
        bus.publish("nobody", {"x": 1})

    async def main() -> None:
        bus.attach("gw")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, bus.publish, "gw", {"command_id": "9"})
        got = await _take(bus, "gw", 1)
        assert got[0][1] == {"command_id": "9"}
        bus.detach("gw")

    asyncio.run(main())


def test_bus_for_url() -> None:
    assert bus_for_url(None) is bus_for_url("memory://")
    assert isinstance(bus_for_url("redis://127.0.0.1:6379/14"), RedisCommandBus)
    with pytest.raises(ValueError, match="unsupported"):
        bus_for_url("amqp://x")


def test_redis_bus_shared_by_gateways_on_successive_loops_serves_the_second() -> None:
    """One process runs a gateway on a loop, stops it, and runs another on a new loop with the
    same (cached) bus: the second one's claims work, not "Event loop is closed" from the first
    one's client (every update of the second gateway failed as ``lwm2m.internal``)."""
    _redis_or_skip()
    gateway = f"a-{uuid.uuid4().hex[:8]}"
    bus = RedisCommandBus(REDIS_URL)

    async def first() -> None:
        await bus.claim(gateway, "1", "package_written")

    async def second() -> str | None:
        await bus.claim(gateway, "2", "update_executed")
        value = await bus.claimed(gateway, "2")
        client = await bus._client()
        await client.delete(bus.claim_key(gateway, "1"), bus.claim_key(gateway, "2"))
        await bus.close()
        return value

    asyncio.run(first())
    assert asyncio.run(second()) == "update_executed"
