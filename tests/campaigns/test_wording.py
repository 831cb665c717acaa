"""States, reasons, Object 5 codes and gateway events in words (``campaigns.wording``)."""

from __future__ import annotations

import pytest

from campaigns import wording
from campaigns.checks import CLASS_MISMATCH
from campaigns.models import RolloutState
from campaigns.spec import FAILURE_REASON_BY_UPDATE_RESULT, FAILURE_REASONS


def test_failed_rollout_with_an_update_result_reads_in_the_devices_words() -> None:
    text = wording.rollout_text(state="failed", reason="integrity_check_failed", fw_result=5)
    assert text == "Update failed: integrity check failure"


def test_failed_rollout_without_a_result_reads_its_reason() -> None:
    assert wording.rollout_text(state="timed_out", reason="timed_out") == (
        "Update timed out: no confirmed success before the device timeout"
    )
    assert wording.rollout_text(state="skipped", reason=CLASS_MISMATCH) == (
        "Skipped: the device is of another class"
    )


def test_pending_rollout_with_a_reason_is_waiting_to_retry() -> None:
    text = wording.rollout_text(state="pending", reason="connection_lost", fw_result=4)
    assert text == "Waiting to retry: connection lost during download"
    assert wording.rollout_text(state="pending") == "Waiting to be dispatched"


def test_success_does_not_repeat_the_result() -> None:
    assert wording.rollout_text(state="succeeded", fw_result=1) == "Updated"


@pytest.mark.parametrize("state", RolloutState.values)
def test_every_rollout_state_has_words(state: str) -> None:
    assert state in wording.STATE_TEXT


@pytest.mark.parametrize("reason", FAILURE_REASONS)
def test_every_failure_reason_has_words(reason: str) -> None:
    assert reason in wording.REASON_TEXT


@pytest.mark.parametrize(("code", "reason"), FAILURE_REASON_BY_UPDATE_RESULT.items())
def test_every_update_result_has_words(code: int, reason: str) -> None:
    assert code in wording.UPDATE_RESULT_TEXT


def test_unknown_codes_read_as_unknown_not_blank() -> None:
    assert wording.update_result_text(42) == "Update Result 42 (unknown)"
    assert wording.fw_state_text(9) == "State 9 (unknown)"
    assert wording.update_result_text(None) == "not reported"
    assert wording.reason_text("brand_new_reason") == "brand new reason"


@pytest.mark.parametrize(
    ("kind", "data", "text"),
    [
        ("registered", {"registration_id": "r1"}, "Registered (registration r1)"),
        ("expired", {"registration_id": "r1"}, "Registration r1 expired"),
        ("deregistered", {"registration_id": "r1"}, "De-registered (registration r1)"),
        (
            "fw_status",
            {"state": 0, "result": 5},
            "Reported firmware state idle, last result: integrity check failure",
        ),
        ("fw_installed", {"manifest_digest": "ab" * 32}, "Installed the firmware of manifest"),
        (
            "command_result",
            {"operation": "fw_update", "ok": False, "result": 2},
            "Command fw_update failed: not enough flash memory for the new package",
        ),
        ("command_result", {"operation": "read", "ok": True}, "Command read succeeded"),
        ("something_new", {}, "Something new"),
    ],
)
def test_events_read_as_sentences(kind: str, data: dict[str, object], text: str) -> None:
    assert wording.event_text(kind, data).startswith(text)


def test_attempt_text_tells_the_phase_and_the_device_result() -> None:
    failed = wording.attempt_text(
        status="failed",
        result={"phase": "downloading", "result": 4},
        error_code="lwm2m.fw_update_failed",
    )
    assert failed == "Attempt failed: connection lost during download (during downloading)"
    assert wording.attempt_text(
        status="failed", result={}, error_code="lwm2m.device_busy", error="busy"
    ) == ("Attempt failed: busy")
    assert wording.attempt_text(status="sent", result={}) == "In progress at the gateway"
