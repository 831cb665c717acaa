"""Counts that several processes add to and the web process reports (``/metrics``).

Dispatches happen in Celery workers and device events are applied there, while Prometheus
scrapes the web process: a ``prometheus_client.Counter`` in a worker would never be seen (and a
prefork worker has several children). So these few numbers are kept in Redis when the broker is
Redis (the one store every process already shares), as hash fields under
``METRICS_TALLY_PREFIX`` (``fwupd:metrics:``),
and in this process's memory otherwise (the embedded default, where tasks run in-process).

Recording never fails the work it describes: a Redis error is logged and the count is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

# Hash keys under METRICS_TALLY_PREFIX (default "fwupd:metrics:"; two deployments sharing one
# Redis database give each its own prefix).
DISPATCHES = "dispatches"  # hash: campaign name -> rollouts dispatched
EVENTS = "device-events"  # hash: applied, lag_seconds, last_applied_at
# Seconds a metrics read or write may take before it is given up (never blocks the work long).
REDIS_TIMEOUT = 1.0


@dataclass
class Snapshot:
    dispatches: dict[str, int] = field(default_factory=dict)
    events_applied: int = 0
    event_lag_seconds: float | None = None
    events_last_applied_at: float | None = None
    queue_lengths: dict[str, int] = field(default_factory=dict)
    redis_ok: bool | None = None  # None: no Redis in this deployment


_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] = {DISPATCHES: {}, EVENTS: {}}
_clients: dict[str, Any] = {}


def key(name: str) -> str:
    return f"{settings.METRICS_TALLY_PREFIX}{name}"


def redis_url() -> str | None:
    url = str(settings.CELERY_BROKER_URL or "")
    return url if url.startswith(("redis://", "rediss://", "unix://")) else None


def _client() -> Any | None:
    url = redis_url()
    if url is None:
        return None
    client = _clients.get(url)
    if client is None:
        import redis

        client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        _clients[url] = client
    return client


def dispatches_add(*, campaign: str, count: int) -> None:
    """``count`` rollouts of ``campaign`` were dispatched (after the commit that did it)."""
    if count <= 0:
        return
    client = _client()
    if client is None:
        with _lock:
            table = _memory[DISPATCHES]
            table[campaign] = table.get(campaign, 0) + count
        return
    try:
        client.hincrby(key(DISPATCHES), campaign, count)
    except Exception as exc:  # redis errors and timeouts: the count is lost, the work is not
        logger.warning("could not record %d dispatches of %s: %s", count, campaign, exc)


def events_applied(*, count: int, lag_seconds: float | None, now: float | None = None) -> None:
    """A batch of ``count`` device events was applied; ``lag_seconds`` is how long its oldest
    event waited between the gateway seeing it and its application (None: no event said when)."""
    if count <= 0:
        return
    now = time.time() if now is None else now
    fields: dict[str, Any] = {"last_applied_at": repr(now)}
    if lag_seconds is not None:
        fields["lag_seconds"] = repr(max(0.0, lag_seconds))
    client = _client()
    if client is None:
        with _lock:
            table = _memory[EVENTS]
            table["applied"] = int(table.get("applied", 0)) + count
            table.update(fields)
        return
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(key(EVENTS), "applied", count)
        pipe.hset(key(EVENTS), mapping=fields)
        pipe.execute()
    except Exception as exc:
        logger.warning("could not record %d applied device events: %s", count, exc)


def flag_raise(name: str, *, ttl_seconds: float) -> bool:
    """Raise the shared flag ``name`` unless it is up already: True when this call raised it
    (the caller then does the work the flag stands for), False when it was up. The flag drops
    by itself after ``ttl_seconds`` (its holder may die) or by ``flag_lower``. Without Redis,
    or when Redis cannot be reached, every call raises it (True): the work is done each time
    rather than never."""
    client = _client()
    if client is None:
        return True
    try:
        return bool(client.set(key(name), b"1", nx=True, px=max(1, int(ttl_seconds * 1000))))
    except Exception as exc:
        logger.warning("could not raise the flag %s: %s", name, exc)
        return True


def flag_lower(name: str) -> None:
    """Lower the shared flag ``name`` (the next ``flag_raise`` raises it again)."""
    client = _client()
    if client is None:
        return
    try:
        client.delete(key(name))
    except Exception as exc:
        logger.warning("could not lower the flag %s: %s", name, exc)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value.decode() if isinstance(value, bytes) else value)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def snapshot(*, queues: list[str]) -> Snapshot:
    """Everything in one round trip: the tallies and the length of each Celery queue."""
    client = _client()
    if client is None:
        with _lock:
            dispatches = dict(_memory[DISPATCHES])
            events = dict(_memory[EVENTS])
        return Snapshot(
            dispatches=dispatches,
            events_applied=int(events.get("applied", 0)),
            event_lag_seconds=_number(events.get("lag_seconds")),
            events_last_applied_at=_number(events.get("last_applied_at")),
        )
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(key(DISPATCHES))
        pipe.hgetall(key(EVENTS))
        for queue in queues:
            pipe.llen(queue)
        raw_dispatches, raw_events, *lengths = pipe.execute()
    except Exception as exc:
        logger.warning("metrics: Redis not readable: %s", exc)
        return Snapshot(redis_ok=False)
    events = {_text(k): v for k, v in raw_events.items()}
    return Snapshot(
        dispatches={_text(k): int(v) for k, v in raw_dispatches.items()},
        events_applied=int(events.get("applied", 0)),
        event_lag_seconds=_number(events.get("lag_seconds")),
        events_last_applied_at=_number(events.get("last_applied_at")),
        queue_lengths={q: int(n) for q, n in zip(queues, lengths, strict=True)},
        redis_ok=True,
    )


def reset() -> None:
    """Forget every tally (tests; an operator clearing counters after a test run)."""
    with _lock:
        _memory[DISPATCHES].clear()
        _memory[EVENTS].clear()
    client = _client()
    if client is not None:
        client.delete(key(DISPATCHES), key(EVENTS))
