"""A device's clock as the registry last read it (/3/0/13 Current Time), in one of four states.
Pure: no Django; the tolerance is a parameter.

Why it matters: a SUIT manifest's use-before time is checked twice, by the server at dispatch
(``manifests.device_rules.check_manifest`` with the server's ``now``) and by the device when it
processes the manifest, against its own clock. The second check is what stops an old, expired
manifest replayed to the device by someone else; it is only as good as the device's clock.

* ``unknown``: no Current Time was ever read (the device has no /3/0/13, or every read of it
  failed). Nothing says the device can judge expiry, so it is treated like ``clockless``.
* ``clockless``: the device reported a time before ``CLOCKLESS_BEFORE`` (2001-01-01 UTC): it
  counts from an epoch, not from a set clock (1970 + uptime on a Zephyr/MCUboot device without
  an RTC; 2000-01-01 + uptime from an RTC chip that lost power). It cannot judge expiry at all.
* ``ok``: a real-looking time within the campaign's ``max_clock_skew`` of the server's.
* ``off``: a real-looking time beyond that tolerance (Wakaama's example client is about 43
  years ahead; an RTC set wrongly is years behind). The device believes a wrong time.

Invariants (tests in ``tests/campaigns/test_clock.py``):

* the state is a function of (reported time, offset, tolerance) only;
* a reported time before the threshold is ``clockless`` whatever the offset or tolerance;
* ``ok`` and ``off`` split exactly at ``|offset| <= max_skew`` (the check the dispatcher
  applied before this module, kept as it was for devices with a real-looking time);
* ``unknown`` only when no time was read; an offset without a reported time (a row read before
  the reported time was stored) is judged by the offset.

Dispatch (``campaigns.checks``): ``ok`` devices judge expiry themselves as well; ``clockless``
and ``unknown`` devices are dispatched under the server's use-before check alone, and the
rollout records it; ``off`` devices are held (refusal ``clock_skew``, pending) unless the
operator has said to proceed for that device (``device clock-trust``).
"""

from __future__ import annotations

import datetime as dt

UNKNOWN = "unknown"
CLOCKLESS = "clockless"
OK = "ok"
OFF = "off"
STATES = (OK, CLOCKLESS, UNKNOWN, OFF)
# States in which only the server's use-before check stands between a device and an expired
# manifest (the device cannot, or was allowed not to, judge expiry itself).
SERVER_TIME_ONLY = frozenset({CLOCKLESS, UNKNOWN, OFF})

# Reported times before this are counts from an epoch, not a set clock: 1970-01-01 (Unix time,
# no RTC) or 2000-01-01 (the reset value of common RTC chips) plus less than a year of uptime.
# No device of a fleet updated today believes it is before 2001 if its clock was ever set.
CLOCKLESS_BEFORE = dt.datetime(2001, 1, 1, tzinfo=dt.UTC).timestamp()


def clock_state(
    *, device_time: float | None, offset_seconds: float | None, max_skew: dt.timedelta
) -> str:
    """The state of a clock that reported ``device_time`` (Unix seconds, None if never read)
    and was ``offset_seconds`` away from the server's clock at that read."""
    if device_time is not None and device_time < CLOCKLESS_BEFORE:
        return CLOCKLESS
    if offset_seconds is None:
        return UNKNOWN
    return OK if abs(offset_seconds) <= max_skew.total_seconds() else OFF


def describe_offset(offset_seconds: float) -> str:
    """``43 years 12 days ahead`` / ``2 h 5 min behind``: how far off a clock is, for people."""
    direction = "ahead" if offset_seconds >= 0 else "behind"
    seconds = round(abs(offset_seconds))
    days, rest = divmod(seconds, 86400)
    years, days = divmod(days, 365)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if years:
        parts.append(f"{years} year{'s' if years != 1 else ''}")
    if days:
        parts.append(f"{days} day{'s' if days != 1 else ''}")
    if not years:
        if hours:
            parts.append(f"{hours} h")
        if minutes:
            parts.append(f"{minutes} min")
        if not days and not hours and (secs or not minutes):
            parts.append(f"{secs} s")
    return f"{' '.join(parts)} {direction}"


def format_reported(device_time: float) -> str:
    """The reported time as UTC text; a device may report a time no calendar holds."""
    try:
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=device_time)
    except OverflowError:
        return f"{device_time:.0f} s after 1970"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"
