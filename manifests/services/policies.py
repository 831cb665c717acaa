"""Setting a release policy (per device class and kind, or the global default). Which policy
applies is ``manifests.services.facts.policy_for``, read by the evaluator; a change re-evaluates
the releases it covers in the same transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from manifests.errors import InvalidPolicyError
from manifests.models import DeviceClass, PolicyKind, ReleasePolicy
from manifests.policy import PolicyError, validate_policy
from manifests.services.access import ADMINS, require_role
from manifests.services.releases import releases_reevaluate


def policy_set(
    *,
    device_class: DeviceClass | None,
    kind: str,
    rules: dict[str, Any],
    actor: Any,
    now: dt.datetime | None = None,
) -> ReleasePolicy:
    now = now or timezone.now()
    if kind not in PolicyKind.values:
        raise InvalidPolicyError(f"policy kind must be one of {PolicyKind.values}, not {kind!r}")
    try:
        clean = validate_policy(rules)
    except PolicyError as exc:
        raise InvalidPolicyError(str(exc)) from exc
    with transaction.atomic():
        require_role(actor, *ADMINS, at=now)
        current = (
            ReleasePolicy.objects.select_for_update()
            .filter(device_class=device_class, kind=kind)
            .first()
        )
        before = current.rules if current else None
        if current is None:
            current = ReleasePolicy.objects.create(
                device_class=device_class, kind=kind, rules=clean, updated_by=actor, updated_at=now
            )
        else:
            current.rules, current.updated_by, current.updated_at = clean, actor, now
            current.save(update_fields=["rules", "updated_by", "updated_at"])
        audit_record(
            actor=actor,
            action="policy.set",
            object_type="policy",
            object_id=f"{kind}:{device_class.pk if device_class else 'default'}",
            details={
                "device_class": str(device_class) if device_class else None,
                "kind": kind,
                "before": before,
                "after": clean,
            },
            now=now,
        )
        releases_reevaluate(device_class=device_class, now=now, actor=actor)
        return current
