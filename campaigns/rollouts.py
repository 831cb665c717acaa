"""The per-device rollout lifecycle outside the reconcile pass: device events folded into rollouts,
successes confirmed, failures recorded with a reason (and retried when the campaign's policy
covers it), work cancelled.

Success means the device rebooted into the new firmware and reported it: Object 5 Update Result
1 *and* the firmware version it reports (/3/0/3) equals the manifest's. "Downloaded" is not
success. Reports only move a rollout forward; late, duplicate and out-of-order reports are
ignored.

A device of a SUIT class (``manifests.delivery.REPORTING_PROFILES``) must also have signed a
SUIT report of the attempt that verifies under its registered report key, names the manifest
sent and carries the attempt's nonce (``manifests.suit.report``): its rollout succeeds only with
``report_verdict == "verified"``, whatever /5/0/5 says. Any other report (or none) is recorded
on the rollout and in the audit log and fails the rollout with the report's reason, without
retry. Image-profile (MCUboot) devices cannot sign reports and are judged as before.

In a trust-policy campaign (its target a released device trust policy, no manifest) success is
the device's confirmed install of the policy: Update Result 1, the verified report naming the
policy document's SHA-256, and the registry recording the device holding that policy
(``Device.trust_policy_sha256``, written by ``campaigns.trust_delivery`` from the same report).
A refusal by the device's rotation rule is Update Result 5, a failure like any other.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from audit.services import audit_record
from campaigns import events
from campaigns.device_services import device_command_create, device_installed_images_record
from campaigns.models import (
    IN_FLIGHT_STATES,
    ROLLOUT_PAYLOAD_DELTA,
    ROLLOUT_PAYLOAD_FALLBACK,
    Device,
    DeviceCommand,
    Rollout,
    RolloutState,
)
from campaigns.selectors import spec_of
from campaigns.spec import FAILURE_REASON_BY_UPDATE_RESULT
from manifests.delivery import REPORTING_PROFILES
from manifests.suit import keys as suit_keys
from manifests.suit import report as suit_report
from manifests.suit.errors import SUITError
from manifests.versions import VersionError, parse_version
from ops import tallies

log = logging.getLogger(__name__)

FW_RESULT_REASONS = FAILURE_REASON_BY_UPDATE_RESULT
# A failed delta's rollout goes back to pending for the full image with this reason.
DELTA_FALLBACK = "delta_fallback"
# Failures that are no fault of the delta: nothing to fall back from.
NO_FALLBACK_REASONS = frozenset({"cancelled", "emergency_stop", "campaign_aborted"})
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


# The verdict on a SUIT device's report that lets its rollout succeed; every other verdict is
# one of these reasons (``campaigns.spec.FAILURE_REASONS``).
REPORT_VERIFIED = "verified"
REPORT_MISSING = "report_missing"
REPORT_MALFORMED = "report_malformed"
REPORT_FAILURE = "report_failure"
REPORT_REASON_BY_CODE: dict[str, str] = {
    suit_report.ReportMalformedError.code: REPORT_MALFORMED,
    suit_report.ReportForgedError.code: "report_forged",
    suit_report.ReportWrongManifestError.code: "report_wrong_manifest",
    suit_report.ReportReplayedError.code: "report_replayed",
}
REPORT_REASONS = frozenset({REPORT_MISSING, REPORT_FAILURE, *REPORT_REASON_BY_CODE.values()})
# A delta refused by the device as not made for its running image. Object 5 has no Update
# Result for it: a SUIT device's verified report says it (``ReportFailure.wrong_precursor``);
# an image device says it by Update Result 6 and the Package Name convention the gateway
# reads (its outcome's ``refusal``; docs/lwm2m.md). Result 6 alone stays
# ``unsupported_package``: a real client that cannot take the delta's format says just that.
WRONG_PRECURSOR = "wrong_precursor"
# Gateway error codes meaning the attempt ended before anything reached the device's update
# state machine (it did not answer, or its gateway did not hold it): the rollout waits and is
# dispatched again, without a failure counted against the stage (docs/lwm2m.md, "Device
# information under load").
WAIT_ERROR_CODES = frozenset({"lwm2m.device_unreachable"})
WAIT_REASON = "device_unreachable"
# Pause before such a rollout is dispatched again: doubling per wait from the first, capped.
WAIT_FIRST = dt.timedelta(seconds=10)
WAIT_MAX = dt.timedelta(minutes=10)


# The task that runs one reconcile pass, by its registered name (the worker side defines it; the
# fleet side only queues it, as ``device_services.command_queue`` does for commands).
CAMPAIGN_RECONCILE_TASK = "workers.tasks.campaign_reconcile_task"
# A nudge's flag (a pass queued and not yet started) drops by itself after this long, so a
# nudge whose task was lost delays the next one by this at most (the beat's pass goes on).
NUDGE_FLAG_SECONDS = 30.0
# A nudged pass runs this long after the nudge: the rollouts that end meanwhile share it, so a
# fleet finishing fifty updates a second costs its campaign two passes a second, not fifty.
NUDGE_DELAY_SECONDS = 0.5

# Campaigns whose rollouts left flight while one event was applied (``rollouts_apply_event``
# collects them; the functions that end a rollout note its campaign here).
_ended: contextvars.ContextVar[set[int] | None] = contextvars.ContextVar(
    "rollouts_ended", default=None
)


def _note_ended(campaign_id: int) -> None:
    ended = _ended.get()
    if ended is not None:
        ended.add(campaign_id)


def nudge_flag(campaign_id: int) -> str:
    """The shared flag that is up while a nudged pass of the campaign is queued, not started."""
    return f"nudge:campaign:{campaign_id}"


def campaign_nudge(campaign_id: int, *, countdown: float = NUDGE_DELAY_SECONDS) -> bool:
    """Ask for a reconcile pass of the campaign once the current transaction commits, to run
    ``countdown`` seconds later: a device's rollout ended (succeeded, failed, went back to
    pending), so its in-flight slot is free and the next device can be dispatched now instead
    of at the beat's next pass
    (CAMPAIGN_RECONCILE_SECONDS). At most one nudged pass per campaign is queued at a time:
    the flag ``nudge_flag`` is raised when one is queued and lowered when it starts
    (``engine.campaign_reconcile_nudged``), so a change committed before the pass starts is
    seen by it, and one committed later nudges again. Off when tasks run eagerly (the embedded
    default, tests: the caller's own process would run the pass inside the event's
    application) or with CAMPAIGN_NUDGE=false. True when a nudge is to be sent."""
    from celery import current_app

    if not settings.CAMPAIGN_NUDGE or current_app.conf.task_always_eager:
        return False

    def send() -> None:
        flag = nudge_flag(campaign_id)
        if not tallies.flag_raise(flag, ttl_seconds=NUDGE_FLAG_SECONDS):
            return  # a nudged pass is queued and has not started: it will see this change
        try:
            current_app.tasks[CAMPAIGN_RECONCILE_TASK].apply_async(
                (campaign_id,), {"nudged": True}, countdown=countdown
            )
        except Exception as exc:  # the broker is down: the beat's pass moves the campaign
            tallies.flag_lower(flag)
            log.warning("could not nudge campaign %s: %s", campaign_id, exc)

    transaction.on_commit(send)
    return True


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
    if apply is None:
        return
    token = _ended.set(set())
    try:
        apply(event, now or timezone.now())
        ended = _ended.get() or set()
    finally:
        _ended.reset(token)
    for campaign_id in sorted(ended):
        campaign_nudge(campaign_id)


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


def needs_report(rollout: Rollout) -> bool:
    """Whether this rollout's success must rest on a verified SUIT report: its campaign's class
    or its device's class runs a SUIT processor."""
    profiles = {rollout.campaign.device_class.delivery}
    if rollout.device.device_class is not None:
        profiles.add(rollout.device.device_class.delivery)
    return bool(profiles & REPORTING_PROFILES)


