"""Object 5 state machine, both sides: every device transition, and the server tracker with
late, duplicate and out-of-order notifications."""

from __future__ import annotations

import pytest

from workers.lwm2m.errors import Object5TransitionError
from workers.lwm2m.object5 import (
    DeviceFirmwareObject,
    FwResult,
    FwState,
    Phase,
    UpdateTracker,
    Verdict,
    observe_is_newer,
)

S, R = FwState, FwResult


def device(state: FwState, result: FwResult = R.INITIAL, uri: str = "") -> DeviceFirmwareObject:
    return DeviceFirmwareObject(state, result, uri)


# --- device side: allowed transitions ---------------------------------------------------------


def test_idle_write_uri_starts_download_and_resets_result() -> None:
    fw = device(S.IDLE, R.UPDATE_FAILED)
    fw.write_uri("coap://gw/fw/m/x")
    assert (fw.state, fw.result, fw.package_uri) == (S.DOWNLOADING, R.INITIAL, "coap://gw/fw/m/x")


def test_downloading_to_downloaded() -> None:
    fw = device(S.DOWNLOADING)
    fw.download_succeeded()
    assert fw.state is S.DOWNLOADED


@pytest.mark.parametrize(
    "result",
    [
        R.NOT_ENOUGH_FLASH,
        R.OUT_OF_RAM,
        R.CONNECTION_LOST,
        R.INTEGRITY_CHECK_FAILURE,
        R.UNSUPPORTED_PACKAGE_TYPE,
        R.INVALID_URI,
        R.UNSUPPORTED_PROTOCOL,
    ],
)
def test_download_failure_returns_to_idle_with_result(result: FwResult) -> None:
    fw = device(S.DOWNLOADING)
    fw.download_failed(result)
    assert (fw.state, fw.result) == (S.IDLE, result)


def test_downloaded_execute_goes_updating() -> None:
    fw = device(S.DOWNLOADED)
    fw.execute_update()
    assert fw.state is S.UPDATING


def test_update_success_idle_result_1() -> None:
    fw = device(S.UPDATING, uri="u")
    fw.update_succeeded()
    assert (fw.state, fw.result, fw.package_uri) == (S.IDLE, R.SUCCESS, "")


@pytest.mark.parametrize(("keep", "state"), [(False, S.IDLE), (True, S.DOWNLOADED)])
def test_update_failure_result_8(keep: bool, state: FwState) -> None:
    fw = device(S.UPDATING)
    fw.update_failed(keep_package=keep)
    assert (fw.state, fw.result) == (state, R.UPDATE_FAILED)


@pytest.mark.parametrize("start", [S.IDLE, S.DOWNLOADING, S.DOWNLOADED, S.UPDATING])
def test_empty_uri_resets_to_idle_from_any_state(start: FwState) -> None:
    fw = device(start, R.CONNECTION_LOST, uri="x")
    fw.write_uri("")
    assert (fw.state, fw.result, fw.package_uri) == (S.IDLE, R.INITIAL, "")


@pytest.mark.parametrize("start", [S.IDLE, S.DOWNLOADING, S.DOWNLOADED, S.UPDATING])
def test_empty_package_reset_goes_idle_result_0_from_any_state(start: FwState) -> None:
    fw = device(start, R.UPDATE_FAILED, uri="x")
    fw.reset()
    assert (fw.state, fw.result, fw.package_uri) == (S.IDLE, R.INITIAL, "")


def test_first_pushed_block_starts_downloading_without_uri() -> None:
    fw = device(S.IDLE, R.UPDATE_FAILED)
    fw.start_push()
    assert (fw.state, fw.result, fw.package_uri) == (S.DOWNLOADING, R.INITIAL, "")
    fw.download_succeeded()
    assert fw.state is S.DOWNLOADED


def test_integrity_failure_at_update_goes_idle_result_5() -> None:
    fw = device(S.UPDATING, uri="u")
    fw.update_failed(result=R.INTEGRITY_CHECK_FAILURE)
    assert (fw.state, fw.result, fw.package_uri) == (S.IDLE, R.INTEGRITY_CHECK_FAILURE, "")


@pytest.mark.parametrize("start", [S.DOWNLOADING, S.DOWNLOADED])
def test_cancel_gives_result_10(start: FwState) -> None:
    fw = device(start)
    fw.cancel()
    assert (fw.state, fw.result) == (S.IDLE, R.CANCELLED)


@pytest.mark.parametrize("result", [R.INVALID_URI, R.UNSUPPORTED_PROTOCOL])
def test_uri_rejection(result: FwResult) -> None:
    fw = device(S.DOWNLOADING)
    fw.reject_uri(result)
    assert (fw.state, fw.result) == (S.IDLE, result)


