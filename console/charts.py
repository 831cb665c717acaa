"""Server-rendered SVG charts: the geometry of a cumulative progress chart with a time axis and a
device-count axis, with ticks at round values. No JavaScript library: the template draws what
this returns.

Pure: no Django import; time is passed in (``end``), never read here. Invariants: every point
lies inside the plot area; x grows with time; the y axis starts at 0 and its top tick is at or
above every value drawn, so a line never leaves the chart.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

# Time steps a tick may use, in seconds: round minutes, hours and days.
TIME_STEPS = (
    1,
    5,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    7 * 86400,
    30 * 86400,
)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 12, 40


@dataclass(frozen=True)
class Tick:
    at: float  # pixel position along its axis
    label: str


def nice_ceiling(value: int, *, ticks: int = 4) -> tuple[int, int]:
    """(top, step): the smallest top >= ``value`` made of ``ticks`` or fewer steps of 1, 2 or 5
    times a power of ten (at least 1 device)."""
    value = max(1, value)
    raw = value / ticks
    power = 10 ** max(0, math.floor(math.log10(raw))) if raw >= 1 else 1
    for factor in (1, 2, 5, 10):
        step = max(1, factor * power)
        if step * ticks >= value:
            return step * math.ceil(value / step), step
    return value, value  # pragma: no cover - factor 10 always fits


def time_step(span: dt.timedelta, *, ticks: int = 6) -> int:
    """The smallest round step (seconds) that puts at most ``ticks`` ticks on ``span``."""
    seconds = max(1.0, span.total_seconds())
    for step in TIME_STEPS:
        if seconds / step <= ticks:
            return step
    return TIME_STEPS[-1] * math.ceil(seconds / (TIME_STEPS[-1] * ticks))


def _time_label(at: dt.datetime, step: int, *, multi_day: bool) -> str:
    if step >= 86400:
        return at.strftime("%b %d")
    if multi_day:
        return at.strftime("%d %H:%M")
    return at.strftime("%H:%M:%S" if step < 60 else "%H:%M")


def progress_chart(
    series: list[tuple[dt.datetime, int, int]],
    *,
    start: dt.datetime,
    end: dt.datetime,
    total: int,
    width: int = 640,
    height: int = 220,
) -> dict[str, Any]:
    """A cumulative step chart of succeeded and failed devices over [start, end].

    ``series`` holds (time, succeeded, failed) increments in time order (e.g. per minute);
    ``total`` is the number of devices the campaign can still update, drawn as a dashed line
    when the axis reaches it. Returns the plot frame, polyline points, ticks and labels."""
    end = max(end, start + dt.timedelta(seconds=1))
    span = end - start
    ok_total = sum(ok for _, ok, _ in series)
    bad_total = sum(bad for _, _, bad in series)
    top, y_step = nice_ceiling(max(ok_total, bad_total, 1))
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    plot_top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM

    def x(at: dt.datetime) -> float:
        share = (min(max(at, start), end) - start) / span
        return round(left + (right - left) * share, 1)

    def y(n: int) -> float:
        return round(bottom - (bottom - plot_top) * n / top, 1)

    ok_points = [(x(start), y(0))]
    bad_points = [(x(start), y(0))]
    ok = bad = 0
    for at, d_ok, d_bad in series:
        if d_ok:
            ok_points += [(x(at), y(ok)), (x(at), y(ok + d_ok))]
            ok += d_ok
        if d_bad:
            bad_points += [(x(at), y(bad)), (x(at), y(bad + d_bad))]
            bad += d_bad
    ok_points.append((x(end), y(ok)))
    bad_points.append((x(end), y(bad)))

    step = time_step(span)
    multi_day = start.date() != end.date()
    first = start.timestamp() - start.timestamp() % step + (step if start.timestamp() % step else 0)
    x_ticks = []
    t = first
    while t <= end.timestamp():
        at = dt.datetime.fromtimestamp(t, tz=start.tzinfo or dt.UTC)
        x_ticks.append(Tick(x(at), _time_label(at, step, multi_day=multi_day)))
        t += step
    y_ticks = [Tick(y(n), f"{n:,}") for n in range(0, top + 1, y_step)]

    def fmt(points: list[tuple[float, float]]) -> str:
        return " ".join(f"{px},{py}" for px, py in points)

    return {
        "width": width,
        "height": height,
        "left": left,
        "right": right,
        "top": plot_top,
        "bottom": bottom,
        "succeeded": fmt(ok_points),
        "failed": fmt(bad_points),
        "succeeded_total": ok,
        "failed_total": bad,
        "total": total,
        "total_y": y(total) if 0 < total <= top else None,
        "x_ticks": x_ticks,
        "y_ticks": y_ticks,
        "x_label_y": height - 6,
        "y_label_x": 14,
        "middle_y": round((plot_top + bottom) / 2, 1),
        "middle_x": round((left + right) / 2, 1),
        "start": start,
        "end": end,
    }
