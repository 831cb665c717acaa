"""The gateway's event interface: what it saw goes to the fleet side as the typed events of
``campaigns.events``, stamped with the gateway and the time, handed to an :class:`EventSink` in
batches by one pump, in the order they were emitted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import kombu.exceptions

from campaigns import events
from workers.lwm2m import logsafe

if TYPE_CHECKING:
    from workers.lwm2m.gateway import GatewayConfig

log = logsafe.guard(logging.getLogger("workers.lwm2m.gateway"))


# Most events handed to the sink at once (one task, one transaction).
EVENT_BATCH = 100


# Least time between two hand-overs while events keep coming (seconds): what arrives meanwhile
# joins the next batch, so a steady flow of events becomes a few tasks a second per gateway
# (each task costs a worker a broker round trip and a transaction whatever its size) instead
# of one task per event. An event after a quiet spell is handed over at once.
EVENT_FLUSH_SECONDS = 0.05


# Attempts to hand one event to the sink before giving up (with exponential backoff), when
# the sink failed for another reason than being unreachable.
EMIT_ATTEMPTS = 5


# While the sink is unreachable (SinkUnavailableError: the broker restarting) events are held
# and handed over again, with a pause growing to this; none is dropped.
UNAVAILABLE_MAX_PAUSE = 5.0


class SinkUnavailableError(Exception):
    """The sink cannot take events now (its broker cannot be reached); they are kept and
    handed over again until it can."""


class EventSink(Protocol):
    def emit(self, event: dict[str, Any]) -> None:
        """Deliver one device event (blocking is fine: called on the gateway's event thread)."""


class CeleryEventSink:
    """Events as ``device_events_task`` batches, or one ``device_event_task`` (run inline when
    Celery is eager: the embedded default)."""

    def emit_many(self, events: list[dict[str, Any]]) -> None:
        from workers.tasks import device_events_task

        try:
            device_events_task.delay(events)
        except (kombu.exceptions.OperationalError, ConnectionError) as exc:
            raise SinkUnavailableError(f"broker unreachable: {exc!r}") from exc

    def emit(self, event: dict[str, Any]) -> None:
        from workers.tasks import device_event_task

        try:
            device_event_task.delay(event)
        except (kombu.exceptions.OperationalError, ConnectionError) as exc:
            raise SinkUnavailableError(f"broker unreachable: {exc!r}") from exc


class EventEmitter:
    """Queue events for the sink; one pump hands them over in order (mixed into the Gateway)."""

    config: GatewayConfig
    sink: EventSink
    _event_queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[None]]] | None
    _events: ThreadPoolExecutor

    async def emit(self, event: events.DeviceEvent) -> None:
        """Queue an event for the sink and wait until it was handed over (or given up on).

        The event is stamped with this gateway and the time (an event that says when its values
        were observed keeps that time), and travels in its JSON form (the
        contract is ``campaigns.events``). One pump hands queued events to the sink in batches,
        on the single event thread, in the order they were emitted (so per-gateway order
        holds)."""
        data = dataclasses.replace(
            event,
            gateway_id=self.config.gateway_id,
            at=event.at if event.at is not None else time.time(),
        ).to_dict()
        if self._event_queue is None:
            raise RuntimeError("gateway not started")
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._event_queue.put_nowait((data, delivered))
        await asyncio.shield(delivered)

    async def _event_pump(
        self, queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[None]]]
    ) -> None:
        loop = asyncio.get_running_loop()
        handed_over = -EVENT_FLUSH_SECONDS
        while True:
            batch = [await queue.get()]
            gather_until = handed_over + EVENT_FLUSH_SECONDS
            while len(batch) < EVENT_BATCH:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = gather_until - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            handed_over = loop.time()
            try:
                await self._deliver([event for event, _ in batch])
            finally:
                for _, delivered in batch:
                    if not delivered.done():
                        delivered.set_result(None)

    async def _deliver(self, events: list[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        unavailable = 0
        while True:
            try:
                await loop.run_in_executor(self._events, self._sink_emit, events)
                if unavailable:
                    log.warning("event sink back after %d attempts", unavailable + 1)
                return
            except SinkUnavailableError as exc:
                # Unreachable (a broker restarting): hold the events, never drop them.
                pause = min(0.1 * 2 ** min(unavailable, 8), UNAVAILABLE_MAX_PAUSE)
                if not unavailable:
                    log.warning("event sink unreachable (%s); holding %d events", exc, len(events))
                unavailable += 1
                await asyncio.sleep(pause)
                continue
            except Exception as exc:
                # Transient (broker hiccup, SQLite lock): retry a few times, then log it. The
                # events are idempotent, so a batch applied in part may be applied again.
                if attempt == EMIT_ATTEMPTS - 1:
                    kinds = sorted({str(e.get("type")) for e in events})
                    log.error("event sink failed for %d events %s: %r", len(events), kinds, exc)
                    return
                await asyncio.sleep(0.05 * (2**attempt))
                attempt += 1

    def _sink_emit(self, events: list[dict[str, Any]]) -> None:
        emit_many = getattr(self.sink, "emit_many", None)
        if emit_many is not None and len(events) > 1:
            emit_many(events)
            return
        for event in events:
            self.sink.emit(event)
