"""Sending a released device trust policy to a class's SUIT devices: one ``fw_update`` command
per registered device of the class, with ``delivery: "trust-policy"`` (docs/suit.md, "Device
trust policy"); the gateway serves the document at ``/fw/t/<sha256>`` and each device checks it
by its own rotation rule, whatever the server says.

Idempotent: a device that already has a pending, sent or succeeded command for this document
gets no second one; a failed one is sent again. This is the per-device command path the
campaign engine also writes to; staged trust-policy campaigns (stages, thresholds, gates) are
not built (docs/architecture.md, section 7).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from campaigns.device_services import command_queue
from campaigns.models import CommandStatus, Device, DeviceCommand
from manifests.errors import TrustPolicyStateError
from manifests.models import DeliveryProfile, DeviceTrustPolicy, TrustPolicyStatus
from manifests.services import access, require_role

# Live commands for one document: a device holding one of these is not sent another.
_LIVE = (CommandStatus.PENDING, CommandStatus.SENT, CommandStatus.SUCCEEDED)


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
        args = {"manifest_digest": locked.sha256, "delivery": "trust-policy"}
        holding = set(
            DeviceCommand.objects.filter(
                operation="fw_update",
                args__manifest_digest=locked.sha256,
                args__delivery="trust-policy",
                status__in=_LIVE,
            ).values_list("device_id", flat=True)
        )
        devices = list(
            Device.objects.filter(device_class=locked.device_class)
            .exclude(pk__in=holding)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        commands = DeviceCommand.objects.bulk_create(
            [DeviceCommand(device_id=pk, operation="fw_update", args=dict(args)) for pk in devices]
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
