"""Query-string filters of the list endpoints (django-filter). Every filter declares its type
so the OpenAPI schema documents it."""

from __future__ import annotations

import django_filters as df
from django.db import connection
from django.db.models import QuerySet

from api.models import DeliveryStatus, WebhookDelivery
from audit.models import AuditEvent
from campaigns.models import Campaign, CampaignStatus, Device, EmergencyStop, Rollout, RolloutState
from manifests.models import (
    Delegation,
    DeviceClass,
    FirmwareImage,
    KeyStatus,
    Manifest,
    PayloadFormat,
    PolicyKind,
    Release,
    ReleaseKind,
    ReleasePolicy,
    ReleaseStatus,
    Role,
    RoleAssignment,
    SigningKey,
    Vendor,
)


class VendorFilter(df.FilterSet):
    domain = df.CharFilter(lookup_expr="iexact")
    name = df.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Vendor
        fields = ["domain", "name"]


class DeviceClassFilter(df.FilterSet):
    vendor = df.NumberFilter(field_name="vendor_id")
    vendor_domain = df.CharFilter(field_name="vendor__domain", lookup_expr="iexact")
    name = df.CharFilter()
    payload_format = df.ChoiceFilter(choices=PayloadFormat.choices)

    class Meta:
        model = DeviceClass
        fields = ["vendor", "vendor_domain", "name", "payload_format"]


class ImageFilter(df.FilterSet):
    kind = df.ChoiceFilter(choices=PayloadFormat.choices)
    version = df.CharFilter()

    class Meta:
        model = FirmwareImage
        fields = ["kind", "version"]


class ManifestFilter(df.FilterSet):
    device_class = df.NumberFilter(field_name="device_class_id")
    vendor = df.NumberFilter(field_name="vendor_id")
    version = df.CharFilter()
    image = df.CharFilter(field_name="image__sha256")
    released = df.BooleanFilter(field_name="release", lookup_expr="isnull", exclude=True)

    class Meta:
        model = Manifest
        fields = ["device_class", "vendor", "version", "image", "released"]


class ReleaseFilter(df.FilterSet):
    status = df.ChoiceFilter(choices=ReleaseStatus.choices)
    kind = df.ChoiceFilter(choices=ReleaseKind.choices)
    device_class = df.NumberFilter(field_name="manifest__device_class_id")
    version = df.CharFilter(field_name="manifest__version")
    created_by = df.CharFilter(field_name="created_by__username")

    class Meta:
        model = Release
        fields = ["status", "kind", "device_class", "version", "created_by"]


class KeyFilter(df.FilterSet):
    owner = df.CharFilter(field_name="owner__username")
    status = df.ChoiceFilter(choices=KeyStatus.choices)

    class Meta:
        model = SigningKey
        fields = ["owner", "status", "algorithm"]


class PolicyFilter(df.FilterSet):
    device_class = df.NumberFilter(field_name="device_class_id")
    kind = df.ChoiceFilter(choices=PolicyKind.choices)

    class Meta:
        model = ReleasePolicy
        fields = ["device_class", "kind"]


class RoleAssignmentFilter(df.FilterSet):
    user = df.CharFilter(field_name="user__username")
    role = df.ChoiceFilter(choices=Role.choices)
    active = df.BooleanFilter(field_name="revoked_at", lookup_expr="isnull")

    class Meta:
        model = RoleAssignment
        fields = ["user", "role", "active"]


class DelegationFilter(df.FilterSet):
    delegator = df.CharFilter(field_name="delegator__username")
    delegatee = df.CharFilter(field_name="delegatees__username")
    role = df.ChoiceFilter(choices=Role.choices)
    revoked = df.BooleanFilter(field_name="revoked_at", lookup_expr="isnull", exclude=True)

    class Meta:
        model = Delegation
        fields = ["delegator", "delegatee", "role", "revoked"]


class DeviceFilter(df.FilterSet):
    device_class = df.NumberFilter(field_name="device_class_id")
    vendor = df.NumberFilter(field_name="vendor_id")
    firmware_version = df.CharFilter()
    online = df.BooleanFilter()
    fw_state = df.NumberFilter(help_text="LwM2M /5/0/3 State (0 idle .. 3 updating)")
    fw_result = df.NumberFilter(help_text="LwM2M /5/0/5 Update Result")
    gateway_id = df.CharFilter()
    tag = df.CharFilter(method="filter_tag", help_text="devices carrying this tag")
    endpoint = df.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Device
        fields = [
            "device_class",
            "vendor",
            "firmware_version",
            "online",
            "fw_state",
            "fw_result",
            "gateway_id",
            "tag",
            "endpoint",
        ]

    def filter_tag(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        # Tags are a JSON list. PostgreSQL answers containment with the index; SQLite has no
        # JSON containment, so rows are narrowed by text first and checked exactly in Python.
        if not value:
            return queryset
        if connection.vendor == "postgresql":
            return queryset.filter(tags__contains=[value])
        candidates = queryset.filter(tags__icontains=value).values_list("pk", "tags")
        keep = [pk for pk, tags in candidates if value in (tags or [])]
        return queryset.filter(pk__in=keep)


class CampaignFilter(df.FilterSet):
    status = df.ChoiceFilter(choices=CampaignStatus.choices)
    release = df.CharFilter(field_name="release__name")
    device_class = df.NumberFilter(field_name="device_class_id")

    class Meta:
        model = Campaign
        fields = ["status", "release", "device_class"]


class RolloutFilter(df.FilterSet):
    campaign = df.CharFilter(field_name="campaign__name")
    stage = df.NumberFilter()
    state = df.ChoiceFilter(choices=RolloutState.choices)
    reason = df.CharFilter()
    device = df.CharFilter(field_name="device__endpoint")

    class Meta:
        model = Rollout
        fields = ["campaign", "stage", "state", "reason", "device"]


class EmergencyStopFilter(df.FilterSet):
    active = df.BooleanFilter(field_name="lifted_at", lookup_expr="isnull")
    scope = df.ChoiceFilter(choices=EmergencyStop.SCOPES)

    class Meta:
        model = EmergencyStop
        fields = ["active", "scope"]


class AuditEventFilter(df.FilterSet):
    action = df.CharFilter(help_text="exact action, e.g. release.approve")
    action_prefix = df.CharFilter(
        field_name="action", lookup_expr="startswith", help_text="e.g. campaign."
    )
    object_type = df.CharFilter()
    object_id = df.CharFilter()
    actor = df.CharFilter()
    since = df.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = df.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    after_seq = df.NumberFilter(field_name="seq", lookup_expr="gt")

    class Meta:
        model = AuditEvent
        fields = [
            "action",
            "action_prefix",
            "object_type",
            "object_id",
            "actor",
            "since",
            "until",
            "after_seq",
        ]


class WebhookDeliveryFilter(df.FilterSet):
    webhook = df.NumberFilter(field_name="webhook_id")
    status = df.ChoiceFilter(choices=DeliveryStatus.choices)
    event_action = df.CharFilter()

    class Meta:
        model = WebhookDelivery
        fields = ["webhook", "status", "event_action"]
