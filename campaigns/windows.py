"""Maintenance windows: may a device be dispatched to now, and when next? Pure (no Django).

Rules (also in docs/campaign-spec.md):

* No windows in the spec: always open.
* Which windows apply to a device: the tagged windows sharing at least one tag with the device;
  if none of those match, the untagged windows; if there are none either, the device has no
  window and is never dispatched (the planner should report it).
* A window opens at each time its cron expression fires, read as wall-clock time in the window's
  timezone (cronsim does the local-time iteration: a start that falls into the spring-forward gap
  moves to the first minute after it; an ambiguous autumn time fires once, on its first
  occurrence), and stays open for ``duration`` of *elapsed* time, so a 6h window that spans a DST
  change is 6 real hours long (it ends an hour later or earlier on the wall clock).
* Open means ``start <= now < start + duration``; a window that started before ``now`` counts,
  which is why the search looks back from ``now`` (every duration is at most 7 days).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from cronsim import CronSim

from campaigns.spec import WindowSpec

# How far ahead next_window_open looks: a weekly window always has an opening inside it.
LOOKAHEAD = timedelta(days=8)


def applicable_windows(
    windows: Sequence[WindowSpec], *, tags: Iterable[str]
) -> tuple[WindowSpec, ...]:
    """The windows that govern a device with ``tags`` (see the module rules)."""
    device_tags = frozenset(tags)
    tagged = tuple(w for w in windows if w.tags and w.tags & device_tags)
    if tagged:
        return tagged
    return tuple(w for w in windows if not w.tags)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def _last_start(window: WindowSpec, now: datetime) -> datetime | None:
    """The latest cron start at or before ``now`` (aware, UTC), or None if there is none."""
    local = now.astimezone(window.zone).replace(microsecond=0) + timedelta(seconds=1)
    # cronsim steps one second back before matching, so starting 1 s past now includes now.
    try:
        start = next(CronSim(window.cron, local, reverse=True))
    except StopIteration:
        return None
    return start.astimezone(UTC)


def _next_start(window: WindowSpec, now: datetime) -> datetime | None:
    """The first cron start strictly after ``now`` (aware, UTC), or None."""
    local = now.astimezone(window.zone)
    try:
        start = next(CronSim(window.cron, local))
    except StopIteration:
        return None
    return start.astimezone(UTC)


def _open_in(window: WindowSpec, now: datetime) -> bool:
    start = _last_start(window, now)
    # The latest start has the latest end: all openings of one window last the same time.
    return start is not None and start <= now < start + window.duration


def window_open(windows: Sequence[WindowSpec], *, now: datetime, tags: frozenset[str]) -> bool:
    """May a device with ``tags`` be dispatched to at ``now`` (aware)?"""
    _require_aware(now)
    if not windows:
        return True
    return any(_open_in(w, now) for w in applicable_windows(windows, tags=tags))


def next_window_open(
    windows: Sequence[WindowSpec], *, now: datetime, tags: frozenset[str]
) -> datetime | None:
    """When a device with ``tags`` may next be dispatched to: ``now`` if a window is open, else
    the next opening (aware, UTC) within :data:`LOOKAHEAD`, else None (no window applies, or none
    opens in time)."""
    _require_aware(now)
    if not windows:
        return now
    governing = applicable_windows(windows, tags=tags)
    if any(_open_in(w, now) for w in governing):
        return now
    starts = [s for s in (_next_start(w, now) for w in governing) if s is not None]
    if not starts:
        return None
    first = min(starts)
    return first if first - now <= LOOKAHEAD else None
