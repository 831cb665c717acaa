"""Command bus between Celery tasks (producers) and gateway processes (consumers).

A device is reachable only through the gateway that holds its registration, so commands are
routed by ``Device.gateway_id`` into that gateway's own queue:

* :class:`RedisCommandBus`: one Redis stream per gateway (``fwupd:lwm2m:gw:<id>:cmd``) read
  through a consumer group, acknowledged only after the command finished, so a gateway that
  restarts under the same id picks up what it had not completed.
* :class:`InMemoryCommandBus`: the embedded default (no Redis). Same interface, backed by an
  ``asyncio.Queue`` owned by the gateway's event loop; producers in other threads hand commands
  over with ``call_soon_threadsafe``.

Device events travel the other way as Celery tasks (``workers.tasks.device_events_task``), not on
this bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

from workers.lwm2m.errors import DeviceNotConnectedError

log = logging.getLogger(__name__)

Command = dict[str, Any]


# Pauses between attempts to reach a Redis that went away (restart, failover): short at first,
# since a restart takes seconds, growing so a long outage costs little.
RECONNECT_FIRST_PAUSE = 0.5
RECONNECT_MAX_PAUSE = 10.0

# Claim records (docs/lwm2m.md, "Command bus"): the phase an update command reached, kept per
# command id so a gateway that gets the command back after a restart resumes it instead of
# repeating a step the device cannot take twice. Kept longer than any update attempt runs.
CLAIM_TTL_SECONDS = 7 * 24 * 3600
CLAIMS_REMEMBERED = 10_000  # in-memory bus: the newest claims kept
# A claim that cannot be written (Redis restarting) is tried again for this long; the step it
# guards is not taken without it.
CLAIM_RETRY_SECONDS = 30.0


class CommandBus(Protocol):
    def publish(self, gateway_id: str, command: Command) -> None:
        """Queue ``command`` for ``gateway_id``; callable from any thread, never blocks long."""

    def consume(self, gateway_id: str) -> AsyncIterator[tuple[str, Command]]:
        """Yield (ack token, command) pairs for this gateway, forever."""

    async def ack(self, gateway_id: str, token: str) -> None:
        """Mark a command finished so it is not redelivered."""

    async def claim(self, gateway_id: str, command_id: str, phase: str) -> None:
        """Record that ``command_id`` is about to take the irreversible step ``phase``."""

    async def claimed(self, gateway_id: str, command_id: str) -> str | None:
        """The phase last claimed for ``command_id`` (None: nothing irreversible done)."""

    async def close(self) -> None: ...


class InMemoryCommandBus:
    """In-process bus: gateways in this process attach a queue on their event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Command]]] = {}
        self._counter = 0
        self._claims: OrderedDict[tuple[str, str], str] = OrderedDict()

    def attach(self, gateway_id: str) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._queues[gateway_id] = (loop, asyncio.Queue())

    def detach(self, gateway_id: str) -> None:
        with self._lock:
            self._queues.pop(gateway_id, None)

    def publish(self, gateway_id: str, command: Command) -> None:
        with self._lock:
            entry = self._queues.get(gateway_id)
        if entry is None:
            raise DeviceNotConnectedError(f"no gateway {gateway_id!r} in this process")
        loop, queue = entry
        # Round-trip through JSON: the same contract as the Redis bus (no live objects).
        loop.call_soon_threadsafe(queue.put_nowait, json.loads(json.dumps(command)))

    async def consume(self, gateway_id: str) -> AsyncIterator[tuple[str, Command]]:
        with self._lock:
            entry = self._queues.get(gateway_id)
        if entry is None:
            self.attach(gateway_id)
            entry = self._queues[gateway_id]
        queue = entry[1]
        while True:
            command = await queue.get()
            self._counter += 1
            yield str(self._counter), command

    async def ack(self, gateway_id: str, token: str) -> None:
        return None

    async def claim(self, gateway_id: str, command_id: str, phase: str) -> None:
        with self._lock:
            self._claims[(gateway_id, command_id)] = phase
            self._claims.move_to_end((gateway_id, command_id))
            while len(self._claims) > CLAIMS_REMEMBERED:
                self._claims.popitem(last=False)

    async def claimed(self, gateway_id: str, command_id: str) -> str | None:
        with self._lock:
            return self._claims.get((gateway_id, command_id))

    async def close(self) -> None:
        return None


