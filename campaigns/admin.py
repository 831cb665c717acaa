"""Admin: browse the fleet and campaigns. Read-only: every change goes through the campaign
services (roles checked, audited), never through admin forms."""

from __future__ import annotations

from django.contrib import admin

from campaigns.models import (
    Campaign,
    CampaignStage,
    Device,
    DeviceGroup,
    EmergencyStop,
    Rollout,
)
from manifests.admin import ReadOnlyAdmin


@admin.register(Device)
class DeviceAdmin(ReadOnlyAdmin):
    list_display = (
        "endpoint",
        "device_class",
        "firmware_version",
        "sequence_number",
        "security_counter",
        "online",
        "last_seen",
        "gateway_id",
    )
    list_filter = ("online", "device_class")
    search_fields = ("endpoint", "serial")


@admin.register(Campaign)
class CampaignAdmin(ReadOnlyAdmin):
    list_display = (
        "name",
        "release",
        "status",
        "current_stage",
        "revision",
        "target_group",
        "created_at",
    )
    list_filter = ("status",)


@admin.register(CampaignStage)
class CampaignStageAdmin(ReadOnlyAdmin):
    list_display = ("campaign", "index", "name", "status", "planned_devices")


@admin.register(Rollout)
class RolloutAdmin(ReadOnlyAdmin):
    list_display = ("campaign", "device", "stage", "state", "reason", "fw_result", "attempts")
    list_filter = ("state", "reason")


@admin.register(EmergencyStop)
class EmergencyStopAdmin(ReadOnlyAdmin):
    list_display = ("pk", "scope", "reason", "created_by", "created_at", "lifted_at")


@admin.register(DeviceGroup)
class DeviceGroupAdmin(ReadOnlyAdmin):
    list_display = ("name", "kind", "filter", "created_by", "created_at")
    list_filter = ("kind",)
    search_fields = ("name",)