Judgement = tuple[str, str, bytes | None, suit_report.SUITReport | None]


def judge_report(rollout: Rollout, suit_report_hex: str) -> Judgement:
    """(verdict, detail, report bytes, the verified report) of the report a SUIT device gave
    for the rollout's current attempt: checked against the device's registered key, the
    manifest sent and the nonce of the command that carried the attempt."""
    if not suit_report_hex:
        return REPORT_MISSING, "the device gave no SUIT report of this attempt", None, None
    if len(suit_report_hex) > 2 * suit_report.MAX_REPORT_BYTES:
        # Not kept: a report is small, and a device must not fill the rollout table.
        return (
            REPORT_MALFORMED,
            f"the SUIT report is over {suit_report.MAX_REPORT_BYTES} bytes",
            None,
            None,
        )
    try:
        data = bytes.fromhex(suit_report_hex)
    except ValueError:
        return REPORT_MALFORMED, "the SUIT report is not hex", None, None
    command = DeviceCommand.objects.filter(pk=rollout.command_id).only("args").first()
    nonce_hex = str(((command.args if command else None) or {}).get("report_nonce") or "")
    key_pem = rollout.device.report_key
    digest = sent_digest(rollout)
    if not key_pem or not nonce_hex or digest is None:
        why = "no report key registered" if not key_pem else "no nonce was given this attempt"
        return REPORT_MISSING, f"the report cannot be checked: {why}", data, None
    try:
        report = suit_report.verify_report(
            data,
            public_key=suit_keys.load_public_key_pem(key_pem.encode()),
            manifest_digest=bytes.fromhex(digest),
            nonce=bytes.fromhex(nonce_hex),
        )
    except SUITError as exc:
        reason = REPORT_REASON_BY_CODE.get(exc.code, REPORT_MALFORMED)
        return reason, f"SUIT report refused: {exc}"[:500], data, None
    if not report.success:
        return REPORT_FAILURE, report.describe(), data, report
    return REPORT_VERIFIED, report.describe(), data, report


