"""Reactions of the fleet side to release-side events (connected in CampaignsConfig.ready)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from campaigns.engine import engine_pause
from campaigns.models import Campaign, CampaignStatus
from campaigns.services import abort_campaign


def on_release_revoked(*, release: Any, reason: str, **_: Any) -> None:
    """Revocation stops the release's campaigns and cancels their in-flight work."""
    now = timezone.now()
    for campaign in Campaign.objects.filter(
        release=release, status__in=[CampaignStatus.RUNNING, CampaignStatus.PAUSED]
    ):
        abort_campaign(campaign, actor="engine", reason=f"release revoked: {reason}", now=now)


def on_release_approval_lost(*, release: Any, reason: str, **_: Any) -> None:
    """A release that no longer meets its policy pauses its running campaigns."""
    now = timezone.now()
    for campaign in Campaign.objects.filter(release=release, status=CampaignStatus.RUNNING):
        engine_pause(campaign, f"release approval lost: {reason}", now)
