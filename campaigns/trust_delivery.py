"""Sending a released device trust policy to a class's SUIT devices: one ``fw_update`` command
per registered device of the class, with ``delivery: "trust-policy"`` (docs/suit.md, "Device
trust policy"); the gateway serves the document at ``/fw/t/<sha256>`` and each device checks it
by its own rotation rule, whatever the server says.

Idempotent: a device that already has a pending, sent or succeeded command for this document,
or that the registry knows holds this version or a later one, gets no second one; a failed one
is sent again. This is the per-device command path; a trust-policy campaign
(``Campaign.trust_policy``) sends the same commands through the campaign engine, with stages,
thresholds, pause and abort (docs/architecture.md, section 7), and its rollouts succeed on the
record written here.

The registry records the policy a device holds (``Device.trust_policy_version``) only from the
device's own word: the command's Object 5 success and, for a SUIT class
(``manifests.delivery.REPORTING_PROFILES``), a SUIT report signed by the device's registered
report key that names the policy document's SHA-256 as its manifest digest and carries the
command's nonce. A success without such a report is recorded as unconfirmed, with the report's
reason, and the device's record is left as it was; a refusal is recorded with its reason. The
version held is never lowered.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.services import audit_record
from campaigns import events
from campaigns.device_services import command_queue
from campaigns.models import CommandStatus, Device, DeviceCommand, Rollout
from campaigns.rollouts import confirm_successes
from manifests.delivery import REPORTING_PROFILES
from manifests.errors import TrustPolicyStateError
from manifests.models import DeliveryProfile, DeviceTrustPolicy, TrustPolicyStatus
from manifests.services import access, require_role
from manifests.suit import keys as suit_keys
from manifests.suit import report as suit_report
from manifests.suit.errors import SUITError

# Live commands for one document: a device holding one of these is not sent another.
_LIVE = (CommandStatus.PENDING, CommandStatus.SENT, CommandStatus.SUCCEEDED)
# The nonce a SUIT device's report of the install must carry (as the engine's, 16 bytes).
REPORT_NONCE_BYTES = 16
TRUST_DELIVERY = "trust-policy"
# The verdicts on a device's answer to a trust-policy command (``command.result["trust_policy"]``
# and the audit event): only ``held`` records the policy on the device.
HELD = "held"
REFUSED = "refused"
REPORT_MISSING = "report_missing"
REPORT_MALFORMED = "report_malformed"
REPORT_FAILURE = "report_failure"
UNKNOWN_POLICY = "unknown_policy"
_REPORT_REASON_BY_CODE: dict[str, str] = {
    suit_report.ReportMalformedError.code: REPORT_MALFORMED,
    suit_report.ReportForgedError.code: "report_forged",
    suit_report.ReportWrongManifestError.code: "report_wrong_manifest",
    suit_report.ReportReplayedError.code: "report_replayed",
}


@dataclass(frozen=True)
class TrustDelivery:
    sent: int
    already: int


def trust_policy_deliver(
    *, policy: DeviceTrustPolicy, actor: Any, now: dt.datetime | None = None
) -> TrustDelivery:
    """Queue the released ``policy`` to every registered device of its class (operators)."""
    now = now or timezone.now()
    with transaction.atomic():
        require_role(actor, *access.OPERATORS, at=now)
        locked = (
            DeviceTrustPolicy.objects.select_for_update()
            .select_related("device_class")
            .get(pk=policy.pk)
        )
        if locked.status != TrustPolicyStatus.RELEASED or not locked.sha256:
            raise TrustPolicyStateError(f"{locked} is not released: nothing to deliver")
        if locked.device_class.delivery == DeliveryProfile.IMAGE:
            raise TrustPolicyStateError(
                f"{locked.device_class} is an image-profile class: MCUboot devices cannot hold "
                "a trust policy"
            )
        args = {"manifest_digest": locked.sha256, "delivery": TRUST_DELIVERY}
        reporting = locked.device_class.delivery in REPORTING_PROFILES
        holding = set(
            DeviceCommand.objects.filter(
                operation="fw_update",
                args__manifest_digest=locked.sha256,
                args__delivery=TRUST_DELIVERY,
                status__in=_LIVE,
            ).values_list("device_id", flat=True)
        ) | set(
            Device.objects.filter(
                device_class=locked.device_class, trust_policy_version__gte=locked.version
            ).values_list("pk", flat=True)
        )
        devices = list(
            Device.objects.filter(device_class=locked.device_class)
            .exclude(pk__in=holding)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        commands = DeviceCommand.objects.bulk_create(
            [
                DeviceCommand(
                    device_id=pk,
                    operation="fw_update",
                    args={
                        **args,
                        # A SUIT device signs its report of the install over this nonce.
                        **(
                            {"report_nonce": secrets.token_hex(REPORT_NONCE_BYTES)}
                            if reporting
                            else {}
                        ),
                    },
                )
                for pk in devices
            ]
        )
        for command in commands:
            command_queue(str(command.pk))
        audit_record(
            actor=actor,
            action="trust_policy.deliver",
            object_type="device_class",
            object_id=locked.device_class_id,
            details={
                "version": locked.version,
                "sha256": locked.sha256,
                "sent": len(commands),
                "already": len(holding),
            },
            now=now,
        )
        return TrustDelivery(sent=len(commands), already=len(holding))


def judge_policy_report(
    device: Device, command: DeviceCommand, policy_sha256: str, suit_report_hex: str
) -> tuple[str, str]:
    """(verdict, detail) of a SUIT device's report of a trust-policy install: ``held`` only when
    it verifies under the device's registered key, names the document's SHA-256 and carries
    the command's nonce, and reports success."""
    if not suit_report_hex:
        return REPORT_MISSING, "the device gave no SUIT report of the policy install"
    try:
        data = bytes.fromhex(suit_report_hex)
    except ValueError:
        return REPORT_MALFORMED, "the SUIT report is not hex"
    nonce_hex = str((command.args or {}).get("report_nonce") or "")
    if not device.report_key or not nonce_hex:
        why = "no report key registered" if not device.report_key else "no nonce was given"
        return REPORT_MISSING, f"the report cannot be checked: {why}"
    try:
        report = suit_report.verify_report(
            data,
            public_key=suit_keys.load_public_key_pem(device.report_key.encode()),
            manifest_digest=bytes.fromhex(policy_sha256),
            nonce=bytes.fromhex(nonce_hex),
        )
    except SUITError as exc:
        return _REPORT_REASON_BY_CODE.get(exc.code, REPORT_MALFORMED), f"{exc}"[:500]
    if not report.success:
        return REPORT_FAILURE, report.describe()
    return HELD, report.describe()


