"""The per-device rollout lifecycle outside the reconcile pass: device events folded into rollouts,
successes confirmed, failures recorded with a reason (and retried when the campaign's policy
covers it), work cancelled.

Success means the device rebooted into the new firmware and reported it: Object 5 Update Result
1 *and* the firmware version it reports (/3/0/3) equals the manifest's. "Downloaded" is not
success. Reports only move a rollout forward; late, duplicate and out-of-order reports are
ignored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from django.utils import timezone

from campaigns import events
from campaigns.device_services import device_command_create
from campaigns.models import IN_FLIGHT_STATES, Device, Rollout, RolloutState
from campaigns.selectors import spec_of
from campaigns.spec import FAILURE_REASON_BY_UPDATE_RESULT
from manifests.versions import VersionError, parse_version

FW_RESULT_REASONS = FAILURE_REASON_BY_UPDATE_RESULT
# A failed command without a device Update Result: the gateway's error code (the stable codes of
# ``workers.lwm2m.errors``) to the rollout's reason. Any other code is ``dispatch_failed``.
REASON_BY_ERROR_CODE: dict[str, str] = {
    "lwm2m.fw_update_timed_out": "timed_out",
    "lwm2m.device_busy": "device_busy",
    "lwm2m.unsupported_protocol": "unsupported_protocol",
    "lwm2m.fw_update_never_started": "update_never_started",
    "lwm2m.no_supported_delivery": "no_supported_delivery",
    "lwm2m.push_refused": "push_refused",
}


# Gateway error codes meaning the attempt ended before anything reached the device's update
# state machine (it did not answer, or its gateway did not hold it): the rollout waits and is
# dispatched again, without a failure counted against the stage (docs/lwm2m.md, "Device
# information under load").
WAIT_ERROR_CODES = frozenset({"lwm2m.device_unreachable"})
WAIT_REASON = "device_unreachable"
# Pause before such a rollout is dispatched again: doubling per attempt from the first, capped.
WAIT_FIRST = dt.timedelta(seconds=10)
WAIT_MAX = dt.timedelta(minutes=10)


_ORDER = {
    s: i
    for i, s in enumerate(
        [
            RolloutState.QUEUED,
            RolloutState.DISPATCHED,
            RolloutState.DOWNLOADING,
            RolloutState.DOWNLOADED,
            RolloutState.UPDATING,
        ]
    )
}


_FW_STATE_TO_ROLLOUT = {
    1: RolloutState.DOWNLOADING,
    2: RolloutState.DOWNLOADED,
    3: RolloutState.UPDATING,
}


def rollouts_apply_event(*, event: events.DeviceEvent, now: dt.datetime | None = None) -> None:
    """Fold one gateway event into the device's rollout (called after the registry update)."""
    apply = _ROLLOUT_APPLY.get(type(event))
    if apply is not None:
        apply(event, now or timezone.now())


def _confirm_device(event: events.DeviceEvent, now: dt.datetime) -> None:
    """A report that may complete a success: the device's version or its registration."""
    device = Device.objects.filter(endpoint=event.endpoint).first()
    if device is not None:
        confirm_successes(Rollout.objects.filter(device=device), now=now)


def failure_reason(event: events.CommandResult) -> str:
    """The rollout reason of a failed command: the device's own Update Result when it reported
    one, else what the gateway's error code says, else ``dispatch_failed``."""
    result = event.update_result
    if result is not None and result in FW_RESULT_REASONS:
        return FW_RESULT_REASONS[result]
    return REASON_BY_ERROR_CODE.get(event.error_code, "dispatch_failed")


def _on_command_result(event: events.CommandResult, now: dt.datetime) -> None:
    rollout = Rollout.objects.filter(command_id=event.command_id).first()
    if rollout is None or rollout.state not in IN_FLIGHT_STATES:
        return
    if event.ok:
        Rollout.objects.filter(pk=rollout.pk, state__in=IN_FLIGHT_STATES).update(
            state=RolloutState.UPDATING, fw_result=1, updated_at=now
        )
        confirm_successes(Rollout.objects.filter(pk=rollout.pk), now=now)
        return
    result = event.update_result
    if event.error_code in WAIT_ERROR_CODES and result is None:
        wait_rollout(rollout, detail=event.error[:500], now=now)
        return
    fail_rollout(
        rollout,
        reason=failure_reason(event),
        fw_result=result,
        detail=event.error[:500],
        now=now,
        # The device's own Update Result is judged by the campaign's retry policy; a gateway
        # error the gateway calls permanent (the same command cannot succeed) is not retried.
        retry=result is not None or not event.permanent,
    )


def _on_fw_status_event(event: events.FwStatus, now: dt.datetime) -> None:
    _on_fw_status(event.endpoint, event.state, event.result, now=now)


def _on_fw_status(endpoint: str, state: int, result: int, *, now: dt.datetime) -> None:
    rollout = (
        Rollout.objects.filter(device__endpoint=endpoint, state__in=IN_FLIGHT_STATES)
        .order_by("-dispatched_at")
        .first()
    )
    if rollout is None:
        return
    if state == 0 and result >= 2:
        fail_rollout(
            rollout,
            reason=FW_RESULT_REASONS.get(result, "update_failed"),
            fw_result=result,
            detail=f"device reported Update Result {result}",
            now=now,
        )
        return
    target = (
        RolloutState.UPDATING if (state == 0 and result == 1) else _FW_STATE_TO_ROLLOUT.get(state)
    )
    if target is None:
        return
    earlier = [s for s, i in _ORDER.items() if i < _ORDER[target]]
    updates: dict[str, Any] = {"state": target, "updated_at": now}
    if result == 1:
        updates["fw_result"] = 1
    Rollout.objects.filter(pk=rollout.pk, state__in=earlier).update(**updates)
    if result == 1:
        confirm_successes(Rollout.objects.filter(pk=rollout.pk), now=now)


