"""Read-side queries for the console pages (no state changes): progress bars, alerts, the
approvals inbox. Counts come from ``campaigns.reports`` and the approval tally from
``manifests.selectors.verdict_dict`` (the CLI's ``release show``), so the console shows exactly
what the CLI and the API report."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from campaigns import reports
from campaigns.models import Campaign, CampaignStage, CampaignStatus, EmergencyStop, StageStatus
from campaigns.spec import parse_percent
from manifests.models import Release, ReleaseStatus, Role
from manifests.policy import Verdict
from manifests.selectors import verdict_dict
from manifests.services import release_evaluate, roles_of

APPROVING_ROLES = (Role.AUTHOR, Role.QA, Role.SECURITY, Role.FLEET_OPERATOR)
LIVE_STATUSES = (CampaignStatus.RUNNING, CampaignStatus.PAUSED)


def _pct(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


def stage_rows(campaign: Campaign) -> list[dict[str, Any]]:
    """Per stage: the report's tally and reasons, the spec's thresholds, where the stage stands
    against them, and the widths of its progress bar (shares of the eligible devices)."""
    status = reports.campaign_status(campaign)
    specs = campaign.spec.get("stages", [])
    rows = []
    for stage in status["stages"]:
        t = stage["tally"]
        rules = specs[stage["index"]] if stage["index"] < len(specs) else {}
        eligible = t["total"] - t["skipped"] - t["cancelled"]
        failed = t["failed"] + t["timed_out"]
        finished = t["succeeded"] + failed
        success = parse_percent(rules.get("success_threshold", "100%"))
        failure = parse_percent(rules.get("failure_threshold", "100%"))
        share = Fraction(failed, finished) if finished else Fraction(0)
        rows.append(
            {
                **stage,
                "rules": rules,
                "eligible": eligible,
                "failed_total": failed,
                "finished": finished,
                "needed": math.ceil(success * eligible) if eligible else 0,
                "failure_share": f"{float(share) * 100:.1f}%",
                "failure_armed": failure < 1,
                "failure_tripped": failure < 1
                and finished >= rules.get("min_finished", 1)
                and share >= failure,
                "bar": {
                    "ok": _pct(t["succeeded"], eligible),
                    "failed": _pct(failed, eligible),
                    "flight": _pct(t["in_flight"], eligible),
                },
            }
        )
    return rows


def reason_breakdown(campaign: Campaign) -> list[tuple[str, str, int]]:
    """(state, reason, count) over all stages, largest first: why devices failed or were
    skipped."""
    totals: dict[str, int] = {}
    for per_stage in reports.stage_reasons(campaign).values():
        for key, n in per_stage.items():
            totals[key] = totals.get(key, 0) + n
    rows = [(*key.split(":", 1), n) for key, n in totals.items()]
    return sorted(rows, key=lambda r: (-r[2], r[0], r[1]))  # type: ignore[return-value]


def active_stops() -> list[EmergencyStop]:
    return list(
        EmergencyStop.objects.filter(lifted_at__isnull=True)
        .select_related("release", "device_class__vendor", "created_by")
        .order_by("-created_at")
    )


CHART_WIDTH, CHART_HEIGHT = 320, 60


def progress_chart(campaign: Campaign) -> dict[str, Any]:
    """Cumulative successes and failures per minute since the campaign began, as SVG polyline
    points (server-rendered; one aggregate query whatever the fleet size)."""
    from django.db.models import Count
    from django.db.models.functions import TruncMinute

    from campaigns.models import Rollout, RolloutState

    rows = (
        Rollout.objects.filter(
            campaign=campaign,
            finished_at__isnull=False,
            state__in=[RolloutState.SUCCEEDED, RolloutState.FAILED, RolloutState.TIMED_OUT],
        )
        .annotate(minute=TruncMinute("finished_at"))
        .values_list("minute", "state")
        .annotate(n=Count("pk"))
        .order_by("minute")
    )
    per_minute: dict[Any, list[int]] = {}
    for minute, state, n in rows:
        slot = per_minute.setdefault(minute, [0, 0])
        slot[0 if state == RolloutState.SUCCEEDED else 1] += n
    total = campaign.rollouts.exclude(state=RolloutState.SKIPPED).count() or 1
    minutes = sorted(per_minute)
    ok = bad = 0
    ok_points, bad_points = [f"0,{CHART_HEIGHT}"], [f"0,{CHART_HEIGHT}"]
    for i, minute in enumerate(minutes, start=1):
        ok += per_minute[minute][0]
        bad += per_minute[minute][1]
        x = round(CHART_WIDTH * i / max(1, len(minutes)), 1)
        ok_points.append(f"{x},{round(CHART_HEIGHT * (1 - ok / total), 1)}")
        bad_points.append(f"{x},{round(CHART_HEIGHT * (1 - bad / total), 1)}")
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "succeeded": " ".join(ok_points),
        "failed": " ".join(bad_points),
        "minutes": len(minutes),
        "total": total,
    }


def live_campaigns() -> list[dict[str, Any]]:
    campaigns = (
        Campaign.objects.filter(status__in=LIVE_STATUSES)
        .select_related("release", "device_class__vendor")
        .order_by("-created_at")
    )
    return [{"campaign": c, "stages": stage_rows(c), "chart": progress_chart(c)} for c in campaigns]


def alerts(user: AbstractBaseUser) -> list[dict[str, str]]:
    """What needs a person now: stops in force, paused campaigns (with the engine's reason),
    stages waiting at a gate, releases waiting for approvals (the user's own first)."""
    found: list[dict[str, str]] = []
    for stop in active_stops():
        found.append(
            {
                "level": "danger",
                "kind": "emergency stop",
                "text": f"{stop.get_scope_display()}: {stop.reason} "
                f"(by {stop.created_by}, {stop.created_at:%Y-%m-%d %H:%M} UTC)",
                "url": "console:incident",
                "arg": "",
            }
        )
    for campaign in Campaign.objects.filter(status=CampaignStatus.PAUSED).order_by("name"):
        who = "by the engine (threshold)" if campaign.paused_by_engine else "by an operator"
        found.append(
            {
                "level": "warning",
                "kind": "paused",
                "text": f"{campaign.name} paused {who}: {campaign.pause_reason}",
                "url": "console:campaign",
                "arg": campaign.name,
            }
        )
    gates = CampaignStage.objects.filter(
        status=StageStatus.WAITING_GATE, campaign__status=CampaignStatus.RUNNING
    ).select_related("campaign")
    for stage in gates:
        gate = stage.campaign.spec["stages"][stage.index].get("gate") or "?"
        found.append(
            {
                "level": "info",
                "kind": "gate",
                "text": f"{stage.campaign.name}: stage {stage.name} is waiting at its gate "
                f"(needs a {gate} to promote)",
                "url": "console:campaign",
                "arg": stage.campaign.name,
            }
        )
    mine = {item["release"].pk for item in approvals_inbox(user)}
    for release in Release.objects.filter(status=ReleaseStatus.PENDING).order_by("name"):
        found.append(
            {
                "level": "info",
                "kind": "approval",
                "text": f"release {release.name} awaits approval"
                + (" — yours is needed" if release.pk in mine else ""),
                "url": "console:release",
                "arg": release.name,
            }
        )
    return found


def approvals_inbox(user: AbstractBaseUser) -> list[dict[str, Any]]:
    """Pending releases where a role the user holds is still short and the user has not yet
    signed in that role (authors only count as authors). Delegated rights are not listed here:
    a delegatee opens the release page and uploads from there."""
    held = roles_of(user) & set(APPROVING_ROLES)
    if not held:
        return []
    items = []
    pending = Release.objects.filter(status=ReleaseStatus.PENDING).select_related(
        "manifest__device_class__vendor"
    )
    for release in pending.order_by("created_at"):
        signed = set(release.approvals.filter(signer=user).values_list("role", flat=True))
        verdict = release_evaluate(release)
        for role, tally in verdict.tally.items():
            if role not in held or role in signed or tally.missing <= 0:
                continue
            if release.created_by_id == user.pk and role != Role.AUTHOR:
                continue
            items.append({"release": release, "role": role, "missing": tally.missing})
    return items


def release_view(release: Release) -> dict[str, Any]:
    """The approval tally (who, when, which key, per role), the uploaded signatures with
    whether each counted, and what is still missing."""
    verdict: Verdict = release_evaluate(release)
    data = verdict_dict(release, verdict)
    counted = {
        sid for tally in verdict.tally.values() for c in tally.credited for sid in c.signatures
    }
    approvals = [
        {
            "approval": a,
            "counted": a.pk in counted,
            "why": verdict.ignored.get(a.pk, ""),
        }
        for a in release.approvals.select_related("signer", "key").order_by("signed_at", "pk")
    ]
    missing = {role: t["missing"] for role, t in data["tally"].items() if t["missing"] > 0}
    return {"verdict": verdict, "data": data, "approvals": approvals, "missing": missing}


def campaigns_for_release(release: Release) -> list[Campaign]:
    return list(Campaign.objects.filter(release=release).order_by("-created_at"))