def trust_policy_apply_event(*, event: events.DeviceEvent, now: dt.datetime | None = None) -> None:
    """Fold a command result into the registry's record of the trust policy its device holds
    (called after the registry applied the event, in its transaction). Only a trust-policy
    ``fw_update`` command counts; a second report of the same command changes nothing."""
    if not isinstance(event, events.CommandResult):
        return
    now = now or timezone.now()
    with transaction.atomic():
        command = (
            DeviceCommand.objects.select_for_update(of=("self",))
            .select_related("device__device_class")
            .filter(pk=event.command_id, operation="fw_update", args__delivery=TRUST_DELIVERY)
            .first()
        )
        if command is None or "trust_policy" in (command.result or {}):
            return
        device = command.device
        digest = str((command.args or {}).get("manifest_digest") or "")
        policy = (
            DeviceTrustPolicy.objects.filter(sha256=digest, status=TrustPolicyStatus.RELEASED)
            .select_related("device_class")
            .first()
        )
        if policy is None:
            verdict, detail = UNKNOWN_POLICY, "no released trust policy has this digest"
        elif not event.ok:
            verdict = REFUSED
            detail = f"{event.error_code or 'failed'}: {event.error}"[:500]
        elif {policy.device_class.delivery, getattr(device.device_class, "delivery", "")} & (
            REPORTING_PROFILES
        ):
            verdict, detail = judge_policy_report(device, command, digest, event.suit_report)
        else:
            verdict, detail = HELD, "Object 5 reported success (the class signs no reports)"
        command.result = {**(command.result or {}), "trust_policy": verdict}
        command.save(update_fields=["result"])
        recorded = 0
        if verdict == HELD and policy is not None:
            recorded = Device.objects.filter(
                Q(trust_policy_version__isnull=True) | Q(trust_policy_version__lt=policy.version),
                pk=device.pk,
            ).update(
                trust_policy_version=policy.version,
                trust_policy_sha256=policy.sha256,
                trust_policy_confirmed_at=now,
            )
        if verdict == HELD:
            # A trust-policy campaign's rollout of this command succeeds on this record.
            confirm_successes(Rollout.objects.filter(command_id=command.pk), now=now)
        audit_record(
            actor=f"gateway:{event.gateway_id}" if event.gateway_id else "gateway",
            action="device.trust_policy_held" if verdict == HELD else "device.trust_policy_refused",
            object_type="device",
            object_id=device.pk,
            details={
                "endpoint": device.endpoint,
                "command_id": str(command.pk),
                "sha256": digest,
                "version": policy.version if policy is not None else None,
                "verdict": verdict,
                "detail": detail,
                "recorded": bool(recorded),
                "report_sha256": (
                    suit_report.report_digest(bytes.fromhex(event.suit_report))
                    if _is_hex(event.suit_report)
                    else None
                ),
            },
            now=now,
        )


def _is_hex(text: str) -> bool:
    try:
        return bool(text) and bytes.fromhex(text) is not None
    except ValueError:
        return False