def sent_digest(rollout: Rollout) -> str | None:
    """The digest a report of the rollout's attempt must name: the manifest's sent, or in a
    trust-policy campaign the policy document's SHA-256."""
    if rollout.manifest is not None:
        return str(rollout.manifest.manifest_digest)
    policy = rollout.campaign.trust_policy
    return str(policy.sha256) if policy is not None and policy.sha256 else None


def _record_report(
    rollout: Rollout, event: events.CommandResult, now: dt.datetime
) -> tuple[str, str, suit_report.SUITReport | None]:
    """Judge and store the report on the rollout, audited with the verdict and the report's
    digest; (verdict, detail, the verified report)."""
    verdict, detail, data, report = judge_report(rollout, event.suit_report)
    with transaction.atomic():
        # The audit chain's lock first, then the row: the order the engine's pass takes them.
        audit_record(
            actor=f"gateway:{event.gateway_id}" if event.gateway_id else "gateway",
            action="rollout.device_report",
            object_type="rollout",
            object_id=rollout.pk,
            details={
                "endpoint": rollout.device.endpoint,
                "command_id": str(rollout.command_id),
                "verdict": verdict,
                "detail": detail,
                "report_sha256": suit_report.report_digest(data) if data else None,
            },
            now=now,
        )
        Rollout.objects.filter(pk=rollout.pk, command_id=rollout.command_id).update(
            report=data, report_verdict=verdict, updated_at=now
        )
    return verdict, detail, report


def _wrong_precursor(
    rollout: Rollout, event: events.CommandResult, report: suit_report.SUITReport | None
) -> bool:
    """Whether the device refused this attempt's delta as not made for its running image: a
    SUIT device only by its verified report, an image device by Result 6 with the gateway's
    ``refusal`` (module constant ``WRONG_PRECURSOR``)."""
    if rollout.payload != ROLLOUT_PAYLOAD_DELTA:
        return False
    if needs_report(rollout):
        return report is not None and report.failure is not None and report.failure.wrong_precursor
    return event.update_result == 6 and event.result.get("refusal") == WRONG_PRECURSOR


