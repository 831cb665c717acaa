"""An embedded beat: Celery beat's schedule (``CELERY_BEAT_SCHEDULE``) run by a thread of this
process, for the embedded default (no broker, tasks eager) where no ``celery beat`` runs.

``manage.py demo --serve`` starts one so that the campaign it leaves running keeps moving while
the console is served. Each entry's task is sent with ``apply_async`` at its interval, so with a
broker configured it goes to the workers as beat would send it, and without one it runs here.
A task that fails (SQLite's write lock held by the gateway thread, a worker error) is logged and
tried again at its next turn, as beat does: one bad turn never stops the loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import close_old_connections, connections

logger = logging.getLogger(__name__)


@dataclass
class Entry:
    name: str
    task: str
    every: float  # seconds
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    due: float = 0.0  # monotonic time of the next run


def schedule_entries(schedule: Mapping[str, Mapping[str, Any]]) -> list[Entry]:
    """The entries of a beat schedule whose ``schedule`` is a number of seconds or a
    timedelta; anything else (a crontab) is refused by name, not silently skipped."""
    entries = []
    for name, item in schedule.items():
        every = item["schedule"]
        if isinstance(every, dt.timedelta):
            every = every.total_seconds()
        if not isinstance(every, int | float) or every <= 0:
            raise ValueError(f"beat entry {name!r}: the embedded beat runs intervals only")
        entries.append(
            Entry(
                name=name,
                task=item["task"],
                every=float(every),
                args=tuple(item.get("args", ())),
                kwargs=dict(item.get("kwargs", {})),
            )
        )
    return entries


class EmbeddedBeat:
    """``start()`` a daemon thread that sends every due entry, ``stop()`` it (and wait)."""

    def __init__(
        self,
        schedule: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        tick: float = 0.5,
    ) -> None:
        self.entries = schedule_entries(
            settings.CELERY_BEAT_SCHEDULE if schedule is None else schedule
        )
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedded-beat", daemon=True)
        self.runs: dict[str, int] = {e.name: 0 for e in self.entries}
        self.failures: dict[str, int] = {e.name: 0 for e in self.entries}

    def start(self) -> EmbeddedBeat:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for entry in self.entries:
                    if now >= entry.due and not self._stop.is_set():
                        entry.due = now + entry.every
                        self._run_entry(entry)
                self._stop.wait(self._tick)
        finally:
            connections.close_all()  # this thread's own connections

    def _run_entry(self, entry: Entry) -> None:
        try:
            current_app.tasks[entry.task].apply_async(entry.args, entry.kwargs)
            self.runs[entry.name] += 1
        except Exception:  # one bad turn never stops the loop; the next turn tries again
            self.failures[entry.name] += 1
            logger.exception("embedded beat: %s (%s) failed", entry.name, entry.task)
        finally:
            close_old_connections()
