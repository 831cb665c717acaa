"""Exponential dispatch ramp: exact arithmetic, freeze on failures, cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from campaigns.ramp import UNLIMITED, allowed_now, per_minute, ramp_exponent
from campaigns.spec import RateSpec

T0 = datetime(2030, 1, 1, tzinfo=UTC)
RATE = RateSpec(
    base_per_minute=10,
    factor=Fraction(2),
    step=timedelta(minutes=5),
    max_per_minute=1000,
    increase_if_failure_rate_below=Fraction(5, 100),
)
HEALTHY = Fraction(0)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        (0, 10),
        (4.99, 10),
        (5, 20),
        (10, 40),
        (29, 320),
        (30, 640),
        (35, 1000),  # 1280 capped at max_per_minute
        (60 * 24 * 365, 1000),  # a year later: still the cap, no huge powers
    ],
)
def test_ramp_doubles_every_step_up_to_the_cap(minutes: float, expected: int) -> None:
    got = allowed_now(
        RATE, started_at=T0, now=at(minutes), dispatched_last_minute=0, recent_failure_share=HEALTHY
    )
    assert got == expected


def test_dispatched_in_the_last_minute_are_subtracted() -> None:
    kwargs = {"started_at": T0, "now": at(10), "recent_failure_share": HEALTHY}
    assert allowed_now(RATE, dispatched_last_minute=15, **kwargs) == 25  # type: ignore[arg-type]
    assert allowed_now(RATE, dispatched_last_minute=40, **kwargs) == 0  # type: ignore[arg-type]
    assert allowed_now(RATE, dispatched_last_minute=90, **kwargs) == 0  # type: ignore[arg-type]


def test_before_start_is_base_rate() -> None:
    assert ramp_exponent(RATE, started_at=T0, now=at(-10), recent_failure_share=HEALTHY) == 0


def test_failures_freeze_the_exponent_at_the_last_good_step() -> None:
    bad = Fraction(5, 100)  # at the threshold: "below" is strict, so this freezes
    # Healthy until minute 12: exponent 2 (40/min) is persisted by the caller.
    good = ramp_exponent(RATE, started_at=T0, now=at(12), recent_failure_share=Fraction(4, 100))
    assert good == 2
    frozen = ramp_exponent(
        RATE, started_at=T0, now=at(27), recent_failure_share=bad, last_exponent=good
    )
    assert frozen == 2
    assert (
        allowed_now(
            RATE,
            started_at=T0,
            now=at(27),
            dispatched_last_minute=0,
            recent_failure_share=bad,
            last_exponent=good,
        )
        == 40
    )
    # Health returns: the exponent rejoins the schedule (27 min // 5 = 5 -> 320/min).
    assert (
        ramp_exponent(
            RATE, started_at=T0, now=at(27), recent_failure_share=HEALTHY, last_exponent=2
        )
        == 5
    )


def test_frozen_exponent_never_exceeds_the_schedule() -> None:
    assert (
        ramp_exponent(
            RATE, started_at=T0, now=at(6), recent_failure_share=Fraction(1), last_exponent=9
        )
        == 1
    )


def test_without_state_failures_fall_back_to_base_rate() -> None:
    got = allowed_now(
        RATE,
        started_at=T0,
        now=at(30),
        dispatched_last_minute=0,
        recent_failure_share=Fraction(1, 2),
    )
    assert got == 10


def test_default_criteria_only_freezes_when_everything_failed() -> None:
    rate = RateSpec(base_per_minute=1, factor=Fraction(3), max_per_minute=100)
    assert (
        ramp_exponent(rate, started_at=T0, now=at(10), recent_failure_share=Fraction(99, 100)) == 2
    )
    assert ramp_exponent(rate, started_at=T0, now=at(10), recent_failure_share=Fraction(1)) == 0


def test_fractional_factor_is_floored_exactly() -> None:
    rate = RateSpec(base_per_minute=10, factor=Fraction(3, 2), max_per_minute=100)
    assert [per_minute(rate, k) for k in range(7)] == [10, 15, 22, 33, 50, 75, 100]


def test_constant_rate() -> None:
    rate = RateSpec(base_per_minute=7, max_per_minute=7)
    assert per_minute(rate, 50) == 7
    got = allowed_now(
        rate, started_at=T0, now=at(500), dispatched_last_minute=2, recent_failure_share=HEALTHY
    )
    assert got == 5


def test_no_rate_is_unlimited() -> None:
    got = allowed_now(
        None,
        started_at=T0,
        now=at(1),
        dispatched_last_minute=10**6,
        recent_failure_share=Fraction(1),
    )
    assert got == UNLIMITED


def test_small_factor_reaches_the_cap_exactly() -> None:
    rate = RateSpec(base_per_minute=1, factor=Fraction(101, 100), max_per_minute=1_000_000)
    exponent = ramp_exponent(rate, started_at=T0, now=at(10**7), recent_failure_share=HEALTHY)
    assert rate.factor ** (exponent - 1) < 10**6 <= rate.factor**exponent
    assert per_minute(rate, exponent) == 1_000_000
