"""The progress chart's geometry (``console.charts``): round ticks, points inside the plot,
steps at the right times."""

from __future__ import annotations

import datetime as dt

import pytest

from console import charts

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "top", "step"),
    [(0, 1, 1), (1, 1, 1), (3, 3, 1), (7, 8, 2), (10, 10, 5), (37, 40, 10), (980, 1000, 500)],
)
def test_the_y_axis_ends_on_a_round_tick_at_or_above_the_largest_value(
    value: int, top: int, step: int
) -> None:
    assert charts.nice_ceiling(value) == (top, step)
    assert top >= value and top % step == 0 and top // step <= 4


@pytest.mark.parametrize(
    ("span", "step"),
    [
        (dt.timedelta(seconds=20), 5),
        (dt.timedelta(minutes=5), 60),
        (dt.timedelta(hours=1), 600),
        (dt.timedelta(hours=5), 3600),
        (dt.timedelta(days=3), 12 * 3600),
        (dt.timedelta(days=40), 7 * 86400),
    ],
)
def test_time_ticks_use_round_steps(span: dt.timedelta, step: int) -> None:
    assert charts.time_step(span) == step


def test_steps_rise_when_devices_finish_and_stay_inside_the_plot() -> None:
    series = [(T0 + dt.timedelta(minutes=10), 3, 0), (T0 + dt.timedelta(minutes=20), 2, 1)]
    ch = charts.progress_chart(series, start=T0, end=T0 + dt.timedelta(minutes=30), total=8)
    assert (ch["succeeded_total"], ch["failed_total"]) == (5, 1)
    ok = [tuple(map(float, p.split(","))) for p in ch["succeeded"].split()]
    # start at 0, up at minute 10, up again at 20, flat to the end
    assert ok[0] == (ch["left"], ch["bottom"])
    assert ok[1][0] == ok[2][0] and ok[2][1] < ok[1][1]
    assert ok[-1][0] == ch["right"] and ok[-1][1] == ok[-2][1]
    for px, py in ok:
        assert ch["left"] <= px <= ch["right"] and ch["top"] <= py <= ch["bottom"]
    assert [t.label for t in ch["y_ticks"]] == ["0", "2", "4", "6"]
    assert [t.label for t in ch["x_ticks"]] == [
        "12:00",
        "12:05",
        "12:10",
        "12:15",
        "12:20",
        "12:25",
        "12:30",
    ]
    assert ch["total_y"] is None  # 8 devices is above the axis top (6): no line drawn off-chart


def test_the_total_line_is_drawn_when_the_axis_reaches_it() -> None:
    series = [(T0 + dt.timedelta(minutes=1), 4, 0)]
    ch = charts.progress_chart(series, start=T0, end=T0 + dt.timedelta(minutes=2), total=4)
    assert ch["total_y"] == ch["top"]


def test_an_empty_campaign_draws_flat_lines_on_a_one_device_axis() -> None:
    ch = charts.progress_chart([], start=T0, end=T0, total=0)
    assert ch["succeeded"] == ch["failed"] == "56.0,180.0 624.0,180.0"
    assert (ch["left"], ch["right"], ch["bottom"]) == (56, 624, 180)
    assert [t.label for t in ch["y_ticks"]] == ["0", "1"]


def test_multi_day_ticks_name_the_day() -> None:
    ch = charts.progress_chart([], start=T0, end=T0 + dt.timedelta(days=3), total=1)
    assert ch["x_ticks"][0].label == "01 12:00"