def confirm_successes(rollouts: Any, *, now: dt.datetime) -> int:
    """Updating rollouts whose device reports the manifest's version with result 1 succeed."""
    confirmed = 0
    candidates = rollouts.filter(state=RolloutState.UPDATING, fw_result=1).select_related(
        "device", "manifest"
    )
    for rollout in candidates:
        try:
            same = parse_version(rollout.device.firmware_version or "") == parse_version(
                rollout.manifest.version
            )
        except VersionError:
            same = False
        if same:
            confirmed += Rollout.objects.filter(pk=rollout.pk, state=RolloutState.UPDATING).update(
                state=RolloutState.SUCCEEDED, finished_at=now, reason="", detail="", updated_at=now
            )
    return confirmed


def fail_rollout(
    rollout: Rollout,
    *,
    reason: str,
    now: dt.datetime,
    fw_result: int | None = None,
    detail: str = "",
    expected: tuple[str, ...] = IN_FLIGHT_STATES,
    retry: bool = True,
    spec: Any = None,
) -> bool:
    """Record a failure; retry later (back to pending after a backoff) when ``retry`` allows it,
    the campaign's retry policy covers the reason and attempts remain. Conditional on the
    expected states. ``spec``: the campaign's, when the caller holds it (the engine's loops),
    so it is not parsed again per rollout."""
    campaign = rollout.campaign
    retries = (spec if spec is not None else spec_of(campaign)).retries
    final = RolloutState.TIMED_OUT if reason == "timed_out" else RolloutState.FAILED
    if retry and retries.retryable(reason, attempt=rollout.attempts):
        delay = retries.delay(max(1, rollout.attempts))
        changed = Rollout.objects.filter(pk=rollout.pk, state__in=expected).update(
            state=RolloutState.PENDING,
            reason=reason,
            detail=detail,
            fw_result=fw_result,
            next_attempt_at=now + delay,
            command_id=None,
            updated_at=now,
        )
    else:
        changed = Rollout.objects.filter(pk=rollout.pk, state__in=expected).update(
            state=final,
            reason=reason,
            detail=detail,
            fw_result=fw_result,
            finished_at=now,
            updated_at=now,
        )
    return bool(changed)


def wait_rollout(rollout: Rollout, *, detail: str, now: dt.datetime) -> bool:
    """Back to pending (its reason says why) until a later dispatch, after a pause growing with
    its attempts: the device was not reached, so nothing failed. Conditional on the in-flight
    states; the attempt already counted stays counted (it matches the command sent)."""
    pause = min(WAIT_FIRST * 2 ** min(max(rollout.attempts - 1, 0), 10), WAIT_MAX)
    changed = Rollout.objects.filter(pk=rollout.pk, state__in=IN_FLIGHT_STATES).update(
        state=RolloutState.PENDING,
        reason=WAIT_REASON,
        detail=detail,
        next_attempt_at=now + pause,
        command_id=None,
        updated_at=now,
    )
    return bool(changed)


def cancel_rollouts(rollouts: Any, *, reason: str, now: dt.datetime, requeue: bool = False) -> int:
    """Cancel pending and in-flight work; in-flight devices get an empty Package URI. With
    ``requeue`` (emergency stop) the rollouts go back to pending, to be dispatched again once
    the stop is lifted. Devices already installing (Updating) cannot be stopped and are left."""

    cancellable = [
        RolloutState.QUEUED,
        RolloutState.DISPATCHED,
        RolloutState.DOWNLOADING,
        RolloutState.DOWNLOADED,
    ]
    in_flight = list(
        rollouts.filter(state__in=cancellable)
        .select_related("device")
        .values_list("pk", "device__endpoint", "device__online")
    )
    for _pk, endpoint, online in in_flight:
        if online:
            device_command_create(endpoint=endpoint, operation="fw_cancel")
    ids = [pk for pk, _, _ in in_flight]
    if requeue:
        changed = Rollout.objects.filter(pk__in=ids, state__in=cancellable).update(
            state=RolloutState.PENDING,
            reason=reason,
            command_id=None,
            next_attempt_at=None,
            updated_at=now,
        )
    else:
        changed = Rollout.objects.filter(pk__in=ids, state__in=cancellable).update(
            state=RolloutState.CANCELLED, reason=reason, finished_at=now, updated_at=now
        )
        changed += rollouts.filter(state=RolloutState.PENDING).update(
            state=RolloutState.CANCELLED, reason=reason, finished_at=now, updated_at=now
        )
    return changed


# What each event does to rollouts (the contract is ``campaigns.events``); registration ends
# and Updates change nothing here.
_ROLLOUT_APPLY: dict[type[events.DeviceEvent], Callable[[Any, dt.datetime], None]] = {
    events.CommandResult: _on_command_result,
    events.FwStatus: _on_fw_status_event,
    events.DeviceInfo: _confirm_device,
    events.FwInstalled: _confirm_device,
    events.Registered: _confirm_device,
}