class RedisCommandBus:
    """Per-gateway Redis stream with a consumer group; at-least-once delivery."""

    GROUP = "gateway"
    MAXLEN = 100_000  # bounded: a gateway gone for good must not grow Redis without limit

    def __init__(self, url: str) -> None:
        self.url = url
        self._sync: Any = None
        self._async: Any = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def stream(gateway_id: str) -> str:
        return f"fwupd:lwm2m:gw:{gateway_id}:cmd"

    def publish(self, gateway_id: str, command: Command) -> None:
        import redis

        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url)
        self._sync.xadd(
            self.stream(gateway_id),
            {"c": json.dumps(command)},
            maxlen=self.MAXLEN,
            approximate=True,
        )

    async def _client(self) -> Any:
        import redis.asyncio as aioredis

        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            # A client belongs to the loop it was made on: a bus shared by gateways run one
            # after another in one process (each on its own loop) got "Event loop is closed"
            # from the first one's client and failed every claim of the next one's updates.
            self._async = aioredis.Redis.from_url(self.url)
            self._async_loop = loop
        return self._async

    async def consume(self, gateway_id: str) -> AsyncIterator[tuple[str, Command]]:
        """Commands for ``gateway_id``: first the entries this consumer received and never
        acknowledged (a restart, a lost connection), then new ones. A Redis that cannot be
        reached (restarting, a network cut) is waited for, with a growing pause; once back, the
        unacknowledged entries are read again, since a reply may have been lost with the
        connection (the gateway runs a command id once, see ``Gateway._command_loop``)."""
        import redis

        stream = self.stream(gateway_id)
        pause = RECONNECT_FIRST_PAUSE
        cursor = "0"
        while True:
            try:
                client = await self._client()
                if cursor == "0":
                    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: already there
                        await client.xgroup_create(stream, self.GROUP, id="0", mkstream=True)
                entries = await client.xreadgroup(
                    self.GROUP, gateway_id, {stream: cursor}, count=32, block=1000
                )
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("command bus %s unreachable (%r); again in %.1f s", stream, exc, pause)
                await self._drop_client()
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_PAUSE)
                cursor = "0"
                continue
            pause = RECONNECT_FIRST_PAUSE
            messages = entries[0][1] if entries else []
            if cursor != ">":
                if not messages:
                    cursor = ">"
                    continue
                # Reading the unacknowledged history: go on after the last entry read (a
                # command still running stays unacknowledged and must not come back at once).
                last = messages[-1][0]
                cursor = last.decode() if isinstance(last, bytes) else str(last)
            for message_id, fields in messages:
                token = message_id.decode() if isinstance(message_id, bytes) else message_id
                raw = fields.get(b"c") or fields.get("c")
                try:
                    command = json.loads(raw)
                except (TypeError, ValueError):
                    log.warning("dropping undecodable command %s on %s", token, stream)
                    await self.ack(gateway_id, token)
                    continue
                yield token, command

    async def _drop_client(self) -> None:
        client, self._async = self._async, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def ack(self, gateway_id: str, token: str) -> None:
        """Acknowledge ``token``; while Redis cannot be reached the entry stays pending and
        comes back when the consumer reconnects (and is acknowledged then, not run again)."""
        import redis

        try:
            client = await self._client()
            await client.xack(self.stream(gateway_id), self.GROUP, token)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("acknowledging command %s failed (%r); it comes back", token, exc)

    @staticmethod
    def claim_key(gateway_id: str, command_id: str) -> str:
        return f"fwupd:lwm2m:gw:{gateway_id}:claim:{command_id}"

    async def claim(self, gateway_id: str, command_id: str, phase: str) -> None:
        """SET the claim record (expiring after CLAIM_TTL_SECONDS). While Redis cannot be
        reached it is tried again for CLAIM_RETRY_SECONDS, then the error is raised: the step
        it guards is not taken unrecorded."""
        import redis

        key = self.claim_key(gateway_id, command_id)
        give_up = asyncio.get_running_loop().time() + CLAIM_RETRY_SECONDS
        pause = RECONNECT_FIRST_PAUSE
        while True:
            try:
                client = await self._client()
                await client.set(key, phase, ex=CLAIM_TTL_SECONDS)
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if asyncio.get_running_loop().time() > give_up:
                    raise
                log.warning("claim %s not written (%r); again in %.1f s", key, exc, pause)
                await self._drop_client()
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_PAUSE)

    async def claimed(self, gateway_id: str, command_id: str) -> str | None:
        """The claim record, read with the same patience as :meth:`claim`."""
        import redis

        key = self.claim_key(gateway_id, command_id)
        give_up = asyncio.get_running_loop().time() + CLAIM_RETRY_SECONDS
        pause = RECONNECT_FIRST_PAUSE
        while True:
            try:
                client = await self._client()
                value = await client.get(key)
                break
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if asyncio.get_running_loop().time() > give_up:
                    raise
                log.warning("claim %s not read (%r); again in %.1f s", key, exc, pause)
                await self._drop_client()
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_PAUSE)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def close(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None


_memory_bus = InMemoryCommandBus()
_redis_buses: dict[str, RedisCommandBus] = {}


def bus_for_url(url: str | None) -> InMemoryCommandBus | RedisCommandBus:
    """The bus for a URL: ``memory://`` (or None) is the one process-wide in-memory bus."""
    if not url or url.startswith("memory:"):
        return _memory_bus
    if url.startswith(("redis://", "rediss://", "unix://")):
        bus = _redis_buses.get(url)
        if bus is None:
            bus = _redis_buses[url] = RedisCommandBus(url)
        return bus
    raise ValueError(f"unsupported command bus URL {url!r} (redis://... or memory://)")


def configured_bus_url() -> str:
    """LWM2M_COMMAND_BUS_URL, else the Celery broker when it is Redis, else memory://."""
    from django.conf import settings

    if settings.LWM2M_COMMAND_BUS_URL:
        return str(settings.LWM2M_COMMAND_BUS_URL)
    broker = settings.CELERY_BROKER_URL or ""
    if broker.startswith(("redis://", "rediss://")) and not settings.CELERY_TASK_ALWAYS_EAGER:
        return str(broker)
    return "memory://"
