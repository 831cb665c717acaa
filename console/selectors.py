"""Read-side queries for the console pages (no state changes): progress bars, alerts, the
approvals inbox. Counts come from ``campaigns.selectors`` and the approval tally from
``manifests.selectors.verdict_dict`` (the CLI's ``release show``), so the console shows exactly
what the CLI and the API report."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from campaigns import selectors as campaign_selectors
from campaigns.models import Campaign, CampaignStage, CampaignStatus, EmergencyStop, StageStatus
from campaigns.spec import parse_percent
from manifests.models import Release, ReleaseStatus, Role
from manifests.policy import Verdict
from manifests.selectors import verdict_dict
from manifests.services import (
    approval_capacities,
    delegated_roles,
    release_evaluate,
    roles_of,
)

APPROVING_ROLES = (Role.AUTHOR, Role.QA, Role.SECURITY, Role.FLEET_OPERATOR)
LIVE_STATUSES = (CampaignStatus.RUNNING, CampaignStatus.PAUSED)


def _pct(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


def _shown_status(campaign: Campaign, stage: dict[str, Any]) -> str:
    """The current stage of a paused or aborted campaign is not running, whatever its stored
    status says (the engine leaves it as it was, to pick up on resume): show the campaign's."""
    if (
        stage["current"]
        and campaign.status in (CampaignStatus.PAUSED, CampaignStatus.ABORTED)
        and stage["status"] not in (StageStatus.PENDING, StageStatus.COMPLETED)
    ):
        return str(campaign.status)
    return str(stage["status"])


def stage_rows(campaign: Campaign) -> list[dict[str, Any]]:
    """Per stage: the report's tally and reasons, the spec's thresholds, where the stage stands
    against them, and the widths of its progress bar (shares of the eligible devices)."""
    status = campaign_selectors.campaign_status(campaign)
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
                "status": _shown_status(campaign, stage),
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
    for per_stage in campaign_selectors.stage_reasons(campaign).values():
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
        .select_related("release", "trust_policy", "device_class__vendor")
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
    """Pending releases where the user can still add a signature that counts: a role the policy
    still lacks, in which ``release_approve`` would accept them (``approval_capacities``: held,
    or delegated by a live, in-scope delegation; the author only as author), and which they
    have not signed yet. Left out, because the evaluator would ignore the signature: a person
    already counted for the release, a delegation whose chain above it is broken, and one whose
    delegator already counts. Delegated items name the delegators."""
    if not user.is_authenticated:
        return []
    now = timezone.now()
    if not (roles_of(user, at=now) & set(APPROVING_ROLES) or delegated_roles(user, at=now)):
        return []  # cheap way out on every page for auditors and admins
    items = []
    pending = Release.objects.filter(status=ReleaseStatus.PENDING).select_related(
        "manifest__device_class__vendor"
    )
    for release in pending.order_by("created_at"):
        capacities = approval_capacities(signer=user, release=release, now=now)
        if not capacities:
            continue
        verdict = release_evaluate(release, now=now)
        counted = {c.person for tally in verdict.tally.values() for c in tally.credited}
        if user.pk in counted:
            continue
        signed = set(release.approvals.filter(signer=user).values_list("role", flat=True))
        by_role: dict[str, list[int]] = {}  # role -> delegators ([] when held directly)
        for cap in capacities:
            tally = verdict.tally.get(cap.role)
            if tally is None or tally.missing <= 0 or cap.role in signed or not cap.counts:
                continue
            if cap.delegation is None:
                by_role[cap.role] = []
            elif cap.delegation.delegator not in counted and by_role.get(cap.role) != []:
                by_role.setdefault(cap.role, []).append(cap.delegation.delegator)
        names = _usernames({pk for delegators in by_role.values() for pk in delegators})
        for role, delegators in by_role.items():
            items.append(
                {
                    "release": release,
                    "role": role,
                    "missing": verdict.tally[role].missing,
                    "delegators": sorted({names[pk] for pk in delegators}),
                }
            )
    return items


def _usernames(pks: set[int]) -> dict[int, str]:
    if not pks:
        return {}
    return {u.pk: u.get_username() for u in get_user_model().objects.filter(pk__in=pks)}


def approve_choices(user: AbstractBaseUser, release: Release) -> list[dict[str, Any]]:
    """The roles the release page offers for an upload: those ``release_approve`` would accept
    from the user, one per role, naming the delegators where the role is delegated only."""
    if not user.is_authenticated:
        return []
    choices: dict[str, list[int]] = {}
    for cap in approval_capacities(signer=user, release=release):
        if cap.delegation is None:
            choices[cap.role] = []
        elif choices.get(cap.role) != []:
            choices.setdefault(cap.role, []).append(cap.delegation.delegator)
    names = _usernames({pk for delegators in choices.values() for pk in delegators})
    return [
        {"role": role, "delegators": sorted({names[pk] for pk in choices[role]})}
        for role in APPROVING_ROLES
        if role in choices
    ]


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
