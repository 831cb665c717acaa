"""Rollout states, failure reasons, LwM2M Object 5 codes and gateway events in words: the one
place the console (device page, device list) and any report take their sentences from, so a
state reads the same everywhere ("Update failed: integrity check failure").

Pure: no Django import. Unknown codes are not an error here (a newer device or gateway may send
one): they read as what they are ("Update Result 42 (unknown)") rather than vanish.
"""

from __future__ import annotations

from typing import Any

from campaigns.fleet import FW_STATES

# LwM2M Object 5 State (/5/0/3).
FW_STATE_TEXT: dict[int, str] = {code: name for name, code in FW_STATES.items()}

# LwM2M Object 5 Update Result (/5/0/5), as in the LwM2M 1.1 object (11 arrived with 1.1).
UPDATE_RESULT_TEXT: dict[int, str] = {
    0: "no update yet",
    1: "firmware updated successfully",
    2: "not enough flash memory for the new package",
    3: "out of RAM during download",
    4: "connection lost during download",
    5: "integrity check failure",
    6: "unsupported package type",
    7: "invalid URI",
    8: "firmware update failed",
    9: "unsupported protocol",
    10: "firmware update cancelled",
    11: "firmware update deferred by the device",
}

# A rollout's reason (``campaigns.spec.FAILURE_REASONS``, ``campaigns.checks``, the engine's own)
# as the second half of a sentence. The Update Result reasons reuse the /5/0/5 wording.
REASON_TEXT: dict[str, str] = {
    "no_space": UPDATE_RESULT_TEXT[2],
    "out_of_memory": UPDATE_RESULT_TEXT[3],
    "connection_lost": UPDATE_RESULT_TEXT[4],
    "integrity_check_failed": UPDATE_RESULT_TEXT[5],
    "unsupported_package": UPDATE_RESULT_TEXT[6],
    "invalid_uri": UPDATE_RESULT_TEXT[7],
    "update_failed": "the device could not install or boot the new firmware",
    "unsupported_protocol": UPDATE_RESULT_TEXT[9],
    "cancelled": UPDATE_RESULT_TEXT[10],
    "deferred": UPDATE_RESULT_TEXT[11],
    "timed_out": "no confirmed success before the device timeout",
    "dispatch_failed": "the server could not hand the update to the device",
    "device_busy": "the device was busy with another update",
    "update_never_started": "the device took the package but never started updating",
    "no_supported_delivery": "no delivery method the device supports",
    "push_refused": "the device refused the pushed package",
    "report_missing": "the device gave no signed SUIT report of the update",
    "report_malformed": "the device's SUIT report is not a well-formed signed report",
    "report_forged": "the SUIT report's signature does not verify under the device's key",
    "report_wrong_manifest": "the SUIT report is about another manifest",
    "report_replayed": "the SUIT report is of another attempt (its nonce)",
    "report_failure": "the device's signed SUIT report says the update failed",
    "wrong_precursor": "the device refused a delta not made for the image it runs",
    "no_report_key": "no SUIT report key is registered for the device",
    "unreachable": "the device stayed offline too long",
    "emergency_stop": "an emergency stop is in force",
    "campaign_aborted": "the campaign was aborted",
    "not_approved": "the release is not approved",
    "release_revoked": "the release was revoked",
    "unknown_device_class": "the device is not mapped to a device class",
    "vendor_mismatch": "the device is from another vendor",
    "class_mismatch": "the device is of another class",
    "component_mismatch": "the manifest is for another component",
    "already_current": "the device already runs this firmware or newer",
    "rollback_refused_sequence": "the device runs a newer sequence number (no rollback)",
    "rollback_refused_counter": "the device's security counter is higher (no rollback)",
    "version_downgrade": "it would downgrade the firmware version",
    "expired_release": "the release has expired",
    "clock_skew": "the device's clock is off",
    "manifest_incomplete": "the manifest lacks a required field",
    "encryption_key_unknown": "the release is encrypted for keys this device is not known to hold",
    "excluded_by_spec": "the campaign's spec excludes it",
    "offline_too_long": "the device has not been seen for too long",
    "version_constraint": "its installed version is outside the campaign's target",
    "not_in_any_stage": "it falls in no stage of the plan",
    "delta_fallback": "the delta failed on the device; the full image follows",
}

