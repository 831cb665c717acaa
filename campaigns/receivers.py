"""Reactions of the fleet side to release-side events (connected in CampaignsConfig.ready)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from campaigns.device_services import devices_map_to_catalog
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


def on_vendor_created(*, vendor: Any, **_: Any) -> None:
    """Devices that reported this vendor's name before it existed are mapped now (same
    transaction), and unmapped devices whose information was never read are asked again."""
    devices_map_to_catalog(vendor=vendor)


def on_device_class_created(*, device_class: Any, **_: Any) -> None:
    """Devices of the vendor that reported this model before the class existed are mapped now
    (same transaction), so a campaign can enrol them without waiting for a re-registration."""
    devices_map_to_catalog(device_class=device_class)
