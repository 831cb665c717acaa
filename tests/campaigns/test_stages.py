"""Stage assignment and threshold arithmetic (pure)."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.stages import (
    BUCKET_SPACE,
    StageRules,
    StageSize,
    StageTally,
    bucket,
    evaluate_stage,
    stage_bounds,
    stage_counts,
    stage_for,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
CANARY_WAVE_ALL = [
    StageSize("percent", Fraction(5, 100)),
    StageSize("percent", Fraction(25, 100)),
    StageSize("rest"),
]


def test_bucket_is_deterministic_and_salted():
    assert bucket("s1", "dev-1") == bucket("s1", "dev-1")
    assert bucket("s1", "dev-1") != bucket("s2", "dev-1")
    assert 0 <= bucket("s1", "dev-1") < BUCKET_SPACE


@pytest.mark.parametrize(
    ("sizes", "total", "expected"),
    [
        (CANARY_WAVE_ALL, 100, [5, 25, 70]),
        (CANARY_WAVE_ALL, 7, [1, 2, 4]),  # ceil, at least one device in a non-empty stage
        (CANARY_WAVE_ALL, 0, [0, 0, 0]),
        ([StageSize("count", 10), StageSize("rest")], 4, [4, 0]),
        ([StageSize("count", 10), StageSize("percent", Fraction(1, 2))], 100, [10, 50]),
        ([StageSize("percent", Fraction(1, 3)), StageSize("percent", Fraction(2, 3))], 10, [4, 6]),
    ],
    ids=["5-25-rest", "small-cohort-ceil", "empty", "count-exceeds", "count-then-half", "thirds"],
)
def test_stage_counts(sizes, total, expected):
    assert stage_counts(sizes, total) == expected


def test_bounds_cut_the_cohort_at_exact_counts_and_never_reshuffle():
    buckets = [bucket("salt", f"dev-{i}") for i in range(1000)]
    bounds = stage_bounds(CANARY_WAVE_ALL, buckets)
    assigned = [stage_for(b, bounds) for b in buckets]
    assert [assigned.count(i) for i in range(3)] == [50, 250, 700]
    # Devices registering later keep the existing devices' stages untouched...
    later = [bucket("salt", f"late-{i}") for i in range(200)]
    assert [stage_for(b, bounds) for b in buckets] == assigned
    # ...and are never placed before the stage running now.
    assert all((stage_for(b, bounds, current=1) or 0) >= 1 for b in later)


def test_devices_beyond_the_last_stage_belong_to_none():
    buckets = [bucket("s", f"d{i}") for i in range(100)]
    bounds = stage_bounds([StageSize("percent", Fraction(10, 100))], buckets)
    assigned = [stage_for(b, bounds) for b in buckets]
    assert assigned.count(0) == 10 and assigned.count(None) == 90


@given(
    st.lists(st.integers(min_value=0, max_value=BUCKET_SPACE - 1), unique=True, max_size=300),
    st.integers(min_value=1, max_value=60),
    st.integers(min_value=1, max_value=40),
)
def test_assignment_matches_counts_for_any_cohort(buckets, canary_pct, count):
    sizes = [
        StageSize("percent", Fraction(canary_pct, 100)),
        StageSize("count", count),
        StageSize("rest"),
    ]
    bounds = stage_bounds(sizes, buckets)
    assigned = [stage_for(b, bounds) for b in buckets]
    assert [assigned.count(i) for i in range(3)] == stage_counts(sizes, len(buckets))
    assert bounds == sorted(bounds)


def tally(**kw: int) -> StageTally:
    return StageTally(**kw)


@pytest.mark.parametrize(
    ("rules", "t", "action"),
    [
        # 95% of 20 eligible = 19 successes needed
        (
            StageRules(success_threshold=Fraction(95, 100)),
            tally(total=20, succeeded=18, failed=2),
            "fail",
        ),
        (
            StageRules(success_threshold=Fraction(95, 100), failure_threshold=Fraction(1, 5)),
            tally(total=20, succeeded=18, failed=1, pending=1),
            "wait",
        ),
        (
            StageRules(success_threshold=Fraction(95, 100), failure_threshold=Fraction(1, 5)),
            tally(total=20, succeeded=19, failed=1),
            "advance",
        ),
        # skipped devices leave the denominator
        (StageRules(), tally(total=10, succeeded=8, skipped=2), "advance"),
        # failure threshold applies only after min_finished devices finished
        (
            StageRules(failure_threshold=Fraction(1, 10), min_finished=5),
            tally(total=10, failed=2, in_flight=8),
            "wait",
        ),
        (
            StageRules(failure_threshold=Fraction(1, 10), min_finished=5),
            tally(total=10, failed=2, succeeded=3, in_flight=5),
            "fail",
        ),
        # exactly at the threshold trips it (>=)
        (
            StageRules(failure_threshold=Fraction(1, 4), min_finished=4),
            tally(total=8, failed=1, succeeded=3, pending=4),
            "fail",
        ),
        # timed out devices count as failures; unreachable ones are apart (not finished)
        (
            StageRules(failure_threshold=Fraction(1, 2), min_finished=2),
            tally(total=4, timed_out=1, succeeded=1, unreachable=2),
            "fail",
        ),
        (
            StageRules(
                success_threshold=Fraction(1, 2), failure_threshold=Fraction(1, 2), min_finished=3
            ),
            tally(total=4, succeeded=2, unreachable=2),
            "advance",
        ),
        # in-flight work holds the stage even when the share is reached
        (
            StageRules(success_threshold=Fraction(1, 2)),
            tally(total=4, succeeded=2, in_flight=2),
            "wait",
        ),
        (StageRules(gate="security"), tally(total=2, succeeded=2), "gate"),
    ],
    ids=[
        "below-success-with-default-failure",
        "not-yet",
        "exact-success",
        "skipped-excluded",
        "min-finished-not-reached",
        "min-finished-reached",
        "failure-at-threshold",
        "timed-out-is-failure",
        "unreachable-apart",
        "in-flight-holds",
        "gate",
    ],
)
def test_stage_decisions(rules, t, action):
    decision = evaluate_stage(rules, t, now=NOW, success_since=None, gate_approved=False)
    assert decision.action == action, decision.reason


def test_soak_waits_from_the_moment_success_was_reached():
    rules = StageRules(soak=dt.timedelta(minutes=10))
    done = tally(total=3, succeeded=3)
    assert (
        evaluate_stage(rules, done, now=NOW, success_since=None, gate_approved=False).action
        == "soak"
    )
    since = NOW - dt.timedelta(minutes=9)
    assert (
        evaluate_stage(rules, done, now=NOW, success_since=since, gate_approved=False).action
        == "soak"
    )
    since = NOW - dt.timedelta(minutes=10)
    assert (
        evaluate_stage(rules, done, now=NOW, success_since=since, gate_approved=False).action
        == "advance"
    )


def test_gate_approval_lets_the_stage_advance():
    rules = StageRules(gate="qa")
    done = tally(total=1, succeeded=1)
    assert (
        evaluate_stage(rules, done, now=NOW, success_since=NOW, gate_approved=True).action
        == "advance"
    )