# ``Rollout.payload`` in words (the device page, the campaign report).
PAYLOAD_TEXT: dict[str, str] = {
    "": "full image",
    "delta": "delta",
    "fallback": "full image after a failed delta",
}

# A rollout state as the start of a sentence (the reason follows after a colon).
STATE_TEXT: dict[str, str] = {
    "pending": "Waiting to be dispatched",
    "skipped": "Skipped",
    "queued": "Queued for the gateway",
    "dispatched": "Sent to the device",
    "downloading": "Downloading",
    "downloaded": "Downloaded, waiting to install",
    "updating": "Installing",
    "succeeded": "Updated",
    "failed": "Update failed",
    "timed_out": "Update timed out",
    "unreachable": "Device unreachable",
    "cancelled": "Cancelled",
}


def payload_text(payload: str) -> str:
    """What a rollout's last dispatch sent (``Rollout.payload``), in words."""
    return PAYLOAD_TEXT.get(payload, payload)


def fw_state_text(state: int | None) -> str:
    if state is None:
        return "not reported"
    return FW_STATE_TEXT.get(state, f"State {state} (unknown)")


def update_result_text(result: int | None) -> str:
    if result is None:
        return "not reported"
    return UPDATE_RESULT_TEXT.get(result, f"Update Result {result} (unknown)")


def reason_text(reason: str) -> str:
    return REASON_TEXT.get(reason, reason.replace("_", " "))


def rollout_text(
    *, state: str, reason: str = "", fw_result: int | None = None, retrying: bool = False
) -> str:
    """One sentence for a rollout: its state, then why. A failure the device reported with an
    Update Result is told in the device's words; a pending rollout that carries a reason is
    waiting to retry after that failure."""
    head = STATE_TEXT.get(state, state.replace("_", " ").capitalize())
    if state == "pending" and (reason or retrying):
        head = "Waiting to retry"
    why = ""
    if fw_result is not None and fw_result not in (0, 1) and state != "succeeded":
        why = update_result_text(fw_result)
    elif reason:
        why = reason_text(reason)
    return f"{head}: {why}" if why else head


def attempt_text(
    *, status: str, result: dict[str, Any], error_code: str = "", error: str = ""
) -> str:
    """One sentence for one ``fw_update`` command (an attempt): how far it got and how it
    ended, from the gateway's result (``phase`` and the device's Update Result)."""
    code = result.get("result")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    phase = result.get("phase")
    if status in ("pending", "sent"):
        return "Waiting for the gateway" if status == "pending" else "In progress at the gateway"
    if status == "succeeded":
        return "Update reported successful" + (f" (phase {phase})" if phase else "")
    parts = ["Attempt failed"]
    if code is not None and code not in (0, 1):
        parts.append(update_result_text(code))
    elif error:
        parts.append(error)
    elif error_code:
        parts.append(error_code)
    text = ": ".join(parts[:2])
    if phase:
        text += f" (during {phase})"
    return text


def event_text(kind: str, data: dict[str, Any]) -> str:
    """A gateway event as the registry logged it (``DeviceEvent.kind`` and ``data``) in words."""
    reg = data.get("registration_id", "")
    if kind == "registered":
        return f"Registered (registration {reg})"
    if kind == "register_stale":
        return f"Ignored an older registration {reg} (a newer one had already won)"
    if kind == "update_stale":
        return f"Ignored an update of registration {reg}, which is no longer current"
    if kind == "deregistered":
        return f"De-registered (registration {reg})"
    if kind == "expired":
        return f"Registration {reg} expired (no update within its lifetime)"
    if kind == "expired_elsewhere":
        return f"Another gateway's copy of registration {reg} expired (the device had moved)"
    if kind == "fw_status":
        state, result = data.get("state"), data.get("result")
        return (
            f"Reported firmware state {fw_state_text(_int(state))}, "
            f"last result: {update_result_text(_int(result))}"
        )
    if kind == "fw_installed":
        digest = str(data.get("manifest_digest", ""))
        return f"Installed the firmware of manifest {digest[:12]}"
    if kind == "command_result":
        operation = data.get("operation", "command")
        if data.get("ok"):
            return f"Command {operation} succeeded"
        code = _int(data.get("result"))
        why = f": {update_result_text(code)}" if code is not None and code not in (0, 1) else ""
        return f"Command {operation} failed{why}"
    return kind.replace("_", " ").capitalize()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
