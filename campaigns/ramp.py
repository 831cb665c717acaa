"""Dispatch rate with an exponential ramp. Pure (no Django); exact integer/Fraction arithmetic.

The rule (also in docs/campaign-spec.md):

* ``steps = (now - started_at) // rate.step`` (0 before the start).
* Healthy (``recent_failure_share < rate.increase_if_failure_rate_below``): the exponent is
  ``steps``. Unhealthy (share >= the threshold): the exponent is frozen at ``last_exponent``, the
  value the caller persisted from its previous evaluation (the last good one; it is never
  raised while unhealthy, and never above ``steps``). A caller that keeps no state passes None and
  gets exponent 0, the base rate: the safe fallback. When health returns the exponent rejoins the
  time schedule (``steps``), so a ramp paused by failures resumes where the clock says.
* ``per_minute = min(max_per_minute, floor(base_per_minute * factor ** exponent))``.
* ``allowed = max(0, per_minute - dispatched_last_minute)``: the dispatches still allowed in the
  current one-minute window.
* No rate in the spec: :data:`UNLIMITED`.
"""

from __future__ import annotations

import math
from datetime import datetime
from fractions import Fraction

from campaigns.spec import RateSpec

UNLIMITED = 10**9


def ramp_exponent(
    rate: RateSpec,
    *,
    started_at: datetime,
    now: datetime,
    recent_failure_share: Fraction,
    last_exponent: int | None = None,
) -> int:
    """The exponent in effect at ``now``; persist it and pass it back as ``last_exponent``."""
    elapsed = now - started_at
    steps = max(0, elapsed // rate.step)
    if recent_failure_share < rate.increase_if_failure_rate_below:
        return _useful(rate, steps)
    if last_exponent is None:
        return 0
    return _useful(rate, min(max(0, last_exponent), steps))


def _useful(rate: RateSpec, exponent: int) -> int:
    """Clamp the exponent at the first one that reaches the cap (keeps the powers small)."""
    if rate.factor == 1 or exponent <= 0:
        return 0
    ratio = Fraction(rate.max_per_minute, rate.base_per_minute)
    # Smallest k with factor**k >= ratio; floats only pick the candidate, Fractions decide.
    k = max(0, math.ceil(math.log(ratio) / math.log(rate.factor)) - 1)
    while rate.factor**k < ratio:
        k += 1
    return min(exponent, k)


def per_minute(rate: RateSpec, exponent: int) -> int:
    """``min(max_per_minute, floor(base * factor ** exponent))``."""
    exponent = _useful(rate, max(0, exponent))
    value = math.floor(rate.base_per_minute * rate.factor**exponent)
    return min(rate.max_per_minute, value)


def allowed_now(
    rate: RateSpec | None,
    *,
    started_at: datetime,
    now: datetime,
    dispatched_last_minute: int,
    recent_failure_share: Fraction,
    last_exponent: int | None = None,
) -> int:
    """How many more devices may be dispatched in the current minute."""
    if rate is None:
        return UNLIMITED
    exponent = ramp_exponent(
        rate,
        started_at=started_at,
        now=now,
        recent_failure_share=recent_failure_share,
        last_exponent=last_exponent,
    )
    return max(0, per_minute(rate, exponent) - dispatched_last_minute)
