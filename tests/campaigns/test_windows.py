"""Maintenance windows: timezone and DST, midnight crossing, tag rules, look-ahead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from campaigns.spec import WindowSpec
from campaigns.windows import applicable_windows, next_window_open, window_open

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = WindowSpec(cron="0 22 * * 1-5", duration=timedelta(hours=6), timezone="Europe/Berlin")
EU_NIGHT = WindowSpec(
    cron="0 22 * * 1-5",
    duration=timedelta(hours=6),
    timezone="Europe/Berlin",
    tags=frozenset({"eu"}),
)
US_MORNING = WindowSpec(
    cron="0 6 * * *",
    duration=timedelta(hours=2),
    timezone="America/New_York",
    tags=frozenset({"us"}),
)
UTC_EARLY = WindowSpec(cron="0 1 * * *", duration=timedelta(hours=4))


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[arg-type, misc]


NO_TAGS: frozenset[str] = frozenset()


def test_no_windows_means_always_open() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert window_open((), now=now, tags=NO_TAGS)
    assert next_window_open((), now=now, tags=NO_TAGS) == now


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (berlin(2030, 1, 7, 21, 59), False),  # Monday, before
        (berlin(2030, 1, 7, 22, 0), True),  # start is inclusive
        (berlin(2030, 1, 7, 23, 59, 59), True),
        (berlin(2030, 1, 8, 0, 0), True),  # crossed midnight
        (berlin(2030, 1, 8, 3, 59, 59), True),
        (berlin(2030, 1, 8, 4, 0), False),  # end is exclusive
        (berlin(2030, 1, 12, 1, 0), True),  # Saturday 01:00 belongs to Friday's window
        (berlin(2030, 1, 12, 22, 30), False),  # no Saturday window
        (berlin(2030, 1, 13, 2, 0), False),
    ],
)
def test_midnight_crossing_window(now: datetime, expected: bool) -> None:
    assert window_open((NIGHT,), now=now, tags=NO_TAGS) is expected
    assert window_open((NIGHT,), now=now.astimezone(UTC), tags=NO_TAGS) is expected


def test_microseconds_do_not_hide_an_open_window() -> None:
    assert window_open((NIGHT,), now=berlin(2030, 1, 7, 22, 0, 0, 500), tags=NO_TAGS)


def test_window_follows_local_time_across_spring_dst() -> None:
    # Berlin switches to CEST on 2030-03-31 (last Sunday of March) at 02:00 -> 03:00.
    friday_before = berlin(2030, 3, 29, 22, 0)  # CET, 21:00 UTC
    monday_after = berlin(2030, 4, 1, 22, 0)  # CEST, 20:00 UTC
    assert friday_before.astimezone(UTC).hour == 21 and monday_after.astimezone(UTC).hour == 20
    assert window_open((NIGHT,), now=monday_after.astimezone(UTC), tags=NO_TAGS)
    assert not window_open(
        (NIGHT,), now=monday_after.astimezone(UTC) - timedelta(seconds=1), tags=NO_TAGS
    )
    nxt = next_window_open((NIGHT,), now=berlin(2030, 3, 30, 12, 0), tags=NO_TAGS)
    assert nxt == datetime(2030, 4, 1, 20, 0, tzinfo=UTC)


def test_duration_is_elapsed_time_across_autumn_dst() -> None:
    # Berlin leaves CEST on 2030-10-27 (last Sunday of October) at 03:00 -> 02:00.
    saturday = WindowSpec(cron="0 22 * * 6", duration=timedelta(hours=6), timezone="Europe/Berlin")
    start = berlin(2030, 10, 26, 22, 0)  # CEST = 20:00 UTC
    end = start.astimezone(UTC) + timedelta(hours=6)  # 02:00 UTC = 03:00 CET wall clock
    assert window_open((saturday,), now=start, tags=NO_TAGS)
    assert window_open((saturday,), now=end - timedelta(seconds=1), tags=NO_TAGS)
    assert not window_open((saturday,), now=end, tags=NO_TAGS)
    assert end.astimezone(BERLIN).hour == 3


def test_window_starting_inside_the_spring_gap_opens_after_it() -> None:
    # 02:30 does not exist on 2030-03-31 in Berlin; the window opens at 03:00 CEST (01:00 UTC).
    gap = WindowSpec(cron="30 2 * * *", duration=timedelta(hours=1), timezone="Europe/Berlin")
    nxt = next_window_open((gap,), now=datetime(2030, 3, 30, 23, 0, tzinfo=UTC), tags=NO_TAGS)
    assert nxt == datetime(2030, 3, 31, 1, 0, tzinfo=UTC)
    assert window_open((gap,), now=datetime(2030, 3, 31, 1, 30, tzinfo=UTC), tags=NO_TAGS)


def test_tagged_windows_take_precedence_over_untagged() -> None:
    windows = (EU_NIGHT, US_MORNING, UTC_EARLY)
    assert applicable_windows(windows, tags={"eu", "beta"}) == (EU_NIGHT,)
    assert applicable_windows(windows, tags={"eu", "us"}) == (EU_NIGHT, US_MORNING)
    assert applicable_windows(windows, tags={"beta"}) == (UTC_EARLY,)
    assert applicable_windows(windows, tags=()) == (UTC_EARLY,)
    # Tuesday 02:00 UTC: the UTC window is open, the Berlin night window too (03:00 CET).
    now = datetime(2030, 1, 8, 2, 0, tzinfo=UTC)
    assert window_open(windows, now=now, tags=frozenset({"beta"}))
    # Tuesday 05:30 UTC: UTC window closed (01-05), Berlin closed (06:30), New York closed.
    later = datetime(2030, 1, 8, 5, 30, tzinfo=UTC)
    assert not window_open(windows, now=later, tags=frozenset({"eu"}))
    assert not window_open(windows, now=later, tags=NO_TAGS)


def test_device_matching_no_window_is_never_dispatched() -> None:
    only_tagged = (EU_NIGHT, US_MORNING)
    now = berlin(2030, 1, 7, 23, 0)
    assert window_open(only_tagged, now=now, tags=frozenset({"eu"}))
    assert not window_open(only_tagged, now=now, tags=frozenset({"asia"}))
    assert next_window_open(only_tagged, now=now, tags=frozenset({"asia"})) is None


def test_next_window_open() -> None:
    # Saturday noon: the next Berlin weeknight window is Monday 22:00 CET = 21:00 UTC.
    now = berlin(2030, 1, 12, 12, 0)
    assert next_window_open((NIGHT,), now=now, tags=NO_TAGS) == datetime(
        2030, 1, 14, 21, tzinfo=UTC
    )
    inside = berlin(2030, 1, 8, 1, 0)
    assert next_window_open((NIGHT,), now=inside, tags=NO_TAGS) == inside
    # The earliest of several applicable windows wins.
    both = (
        EU_NIGHT,
        WindowSpec(cron="0 12 * * 0", duration=timedelta(hours=1), tags=frozenset({"eu"})),
    )
    assert next_window_open(both, now=now, tags=frozenset({"eu"})) == datetime(
        2030, 1, 13, 12, tzinfo=UTC
    )


def test_next_window_beyond_eight_days_is_none() -> None:
    yearly = WindowSpec(cron="0 0 1 1 *", duration=timedelta(hours=1))
    now = datetime(2030, 3, 1, tzinfo=UTC)
    assert next_window_open((yearly,), now=now, tags=NO_TAGS) is None
    near = datetime(2029, 12, 25, tzinfo=UTC)
    assert next_window_open((yearly,), now=near, tags=NO_TAGS) == datetime(2030, 1, 1, tzinfo=UTC)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        window_open((NIGHT,), now=datetime(2030, 1, 1), tags=NO_TAGS)  # noqa: DTZ001
