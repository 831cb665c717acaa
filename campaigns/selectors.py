"""Campaign queries: the parsed spec of a campaign, stage tallies, and the reports the CLI, API and
console show (status per stage with failure reasons, the incident timeline from the audit log).
Read-only; nothing here changes a row.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from django.db.models import (
    Count,
    OuterRef,
    Subquery,
)
from django.db.models.fields.json import KeyTextTransform
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import clock, stages
from campaigns.models import (
    IN_FLIGHT_STATES,
    Campaign,
    CampaignStatus,
    DeviceCommand,
    Rollout,
    RolloutState,
)
from campaigns.spec import parse_spec, parse_timestamp


def spec_of(campaign: Campaign) -> Any:
    """The spec the campaign runs; a ``target.group`` one is cut to the members it froze."""
    spec = parse_spec(campaign.spec, source=f"campaign {campaign.name} r{campaign.revision}")
    if campaign.target_members is not None:
        spec = spec.narrowed(frozenset(campaign.target_members))
    return spec


def start_at_of(campaign: Campaign) -> dt.datetime | None:
    """The campaign's scheduled start (its spec's ``start_at``), read from the stored canonical
    document without parsing the whole spec (the console lists many campaigns)."""
    value = (campaign.spec or {}).get("start_at")
    return parse_timestamp(value) if value else None


def scheduled_for(campaign: Campaign, *, now: dt.datetime) -> dt.datetime | None:
    """The start the campaign still waits for: its ``start_at`` while that is in the future and
    the campaign neither finished nor was aborted; None once it may dispatch."""
    start_at = start_at_of(campaign)
    if start_at is None or start_at <= now:
        return None
    if campaign.status in (CampaignStatus.COMPLETED, CampaignStatus.ABORTED):
        return None
    return start_at


def dispatch_begun(campaign: Campaign, *, now: dt.datetime) -> bool:
    """Whether the campaign may have dispatched: its start time has come (no ``start_at`` means
    at creation), or a rollout of it was sent at all."""
    start_at = start_at_of(campaign)
    if start_at is None or start_at <= now:
        return True
    return Rollout.objects.filter(campaign=campaign, dispatched_at__isnull=False).exists()


def describe_start(start_at: dt.datetime) -> str:
    """``scheduled for 2026-12-08 08:00 UTC``: how the CLI, the API and the console say it."""
    return f"scheduled for {start_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def stage_tally(campaign: Campaign, index: int) -> stages.StageTally:
    counts = dict(
        Rollout.objects.filter(campaign=campaign, stage=index)
        .values_list("state")
        .annotate(n=Count("pk"))
        .values_list("state", "n")
    )
    return stages.StageTally(
        total=sum(counts.values()),
        pending=counts.get(RolloutState.PENDING, 0),
        in_flight=sum(counts.get(s, 0) for s in IN_FLIGHT_STATES),
        succeeded=counts.get(RolloutState.SUCCEEDED, 0),
        failed=counts.get(RolloutState.FAILED, 0),
        timed_out=counts.get(RolloutState.TIMED_OUT, 0),
        unreachable=counts.get(RolloutState.UNREACHABLE, 0),
        skipped=counts.get(RolloutState.SKIPPED, 0),
        cancelled=counts.get(RolloutState.CANCELLED, 0),
    )


def stage_reasons(campaign: Campaign) -> dict[int, dict[str, int]]:
    """Per stage: count of rollouts by ``state:reason`` for everything not succeeded."""
    rows = (
        Rollout.objects.filter(campaign=campaign)
        .exclude(reason="")
        .values_list("stage", "state", "reason")
        .annotate(n=Count("pk"))
    )
    reasons: dict[int, dict[str, int]] = defaultdict(dict)
    for stage, state, reason, n in rows:
        reasons[stage][f"{state}:{reason}"] = n
    return reasons


def server_time_only(campaign: Campaign) -> dict[str, int]:
    """Rollouts dispatched under the server's use-before check alone (the device had no clock,
    never reported one, or an operator accepted its wrong clock), by that clock state."""
    rows = (
        Rollout.objects.filter(campaign=campaign, device_clock__in=sorted(clock.SERVER_TIME_ONLY))
        .values_list("device_clock")
        .annotate(n=Count("pk"))
        .values_list("device_clock", "n")
    )
    return dict(sorted(rows))


def stage_methods(campaign: Campaign) -> dict[int, dict[str, int]]:
    """Per stage: rollouts dispatched by delivery method (``pull`` / ``push``), read from the
    ``fw_update`` command each rollout was last sent (its ``args.method``). One query."""
    method = Subquery(
        DeviceCommand.objects.filter(pk=OuterRef("command_id"))
        .annotate(method=KeyTextTransform("method", "args"))
        .values("method")[:1]
    )
    rows = (
        Rollout.objects.filter(campaign=campaign, command_id__isnull=False)
        .annotate(method=method)
        .values_list("stage", "method")
        .annotate(n=Count("pk"))
        .order_by()
    )
    methods: dict[int, dict[str, int]] = defaultdict(lambda: {"pull": 0, "push": 0})
    for stage, name, n in rows:
        if name:  # commands written before delivery methods existed name none
            methods[stage][name] = methods[stage].get(name, 0) + n
    return methods


def stage_payloads(campaign: Campaign) -> dict[int, dict[str, int]]:
    """Per stage: rollouts whose last dispatch was a delta, and those that fell back to the
    full image after a failed delta (``Rollout.payload``). One query."""
    rows = (
        Rollout.objects.filter(campaign=campaign)
        .exclude(payload="")
        .values_list("stage", "payload")
        .annotate(n=Count("pk"))
        .order_by()
    )
    payloads: dict[int, dict[str, int]] = defaultdict(lambda: {"delta": 0, "fallback": 0})
    for stage, payload, n in rows:
        payloads[stage][payload] = n
    return payloads


def campaign_status(campaign: Campaign, *, now: dt.datetime | None = None) -> dict[str, Any]:
    reasons = stage_reasons(campaign)
    start_at = start_at_of(campaign)
    waiting = scheduled_for(campaign, now=now or timezone.now())
    methods = stage_methods(campaign)
    payloads = stage_payloads(campaign)
    device_class = campaign.device_class
    return {
        "campaign": campaign.name,
        "status": campaign.status,
        "release": campaign.release.name if campaign.release is not None else None,
        "trust_policy": (
            campaign.trust_policy.version if campaign.trust_policy is not None else None
        ),
        "target": campaign.target_label,
        "revision": campaign.revision,
        "current_stage": campaign.current_stage,
        "pause_reason": campaign.pause_reason,
        "start_at": start_at.isoformat() if start_at else None,
        "scheduled": describe_start(waiting) if waiting else None,
        "server_time_only": server_time_only(campaign),
        "delivery": device_class.delivery,
        "delivery_method": device_class.delivery_method,
        "stages": [
            {
                "name": stage.name,
                "index": stage.index,
                "status": stage.status,
                "current": stage.index == campaign.current_stage,
                "planned": stage.planned_devices,
                "tally": stage_tally(campaign, stage.index).__dict__,
                "reasons": dict(sorted(reasons.get(stage.index, {}).items())),
                "methods": dict(methods.get(stage.index, {"pull": 0, "push": 0})),
                "payloads": dict(payloads.get(stage.index, {"delta": 0, "fallback": 0})),
                "gate_approved_by": stage.gate_approved_by.get_username()
                if stage.gate_approved_by
                else None,
            }
            for stage in campaign.stages.order_by("index").select_related("gate_approved_by")
        ],
    }


def campaign_timeline(campaign: Campaign) -> list[dict[str, Any]]:
    """The incident report: every audited event of the campaign, in order."""
    return [
        {
            "seq": e.seq,
            "at": e.created_at.isoformat(),
            "actor": e.actor,
            "action": e.action,
            "details": e.details,
        }
        for e in AuditEvent.objects.filter(object_type="campaign", object_id=campaign.name)
    ]
