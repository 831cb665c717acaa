"""The dashboard's fleet view (read-only): installed versions per class, what is rolling out
where, and each live campaign's progress over time as a chart with axes (``console.charts``).
A bounded number of queries: one GROUP BY over the registry, one aggregate per live campaign."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Count, Q
from django.db.models.functions import TruncHour, TruncMinute

from campaigns.device_selectors import installed_versions
from campaigns.models import Campaign, Rollout, RolloutState
from console import charts

__all__ = ["campaign_progress", "installed_versions", "rolling_out"]

FINISHED = (RolloutState.SUCCEEDED, RolloutState.FAILED, RolloutState.TIMED_OUT)
# Past this span the chart counts per hour, not per minute: a week of minutes is 10,080
# points, more than a 640-pixel chart can show.
HOURLY_AFTER = dt.timedelta(days=2)


def rolling_out(live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per live campaign (``console.selectors.live_campaigns`` items, no further query): its
    class, release, current stage (numbered from 1) and progress over all stages."""
    rows = []
    for item in live:
        campaign, stages = item["campaign"], item["stages"]
        current = next((s for s in stages if s["current"]), stages[0] if stages else None)
        eligible = sum(s["eligible"] for s in stages)
        succeeded = sum(s["tally"]["succeeded"] for s in stages)
        failed = sum(s["failed_total"] for s in stages)
        in_flight = sum(s["tally"]["in_flight"] for s in stages)
        rows.append(
            {
                "campaign": campaign,
                "stage": current,
                "stage_number": (current["index"] + 1) if current else 0,
                "stages": len(stages),
                "eligible": eligible,
                "succeeded": succeeded,
                "failed": failed,
                "in_flight": in_flight,
                "done_share": round(100 * succeeded / eligible, 1) if eligible else 0.0,
                "bar": {
                    "ok": round(100 * succeeded / eligible, 1) if eligible else 0.0,
                    "failed": round(100 * failed / eligible, 1) if eligible else 0.0,
                    "flight": round(100 * in_flight / eligible, 1) if eligible else 0.0,
                },
            }
        )
    return rows


def campaign_progress(campaign: Campaign, *, now: dt.datetime, total: int) -> dict[str, Any]:
    """Succeeded and failed devices of the campaign over time, from its creation to its end
    (or ``now``): one aggregate query, per minute (per hour past ``HOURLY_AFTER``); ``total``:
    the devices it can update (the dashboard's eligible count)."""
    end = campaign.finished_at or now
    start = campaign.created_at
    trunc = TruncHour if end - start > HOURLY_AFTER else TruncMinute
    rows = (
        Rollout.objects.filter(campaign=campaign, finished_at__isnull=False, state__in=FINISHED)
        .annotate(slot=trunc("finished_at"))
        .values("slot")
        .annotate(
            ok=Count("pk", filter=Q(state=RolloutState.SUCCEEDED)),
            bad=Count("pk", filter=~Q(state=RolloutState.SUCCEEDED)),
        )
        .order_by("slot")
    )
    series = [(row["slot"], row["ok"], row["bad"]) for row in rows]
    if series:
        start = min(start, series[0][0])
    return charts.progress_chart(series, start=start, end=end, total=total)
