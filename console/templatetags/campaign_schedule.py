"""``{{ campaign|scheduled }}``: "scheduled for 2026-12-08 08:00 UTC" while a campaign waits for
its ``start_at``, else empty (the card, list and page all say it the same way as the CLI)."""

from __future__ import annotations

from django import template
from django.utils import timezone

from campaigns.models import Campaign
from campaigns.selectors import describe_start, scheduled_for

register = template.Library()


@register.filter
def scheduled(campaign: Campaign) -> str:
    start_at = scheduled_for(campaign, now=timezone.now())
    return describe_start(start_at) if start_at else ""
