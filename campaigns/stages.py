"""Stage arithmetic, as pure functions.

Assignment. Every device gets a 64-bit bucket ``H(salt, endpoint)`` (first 8 bytes of SHA-256,
big-endian). At plan time the cohort is ordered by bucket and cut at exact counts: a ``count``
stage takes that many devices, a ``percent`` stage takes ``ceil(p * N)`` of the N planned devices
(at least one while devices remain), a ``rest`` stage takes everything left. Each cut is
recorded as the bucket value where the stage ends (``upper``), so the assignment of any device —
planned now or registering later — is a pure function of its bucket and the stored bounds:
replanning never reshuffles. A device that joins after its stage has already started or
finished is placed in the stage running now (``max(assigned, current)``).

Thresholds (exact rational arithmetic, no rounding except where stated):
- ``eligible`` = stage devices not skipped and not cancelled;
- ``finished`` = succeeded + failed + timed_out (unreachable devices are reported apart and are
  not finished);
- success: succeeded ≥ ceil(success_threshold * eligible);
- failure: once finished ≥ min_finished, (failed + timed_out) / finished ≥ failure_threshold
  (the threshold is reached, not exceeded; 100%, the default, disables it; a threshold of 0%
  still needs at least one failure);
- evaluated at every reconcile pass, after the pass's events are applied.
A stage is done when success holds, nothing is in flight or waiting, and its soak time has
passed since success was first reached; then it waits for its gate (if any) and advances.
Failure is checked before success, so a stage that trips its failure threshold pauses or aborts
even if it could also reach its success share. A stage whose devices are all finished (or
unreachable) without reaching the success share fails too: it must not wait forever.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

BUCKET_SPACE = 1 << 64


def bucket(salt: str, endpoint: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{endpoint}".encode()).digest()[:8], "big")


@dataclass(frozen=True)
class StageSize:
    kind: str  # "percent" | "count" | "rest"
    value: Fraction | int | None = None


def stage_counts(sizes: Sequence[StageSize], total: int) -> list[int]:
    """How many of ``total`` planned devices each stage takes (sums to at most ``total``)."""
    counts: list[int] = []
    left = total
    for size in sizes:
        if size.kind == "rest":
            take = left
        elif size.kind == "count":
            take = min(int(size.value or 0), left)
        else:
            share = Fraction(size.value or 0)
            take = min(max(1, math.ceil(share * total)) if share > 0 and left else 0, left)
        counts.append(take)
        left -= take
    return counts


def stage_bounds(sizes: Sequence[StageSize], buckets: Sequence[int]) -> list[int]:
    """Upper bucket bound (exclusive) of each stage for a cohort with these buckets.

    A ``rest`` stage, and every stage from the one that exhausts the cohort on, ends at
    BUCKET_SPACE; when the sizes do not cover the whole cohort, devices past the last cut belong
    to no stage (they are excluded as ``not_in_any_stage``)."""
    ordered = sorted(buckets)
    bounds: list[int] = []
    taken = 0
    for size, take in zip(sizes, stage_counts(sizes, len(ordered)), strict=True):
        taken += take
        exhausted = size.kind == "rest" or taken >= len(ordered)
        bounds.append(BUCKET_SPACE if exhausted else ordered[taken])
    return bounds


def stage_for(device_bucket: int, bounds: Sequence[int], *, current: int = 0) -> int | None:
    """Stage index for a bucket, never earlier than ``current``; None if beyond every stage."""
    for index, upper in enumerate(bounds):
        if device_bucket < upper:
            return max(index, current)
    return None


@dataclass(frozen=True)
class StageTally:
    total: int = 0
    pending: int = 0  # assigned, not yet dispatched (incl. waiting for a retry)
    in_flight: int = 0  # queued, dispatched, downloading, downloaded, updating
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    unreachable: int = 0
    skipped: int = 0
    cancelled: int = 0

    @property
    def eligible(self) -> int:
        return self.total - self.skipped - self.cancelled

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.timed_out

    @property
    def failures(self) -> int:
        return self.failed + self.timed_out


@dataclass(frozen=True)
class StageRules:
    success_threshold: Fraction = Fraction(1)
    failure_threshold: Fraction = Fraction(1)
    min_finished: int = 1
    soak: dt.timedelta = dt.timedelta(0)
    failure_action: str = "pause"  # pause | abort
    gate: str | None = None


@dataclass(frozen=True)
class StageDecision:
    action: str  # "fail" | "wait" | "soak" | "gate" | "advance"
    reason: str
    success_reached: bool = False


def required_successes(rules: StageRules, tally: StageTally) -> int:
    return math.ceil(rules.success_threshold * tally.eligible)


def failure_tripped(rules: StageRules, tally: StageTally) -> bool:
    if rules.failure_threshold >= 1:
        return False  # 100% (the default) disables the failure threshold
    if tally.finished < rules.min_finished or tally.failures == 0:
        return False
    return Fraction(tally.failures, tally.finished) >= rules.failure_threshold


def evaluate_stage(
    rules: StageRules,
    tally: StageTally,
    *,
    now: dt.datetime,
    success_since: dt.datetime | None,
    gate_approved: bool,
) -> StageDecision:
    if failure_tripped(rules, tally):
        share = Fraction(tally.failures, tally.finished)
        return StageDecision(
            "fail",
            f"failure share {tally.failures}/{tally.finished} ({float(share):.1%}) reached the "
            f"threshold {float(rules.failure_threshold):.1%} after {tally.finished} finished",
        )
    need = required_successes(rules, tally)
    reached = tally.succeeded >= need
    if not reached and not (tally.pending or tally.in_flight):
        return StageDecision(
            "fail",
            f"success threshold can no longer be reached: {tally.succeeded}/{tally.eligible} "
            f"succeeded, {need} needed, nothing left to try ({tally.failures} failed, "
            f"{tally.unreachable} unreachable)",
        )
    if not reached:
        return StageDecision("wait", f"{tally.succeeded}/{tally.eligible} succeeded, {need} needed")
    if tally.pending or tally.in_flight:
        return StageDecision(
            "wait",
            f"success share reached; {tally.pending} pending and {tally.in_flight} in flight",
            success_reached=True,
        )
    since = success_since or now
    if now < since + rules.soak:
        return StageDecision(
            "soak", f"soaking until {(since + rules.soak).isoformat()}", success_reached=True
        )
    if rules.gate and not gate_approved:
        return StageDecision("gate", f"waiting for a {rules.gate} approval", success_reached=True)
    return StageDecision("advance", "stage complete", success_reached=True)
