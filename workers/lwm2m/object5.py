"""Firmware Update Object (/5) state machine, LwM2M 1.1 (pure: no I/O, no clock).

Two views of the same machine:

* :class:`DeviceFirmwareObject` is the client side (the simulator uses it): State /5/0/3
  (0 Idle, 1 Downloading, 2 Downloaded, 3 Updating) and Update Result /5/0/5 (0..11) change only
  through the transitions LwM2M 1.1 defines, and anything else raises
  :class:`Object5TransitionError` (the client "SHOULD reject" undefined operations).
* :class:`UpdateTracker` is the server side: it folds State/Result reports (observe
  notifications and polls, which may arrive late, twice or out of order) into a monotonic
  progress of one update attempt. Invariants: progress never moves backwards; a terminal outcome
  (succeeded, failed, cancelled) is final; a report is judged by the observe sequence number
  (RFC 7641 section 3.4 freshness) when it has one, and by phase rank otherwise.

Update failure: LwM2M clients differ on where Updating goes on failure (Idle or Downloaded, both
with Result 8). The device model here goes to Idle (an MCUboot revert leaves no staged package);
the tracker accepts either. A client that checks the staged package only at Update reports an
integrity failure from Updating (Idle, Result 5), as Zephyr's client does; the tracker counts
that as the attempt's failure too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from workers.lwm2m.errors import Object5TransitionError


class FwState(enum.IntEnum):
    IDLE = 0
    DOWNLOADING = 1
    DOWNLOADED = 2
    UPDATING = 3


# Package Name (/5/0/6) a device of this product's convention reports after refusing a delta
# whose base is not its running image, beside Update Result 6 (docs/lwm2m.md, "Delta updates
# on simulated devices"). Object 5 has no Result for it; a client that does not follow the
# convention reports Result 6 alone, which stays "unsupported_package".
WRONG_PRECURSOR_PKG_NAME = "fwupd:wrong-precursor"
PKG_NAME_PATH = (5, 0, 6)


class FwResult(enum.IntEnum):
    INITIAL = 0
    SUCCESS = 1
    NOT_ENOUGH_FLASH = 2
    OUT_OF_RAM = 3
    CONNECTION_LOST = 4
    INTEGRITY_CHECK_FAILURE = 5
    UNSUPPORTED_PACKAGE_TYPE = 6
    INVALID_URI = 7
    UPDATE_FAILED = 8
    UNSUPPORTED_PROTOCOL = 9
    CANCELLED = 10
    DEFERRED = 11


class Protocol(enum.IntEnum):
    """Firmware Update Protocol Support (/5/0/8) values and their URI schemes."""

    COAP = 0
    COAPS = 1
    HTTP = 2
    HTTPS = 3
    COAP_TCP = 4
    COAP_TLS = 5


class DeliveryMethod(enum.IntEnum):
    """Firmware Update Delivery Method (/5/0/9): which of Package URI (pull) and Package (push)
    the client takes."""

    PULL = 0
    PUSH = 1
    BOTH = 2


PROTOCOL_SCHEMES: dict[int, str] = {
    Protocol.COAP: "coap",
    Protocol.COAPS: "coaps",
    Protocol.HTTP: "http",
    Protocol.HTTPS: "https",
    Protocol.COAP_TCP: "coap+tcp",
    Protocol.COAP_TLS: "coaps+tcp",
}

# Results that end a download attempt in Idle.
DOWNLOAD_FAILURES = frozenset(
    {
        FwResult.NOT_ENOUGH_FLASH,
        FwResult.OUT_OF_RAM,
        FwResult.CONNECTION_LOST,
        FwResult.INTEGRITY_CHECK_FAILURE,
        FwResult.UNSUPPORTED_PACKAGE_TYPE,
        FwResult.INVALID_URI,
        FwResult.UNSUPPORTED_PROTOCOL,
    }
)


@dataclass
class DeviceFirmwareObject:
    """Client-side Object 5 instance; every method is one transition of the LwM2M 1.1 figure."""

    state: FwState = FwState.IDLE
    result: FwResult = FwResult.INITIAL
    package_uri: str = ""

    def _require(self, *allowed: FwState, op: str) -> None:
        if self.state not in allowed:
            raise Object5TransitionError(f"{op} is not allowed in state {self.state.name}")

    def write_uri(self, uri: str) -> None:
        """Write /5/0/1: a URI starts a download from Idle; an empty URI resets to Idle."""
        if uri == "":
            self.reset()
            return
        self._require(FwState.IDLE, op="write package URI")
        self.state, self.result, self.package_uri = FwState.DOWNLOADING, FwResult.INITIAL, uri

    def reset(self) -> None:
        """An empty Package URI or an empty (or NULL) Package: Idle, Result 0, from any state.

        The Package and Package URI definitions put no condition on the state; in Updating the
        device abandons the install if it has not rebooted into it yet.
        """
        self.state, self.result, self.package_uri = FwState.IDLE, FwResult.INITIAL, ""

    def start_push(self) -> None:
        """The first block of a Package (/5/0/0) write: Idle to Downloading, no URI."""
        self._require(FwState.IDLE, op="write package")
        self.state, self.result, self.package_uri = FwState.DOWNLOADING, FwResult.INITIAL, ""

    def reject_uri(self, result: FwResult) -> None:
        """The URI is unusable (bad scheme/syntax) before any download: Idle with a result."""
        if result not in (FwResult.INVALID_URI, FwResult.UNSUPPORTED_PROTOCOL):
            raise Object5TransitionError(f"{result.name} is not a URI rejection")
        self._require(FwState.IDLE, FwState.DOWNLOADING, op="reject URI")
        self.state, self.result = FwState.IDLE, result

    def download_succeeded(self) -> None:
        self._require(FwState.DOWNLOADING, op="download complete")
        self.state = FwState.DOWNLOADED

    def download_failed(self, result: FwResult) -> None:
        if result not in DOWNLOAD_FAILURES:
            raise Object5TransitionError(f"{result.name} is not a download failure")
        self._require(FwState.DOWNLOADING, op="download failure")
        self.state, self.result = FwState.IDLE, result

    def execute_update(self) -> None:
        """Execute /5/0/2: only in Downloaded."""
        self._require(FwState.DOWNLOADED, op="execute Update")
        self.state = FwState.UPDATING

    def update_succeeded(self) -> None:
        self._require(FwState.UPDATING, op="update success")
        self.state, self.result, self.package_uri = FwState.IDLE, FwResult.SUCCESS, ""

    def update_failed(
        self, *, keep_package: bool = False, result: FwResult = FwResult.UPDATE_FAILED
    ) -> None:
        """Updating ends without the new firmware: Result 8, or 5 when the device's own check of
        the staged package failed at Update (Zephyr's client reports that from Updating)."""
        if result not in (FwResult.UPDATE_FAILED, FwResult.INTEGRITY_CHECK_FAILURE):
            raise Object5TransitionError(f"{result.name} is not an update failure")
        self._require(FwState.UPDATING, op="update failure")
        self.state = FwState.DOWNLOADED if keep_package else FwState.IDLE
        self.result = result
        if not keep_package:
            self.package_uri = ""

    def cancel(self) -> None:
        """Execute /5/0/10 (1.1): abandons a download or a staged package."""
        self._require(FwState.DOWNLOADING, FwState.DOWNLOADED, op="cancel")
        self.state, self.result, self.package_uri = FwState.IDLE, FwResult.CANCELLED, ""


# --- server side ------------------------------------------------------------------------------


class Phase(enum.IntEnum):
    """Server-side progress of one update attempt, ordered: it only moves up."""

    NOT_STARTED = 0
    URI_WRITTEN = 1
    DOWNLOADING = 2
    DOWNLOADED = 3
    UPDATE_EXECUTED = 4
    UPDATING = 5
    SUCCEEDED = 10
    FAILED = 11
    CANCELLED = 12

    @property
    def terminal(self) -> bool:
        return self >= Phase.SUCCEEDED


class Verdict(enum.Enum):
    ADVANCED = "advanced"  # progress moved up
    DUPLICATE = "duplicate"  # same report as the last one applied
    STALE = "stale"  # older than what we already know (by observe number or phase rank)
    IGNORED = "ignored"  # says nothing about this attempt (leftover from before, or after the end)


OBSERVE_WRAP = 1 << 24
_HALF = 1 << 23


def observe_is_newer(previous: int, candidate: int) -> bool:
    """RFC 7641 section 3.4 (sequence-number part): is ``candidate`` fresher than ``previous``?"""
    return (previous < candidate and candidate - previous < _HALF) or (
        previous > candidate and previous - candidate > _HALF
    )


@dataclass
class UpdateTracker:
    """Server view of one update attempt on one device."""

    phase: Phase = Phase.NOT_STARTED
    result: FwResult | None = None
    last_report: tuple[int, int] | None = None
    last_observe: int | None = None
    history: list[tuple[int, int, str]] = field(default_factory=list)

    def uri_written(self) -> None:
        if self.phase is not Phase.NOT_STARTED:
            raise Object5TransitionError(f"URI already written (phase {self.phase.name})")
        self.phase = Phase.URI_WRITTEN

    def update_executed(self) -> None:
        if self.phase is not Phase.DOWNLOADED:
            raise Object5TransitionError(
                f"Update may be executed only in Downloaded (phase {self.phase.name})"
            )
        self.phase = Phase.UPDATE_EXECUTED

    def cancelled(self) -> None:
        if not self.phase.terminal:
            self.phase = Phase.CANCELLED
            self.result = FwResult.CANCELLED

    @property
    def can_execute(self) -> bool:
        return self.phase is Phase.DOWNLOADED

    def report(self, state: int, result: int, *, observe: int | None = None) -> Verdict:
        """Fold one State/Result report into the attempt; returns what it did."""
        try:
            st, res = FwState(state), FwResult(result)
        except ValueError:
            raise Object5TransitionError(f"state {state} / result {result} out of range") from None
        if observe is not None:
            if self.last_observe is not None and not observe_is_newer(self.last_observe, observe):
                if observe == self.last_observe and self.last_report == (st, res):
                    return self._note(st, res, Verdict.DUPLICATE)
                return self._note(st, res, Verdict.STALE)
            self.last_observe = observe
        if self.last_report == (st, res):
            return self._note(st, res, Verdict.DUPLICATE)
        if self.phase.terminal or self.phase is Phase.NOT_STARTED:
            return self._note(st, res, Verdict.IGNORED)
        target = self._target(st, res)
        if target is None:
            return self._note(st, res, Verdict.IGNORED)
        if target <= self.phase and not target.terminal:
            return self._note(st, res, Verdict.STALE)
        self.phase = target
        if target.terminal:
            self.result = res
        self.last_report = (st, res)
        return self._note(st, res, Verdict.ADVANCED)

    def _target(self, st: FwState, res: FwResult) -> Phase | None:
        executed = self.phase >= Phase.UPDATE_EXECUTED
        if st is FwState.DOWNLOADING:
            return Phase.DOWNLOADING if not executed else None
        if st is FwState.DOWNLOADED:
            if res is FwResult.UPDATE_FAILED and executed:
                return Phase.FAILED
            if res in (FwResult.INITIAL, FwResult.DEFERRED):
                # After Execute, "Downloaded" is the device not having processed it yet.
                return Phase.DOWNLOADED if not executed else None
            return None
        if st is FwState.UPDATING:
            return Phase.UPDATING if executed else None
        # Idle
        if res is FwResult.SUCCESS:
            return Phase.SUCCEEDED if executed else None
        if res is FwResult.UPDATE_FAILED:
            return Phase.FAILED if executed else None
        if res is FwResult.CANCELLED:
            return Phase.CANCELLED
        if res is FwResult.INTEGRITY_CHECK_FAILURE:
            # Before Execute: the download failed its check. After: the device checked the
            # staged package at Update and refused it (Zephyr's client goes Updating -> Idle, 5).
            return Phase.FAILED
        if res in DOWNLOAD_FAILURES:
            return Phase.FAILED if not executed else None
        return None  # Idle/Initial: not started yet, or a reboot in progress

    def _note(self, st: FwState, res: FwResult, verdict: Verdict) -> Verdict:
        self.history.append((int(st), int(res), verdict.value))
        del self.history[:-32]
        return verdict