# --- device side: refused transitions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "op"),
    [
        (S.DOWNLOADING, lambda fw: fw.write_uri("coap://x")),
        (S.DOWNLOADED, lambda fw: fw.write_uri("coap://x")),
        (S.UPDATING, lambda fw: fw.write_uri("coap://x")),
        (S.DOWNLOADING, lambda fw: fw.start_push()),
        (S.DOWNLOADED, lambda fw: fw.start_push()),
        (S.UPDATING, lambda fw: fw.start_push()),
        (S.UPDATING, lambda fw: fw.update_failed(result=R.UNSUPPORTED_PACKAGE_TYPE)),
        (S.DOWNLOADED, lambda fw: fw.update_failed(result=R.INTEGRITY_CHECK_FAILURE)),
        (S.IDLE, lambda fw: fw.execute_update()),
        (S.DOWNLOADING, lambda fw: fw.execute_update()),
        (S.UPDATING, lambda fw: fw.execute_update()),
        (S.IDLE, lambda fw: fw.download_succeeded()),
        (S.DOWNLOADED, lambda fw: fw.download_failed(R.CONNECTION_LOST)),
        (S.DOWNLOADING, lambda fw: fw.download_failed(R.SUCCESS)),
        (S.IDLE, lambda fw: fw.update_succeeded()),
        (S.DOWNLOADED, lambda fw: fw.update_failed()),
        (S.IDLE, lambda fw: fw.cancel()),
        (S.UPDATING, lambda fw: fw.cancel()),
        (S.IDLE, lambda fw: fw.reject_uri(R.CONNECTION_LOST)),
    ],
)
def test_undefined_transition_is_refused(start: FwState, op: object) -> None:
    fw = device(start)
    with pytest.raises(Object5TransitionError):
        op(fw)  # type: ignore[operator]
    assert fw.state is start


# --- server side ------------------------------------------------------------------------------


def started() -> UpdateTracker:
    tracker = UpdateTracker()
    tracker.uri_written()
    return tracker


def test_tracker_happy_path() -> None:
    t = started()
    assert t.report(1, 0) is Verdict.ADVANCED
    assert t.report(2, 0) is Verdict.ADVANCED and t.can_execute
    t.update_executed()
    assert t.report(3, 0) is Verdict.ADVANCED
    assert t.report(0, 1) is Verdict.ADVANCED
    assert t.phase is Phase.SUCCEEDED and t.result is R.SUCCESS


def test_duplicate_notification_is_a_no_op() -> None:
    t = started()
    t.report(1, 0)
    assert t.report(1, 0) is Verdict.DUPLICATE
    assert t.phase is Phase.DOWNLOADING


def test_late_downloading_after_downloaded_is_stale() -> None:
    t = started()
    t.report(2, 0)  # the Downloading notification got lost/overtaken
    assert t.report(1, 0) is Verdict.STALE
    assert t.phase is Phase.DOWNLOADED


def test_out_of_order_by_observe_number() -> None:
    t = started()
    assert t.report(2, 0, observe=11) is Verdict.ADVANCED
    assert t.report(1, 0, observe=10) is Verdict.STALE
    assert t.phase is Phase.DOWNLOADED


def test_observe_number_wraps() -> None:
    assert observe_is_newer(2**24 - 1, 3)
    assert not observe_is_newer(3, 2**24 - 1)
    assert observe_is_newer(5, 6) and not observe_is_newer(6, 5)


def test_leftover_success_before_execute_is_ignored() -> None:
    t = started()
    assert t.report(0, 1) is Verdict.IGNORED  # last update's result, device not started yet
    assert t.report(0, 0) is Verdict.IGNORED
    assert t.phase is Phase.URI_WRITTEN


def test_downloaded_after_execute_is_not_progress() -> None:
    t = started()
    t.report(2, 0)
    t.update_executed()
    assert t.report(2, 0) is Verdict.DUPLICATE  # the poll raced the Execute
    assert t.phase is Phase.UPDATE_EXECUTED


@pytest.mark.parametrize("state", [0, 2])
def test_update_failure_either_client_convention(state: int) -> None:
    t = started()
    t.report(2, 0)
    t.update_executed()
    assert t.report(state, 8) is Verdict.ADVANCED
    assert t.phase is Phase.FAILED and t.result is R.UPDATE_FAILED


def test_integrity_failure_reported_from_updating_fails_the_attempt() -> None:
    """Zephyr's client checks the staged image at Update and reports Idle with Result 5."""
    t = started()
    t.report(2, 0)
    t.update_executed()
    assert t.report(3, 0) is Verdict.ADVANCED
    assert t.report(0, 5) is Verdict.ADVANCED
    assert t.phase is Phase.FAILED and t.result is R.INTEGRITY_CHECK_FAILURE


def test_other_download_failure_after_execute_is_not_this_attempts_result() -> None:
    t = started()
    t.report(2, 0)
    t.update_executed()
    assert t.report(0, 4) is Verdict.IGNORED
    assert t.phase is Phase.UPDATE_EXECUTED


def test_download_failure_is_terminal() -> None:
    t = started()
    t.report(1, 0)
    assert t.report(0, 4) is Verdict.ADVANCED
    assert t.phase is Phase.FAILED and t.result is R.CONNECTION_LOST
    assert t.report(1, 0) is Verdict.IGNORED  # nothing after the end changes it


def test_execute_only_in_downloaded() -> None:
    t = started()
    with pytest.raises(Object5TransitionError):
        t.update_executed()
    t.report(1, 0)
    with pytest.raises(Object5TransitionError):
        t.update_executed()


def test_reports_before_uri_written_are_ignored_and_out_of_range_refused() -> None:
    t = UpdateTracker()
    assert t.report(1, 0) is Verdict.IGNORED
    with pytest.raises(Object5TransitionError):
        t.report(7, 0)
    with pytest.raises(Object5TransitionError):
        t.report(0, 12)


def test_cancel_result_10() -> None:
    t = started()
    t.report(1, 0)
    assert t.report(0, 10) is Verdict.ADVANCED
    assert t.phase is Phase.CANCELLED