def _on_command_result(event: events.CommandResult, now: dt.datetime) -> None:
    rollout = (
        Rollout.objects.filter(command_id=event.command_id)
        .select_related(
            "device__device_class", "campaign__device_class", "campaign__trust_policy", "manifest"
        )
        .first()
    )
    if rollout is None or rollout.state not in IN_FLIGHT_STATES:
        return
    report = None
    own_words = ""  # a failure's signed account by the device (its failing command and reason)
    if needs_report(rollout):
        verdict, detail, report = _record_report(rollout, event, now)
        if verdict == REPORT_FAILURE:
            own_words = f" ({detail})"
        genuine = verdict in (REPORT_VERIFIED, REPORT_FAILURE, REPORT_MISSING)
        if (event.ok and verdict != REPORT_VERIFIED) or not genuine:
            # A success without a verified report is no success; a report that is not the
            # device's word on this attempt and manifest is the failure's reason (a failure
            # need not come with a report). Never retried: the device or its path is not to be
            # trusted with this attempt.
            fail_rollout(
                rollout,
                reason=verdict,
                fw_result=event.update_result,
                detail=detail,
                now=now,
                retry=False,
            )
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
        reason=WRONG_PRECURSOR
        if _wrong_precursor(rollout, event, report)
        else failure_reason(event),
        fw_result=result,
        detail=f"{event.error}{own_words}"[:500],
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
        if result == 6 and rollout.payload == ROLLOUT_PAYLOAD_DELTA:
            # Result 6 to a delta is either the wrong base or a format the device does not
            # take: the command's result says which (the SUIT report, the Package Name), so it
            # decides, as it does for every attempt whose command ends (or the timeout).
            return
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
    """Updating rollouts whose device reports the manifest's version with result 1 succeed; in
    a trust-policy campaign, those whose device the registry records holding the policy.

    Each success of a release is the device's install of the manifest's image through the
    product: once the confirmation committed, the image's digest is recorded as the device's
    installed image (``device_installed_images_record``), whichever event (or the engine's
    pass) completed it."""
    confirmed = 0
    succeeded: list[Any] = []
    candidates = (
        rollouts.filter(state=RolloutState.UPDATING, fw_result=1)
        # A SUIT device's success needs its verified report (module docstring).
        .exclude(
            (
                Q(campaign__device_class__delivery__in=REPORTING_PROFILES)
                | Q(device__device_class__delivery__in=REPORTING_PROFILES)
            )
            & ~Q(report_verdict=REPORT_VERIFIED)
        )
        .select_related("device", "manifest", "campaign__trust_policy")
    )
    for rollout in candidates:
        policy = rollout.campaign.trust_policy
        if policy is not None:
            same = bool(policy.sha256) and rollout.device.trust_policy_sha256 == policy.sha256
        elif rollout.manifest is None:
            same = False
        else:
            try:
                same = parse_version(rollout.device.firmware_version or "") == parse_version(
                    rollout.manifest.version
                )
            except VersionError:
                same = False
        if same and Rollout.objects.filter(pk=rollout.pk, state=RolloutState.UPDATING).update(
            state=RolloutState.SUCCEEDED, finished_at=now, reason="", detail="", updated_at=now
        ):
            confirmed += 1
            succeeded.append(rollout.pk)
            _note_ended(rollout.campaign_id)
    if succeeded:
        transaction.on_commit(lambda: device_installed_images_record(rollout_ids=succeeded))
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
    if rollout.payload == ROLLOUT_PAYLOAD_DELTA and reason not in NO_FALLBACK_REASONS:
        # A failed delta is followed by the full image at once, whatever the retry policy:
        # the pair counts as one attempt (the claim of the full image counts it again), and
        # the rollout keeps "fallback" so the campaign reports it.
        changed = Rollout.objects.filter(
            pk=rollout.pk, state__in=expected, payload=ROLLOUT_PAYLOAD_DELTA
        ).update(
            state=RolloutState.PENDING,
            payload=ROLLOUT_PAYLOAD_FALLBACK,
            attempts=Greatest(F("attempts") - 1, 0),
            reason=DELTA_FALLBACK,
            detail=f"{reason}: {detail}"[:500] if detail else reason,
            fw_result=fw_result,
            next_attempt_at=now,
            command_id=None,
            updated_at=now,
        )
        if changed:
            _note_ended(rollout.campaign_id)
            return True
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
    if changed:
        _note_ended(rollout.campaign_id)
    return bool(changed)


def wait_rollout(rollout: Rollout, *, detail: str, now: dt.datetime) -> bool:
    """Back to pending (its reason says why) until a later dispatch, after a pause doubling with
    each wait: the device was not reached, so nothing failed and no attempt was made. The
    dispatch's attempt is given back (as a delta's fallback gives its attempt back), so the
    retry policy and ``attempts`` count only dispatches that reached the device, and a device
    waited for under load is not later refused a retry it is owed. Conditional on the
    in-flight states and on the command still being the rollout's (a wait reported twice, or
    after a newer dispatch, changes nothing)."""
    pause = min(WAIT_FIRST * 2 ** min(rollout.waits, 10), WAIT_MAX)
    changed = Rollout.objects.filter(
        pk=rollout.pk, state__in=IN_FLIGHT_STATES, command_id=rollout.command_id
    ).update(
        state=RolloutState.PENDING,
        reason=WAIT_REASON,
        detail=detail,
        attempts=Greatest(F("attempts") - 1, 0),
        waits=F("waits") + 1,
        next_attempt_at=now + pause,
        command_id=None,
        updated_at=now,
    )
    if changed:
        _note_ended(rollout.campaign_id)
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
