"""Saved device groups: a named set of devices, either a static list or a saved filter.

A group is a campaign target (``target.group`` in the spec). Its membership is resolved and
frozen when the campaign is created (``Campaign.target_members``), so a group edited, refilled
by newly provisioned devices or deleted later never changes a running campaign's population.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

__all__ = ["DeviceGroup", "GroupKind"]


class GroupKind(models.TextChoices):
    STATIC = "static", "Static list"
    FILTER = "filter", "Saved filter"


class DeviceGroup(models.Model):
    # Same pattern as campaign names ([a-z0-9][a-z0-9-]{0,62}), so a spec can name it.
    name = models.CharField(max_length=63, unique=True)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=8, choices=GroupKind.choices)
    # A saved filter (``campaigns.device_filter``; canonical form); {} for a static group.
    filter = models.JSONField(default=dict, blank=True)
    # The members of a static group; a device deleted from the registry leaves it.
    devices = models.ManyToManyField("campaigns.Device", related_name="groups", blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="device_groups"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
