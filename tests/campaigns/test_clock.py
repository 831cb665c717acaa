"""Clock states (``campaigns.clock``, pure) and the dispatch check on top of them
(``campaigns.checks``): a device without a clock is dispatched under the server's use-before check
alone, a device whose clock is off is held until an operator accepts it."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from campaigns import checks, clock
from tests.campaigns.test_checks import DEVICE, MANIFEST, NOW, run

SKEW = dt.timedelta(minutes=5)
YEAR = 365.25 * 86400
SERVER = NOW.timestamp()


def state(device_time: float | None, *, server: float = SERVER) -> str:
    offset = None if device_time is None else device_time - server
    return clock.clock_state(device_time=device_time, offset_seconds=offset, max_skew=SKEW)


@pytest.mark.parametrize(
    ("device_time", "expected"),
    [
        pytest.param(0.0, clock.CLOCKLESS, id="time-zero"),
        pytest.param(3 * 86400 + 17.0, clock.CLOCKLESS, id="1970-plus-uptime"),
        pytest.param(946684800.0 + 3600, clock.CLOCKLESS, id="rtc-reset-2000-plus-uptime"),
        pytest.param(-5.0, clock.CLOCKLESS, id="before-1970"),
        pytest.param(None, clock.UNKNOWN, id="no-current-time-read"),
        pytest.param(SERVER + 1.5, clock.OK, id="a-good-clock"),
        pytest.param(SERVER - 300.0, clock.OK, id="at-the-tolerance"),
        pytest.param(SERVER + 300.5, clock.OFF, id="just-beyond-it"),
        pytest.param(SERVER + 43 * YEAR, clock.OFF, id="wakaama-43-years-ahead"),
        pytest.param(SERVER - 2 * YEAR, clock.OFF, id="two-years-behind"),
        pytest.param(2.0**62, clock.OFF, id="any-64-bit-time"),
    ],
)
def test_a_clock_is_told_apart_by_the_time_it_reports(
    device_time: float | None, expected: str
) -> None:
    assert state(device_time) == expected


def test_an_offset_without_a_reported_time_is_judged_by_the_offset() -> None:
    # A reading stored before the reported time was kept: as the dispatcher judged it before.
    assert clock.clock_state(device_time=None, offset_seconds=2.0, max_skew=SKEW) == clock.OK
    assert clock.clock_state(device_time=None, offset_seconds=-7200, max_skew=SKEW) == clock.OFF


def test_offsets_are_described_for_people() -> None:
    assert clock.describe_offset(43 * 365 * 86400 + 12 * 86400) == "43 years 12 days ahead"
    assert clock.describe_offset(-(2 * 3600 + 5 * 60)) == "2 h 5 min behind"
    assert clock.describe_offset(0.4) == "0 s ahead"
    assert clock.format_reported(0.0) == "1970-01-01 00:00:00 UTC"
    assert clock.format_reported(2.0**62).endswith("s after 1970")


def _device(device_time: float | None, *, trusted: bool = False) -> checks.DeviceFacts:
    offset = None if device_time is None else device_time - SERVER
    return dataclasses.replace(
        DEVICE, device_time=device_time, clock_offset_seconds=offset, clock_trusted=trusted
    )


@pytest.mark.parametrize(
    "device_time", [0.0, 3 * 86400 + 17.0, None], ids=["time-zero", "1970-uptime", "no-time"]
)
def test_a_device_without_a_clock_passes_the_dispatch_check(device_time: float | None) -> None:
    assert run(device=_device(device_time)) is None


@pytest.mark.parametrize(
    "device_time", [0.0, 3 * 86400 + 17.0, None], ids=["time-zero", "1970-uptime", "no-time"]
)
def test_an_expired_release_is_refused_for_a_device_without_a_clock(
    device_time: float | None,
) -> None:
    expired = dataclasses.replace(MANIFEST, use_before=NOW - dt.timedelta(seconds=1))
    refusal = run(manifest=expired, device=_device(device_time))
    assert refusal is not None and refusal.reason == checks.EXPIRED


def test_a_clock_off_by_43_years_is_held_with_the_way_to_proceed() -> None:
    refusal = run(device=_device(SERVER + 43 * YEAR))
    assert refusal is not None and refusal.reason == checks.CLOCK_SKEW
    assert "43 years" in refusal.message and "ahead" in refusal.message
    assert "clock-trust" in refusal.message
    assert checks.CLOCK_SKEW in checks.TRANSIENT_REASONS


def test_an_accepted_clock_that_is_off_passes_but_expiry_still_holds() -> None:
    off = _device(SERVER - 2 * YEAR, trusted=True)
    assert run(device=off) is None
    expired = dataclasses.replace(MANIFEST, use_before=NOW - dt.timedelta(seconds=1))
    refusal = run(manifest=expired, device=off)
    assert refusal is not None and refusal.reason == checks.EXPIRED
