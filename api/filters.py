"""Query-string filters of the list endpoints (django-filter). Every filter declares its type
so the OpenAPI schema documents it, and refuses what its type does not admit: a value that is
not an integer in the column's range, a boolean spelled otherwise than true/false, a parameter
given with no value. django-filter's defaults ignore all three silently (``vendor=`` and
``online=maybe`` filter nothing, ``vendor=1.9`` matches 1), so a typo would quietly widen a
query; the strict fields below answer 400 naming the parameter instead."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import django_filters as df
from django import forms
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field

from api.models import DeliveryStatus, WebhookDelivery
from audit.models import AuditEvent
from campaigns import device_selectors
from campaigns.fleet import UnknownGroupError
from campaigns.fleet_selectors import group_devices, group_named
from campaigns.models import (
    Campaign,
    CampaignStatus,
    Device,
    EmergencyStop,
    Rollout,
    RolloutState,
)
from manifests.models import (
    Delegation,
    DeviceClass,
    DeviceTrustPolicy,
    FirmwareImage,
    ImageEncryptionKey,
    KeyStatus,
    Manifest,
    PayloadEncryptionKey,
    PayloadFormat,
    PayloadKeyStatus,
    PolicyKind,
    Release,
    ReleaseKind,
    ReleasePolicy,
    ReleaseStatus,
    Role,
    RoleAssignment,
    SigningKey,
    TrustPolicyStatus,
    Vendor,
)

# Primary keys are 64-bit (BigAutoField); a larger number names no row and overflows the
# database driver, so it is refused like any other malformed id.
ID_MAX = 2**63 - 1
SMALL_MAX = 32767  # PositiveSmallIntegerField (LwM2M states and results, stage index)
_INTEGER = re.compile(r"-?[0-9]+")


class StrictIntegerField(forms.IntegerField):
    """An integer written as digits only: no fraction, no exponent, no whitespace padding."""

    def to_python(self, value: Any) -> int | None:
        if value in self.empty_values:
            return None
        if not isinstance(value, str) or not _INTEGER.fullmatch(value):
            raise forms.ValidationError("Enter a whole number.", code="invalid")
        if len(value) > 25:  # far beyond any bound below; int() of huge strings is slow
            raise forms.ValidationError("Enter a whole number in range.", code="max_value")
        return int(value)


class StrictBooleanField(forms.Field):
    """``true`` / ``false`` (or 1 / 0); anything else is refused, not read as "no filter"."""

    MEANINGS = {"true": True, "1": True, "false": False, "0": False}

    def to_python(self, value: Any) -> bool | None:
        if value in self.empty_values:
            return None
        meaning = self.MEANINGS.get(str(value).lower())
        if meaning is None:
            raise forms.ValidationError("Enter true or false.", code="invalid")
        return meaning

    def validate(self, value: Any) -> None:
        return None  # False is a value, not a missing one


class StrictIsoDateTimeField(df.fields.IsoDateTimeField):
    """ISO 8601 with a UTC equivalent: ``9999-12-31T23:59:59-14:00`` parses but lies past
    the last datetime in UTC, where the database compares it (an overflow, not a miss)."""

    def to_python(self, value: Any) -> Any:
        parsed = super().to_python(value)
        if parsed is not None and timezone.is_aware(parsed):
            try:
                parsed.astimezone(dt.UTC)
            except OverflowError:
                raise forms.ValidationError(
                    "Datetime value out of range.", code="overflow"
                ) from None
        return parsed


class IsoDateTimeFilter(df.IsoDateTimeFilter):
    field_class = StrictIsoDateTimeField


class IntegerFilter(df.NumberFilter):
    field_class = StrictIntegerField

    def __init__(self, *args: Any, min_value: int = 0, max_value: int = ID_MAX, **kwargs: Any):
        super().__init__(*args, min_value=min_value, max_value=max_value, **kwargs)
        # The OpenAPI parameter states the same bounds (drf-spectacular reads this override).
        extend_schema_field(
            {
                "type": "integer",
                "format": "int64" if max_value > 2**31 - 1 else "int32",
                "minimum": min_value,
                "maximum": max_value,
            }
        )(self)


class IdFilter(IntegerFilter):
    """A foreign key filter by the referenced row's id."""

    def __init__(self, field_name: str, **kwargs: Any) -> None:
        super().__init__(field_name=field_name, min_value=1, max_value=ID_MAX, **kwargs)


class BooleanFilter(df.BooleanFilter):
    field_class = StrictBooleanField


class StrictFilterSet(df.FilterSet):
    """A parameter present with an empty value (``until=``, ``status=``) is refused: it would
    otherwise mean "no filter", the opposite of what whoever wrote it asked for. So is one
    holding a NUL character."""

    EMPTY_MESSAGE = "give a value, or leave the parameter out"
    NUL_MESSAGE = "NUL characters are not accepted"

    def is_valid(self) -> bool:
        valid = super().is_valid()
        empty = [
            name
            for name in self.filters
            if name in self.data and not any(v.strip() for v in self.data.getlist(name))
        ]
        for name in empty:
            self.form.add_error(name, forms.ValidationError(self.EMPTY_MESSAGE, code="blank"))
        # PostgreSQL refuses NUL in text: a value with one can match nothing, and would fail
        # the query instead of missing.
        nul = [
            name
            for name in self.filters
            if name not in empty and any("\x00" in v for v in self.data.getlist(name))
        ]
        for name in nul:
            self.form.add_error(name, forms.ValidationError(self.NUL_MESSAGE, code="null"))
        return valid and not empty and not nul


class VendorFilter(StrictFilterSet):
    domain = df.CharFilter(lookup_expr="iexact")
    name = df.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Vendor
        fields = ["domain", "name"]


class DeviceClassFilter(StrictFilterSet):
    vendor = IdFilter("vendor_id")
    vendor_domain = df.CharFilter(field_name="vendor__domain", lookup_expr="iexact")
    name = df.CharFilter()
    payload_format = df.ChoiceFilter(choices=PayloadFormat.choices)

    class Meta:
        model = DeviceClass
        fields = ["vendor", "vendor_domain", "name", "payload_format"]


class ImageFilter(StrictFilterSet):
    kind = df.ChoiceFilter(choices=PayloadFormat.choices)
    version = df.CharFilter()

    class Meta:
        model = FirmwareImage
        fields = ["kind", "version"]


class ManifestFilter(StrictFilterSet):
    device_class = IdFilter("device_class_id")
    vendor = IdFilter("vendor_id")
    version = df.CharFilter()
    image = df.CharFilter(field_name="image__sha256")
    released = BooleanFilter(field_name="release", lookup_expr="isnull", exclude=True)

    class Meta:
        model = Manifest
        fields = ["device_class", "vendor", "version", "image", "released"]


class ReleaseFilter(StrictFilterSet):
    status = df.ChoiceFilter(choices=ReleaseStatus.choices)
    kind = df.ChoiceFilter(choices=ReleaseKind.choices)
    device_class = IdFilter("manifest__device_class_id")
    version = df.CharFilter(field_name="manifest__version")
    created_by = df.CharFilter(field_name="created_by__username")

    class Meta:
        model = Release
        fields = ["status", "kind", "device_class", "version", "created_by"]


class KeyFilter(StrictFilterSet):
    owner = df.CharFilter(field_name="owner__username")
    status = df.ChoiceFilter(choices=KeyStatus.choices)

    class Meta:
        model = SigningKey
        fields = ["owner", "status", "algorithm"]


class PayloadKeyFilter(StrictFilterSet):
    device_class = IdFilter("device_class_id")
    status = df.ChoiceFilter(choices=PayloadKeyStatus.choices)

    class Meta:
        model = PayloadEncryptionKey
        fields = ["device_class", "status"]


class ImageKeyFilter(StrictFilterSet):
    device_class = IdFilter("device_class_id")
    status = df.ChoiceFilter(choices=PayloadKeyStatus.choices)

    class Meta:
        model = ImageEncryptionKey
        fields = ["device_class", "status", "kind"]


class PolicyFilter(StrictFilterSet):
    device_class = IdFilter("device_class_id")
    kind = df.ChoiceFilter(choices=PolicyKind.choices)

    class Meta:
        model = ReleasePolicy
        fields = ["device_class", "kind"]


class TrustPolicyFilter(StrictFilterSet):
    device_class = IdFilter("device_class_id")
    status = df.ChoiceFilter(choices=TrustPolicyStatus.choices)

    class Meta:
        model = DeviceTrustPolicy
        fields = ["device_class", "status"]


class RoleAssignmentFilter(StrictFilterSet):
    user = df.CharFilter(field_name="user__username")
    role = df.ChoiceFilter(choices=Role.choices)
    active = BooleanFilter(field_name="revoked_at", lookup_expr="isnull")

    class Meta:
        model = RoleAssignment
        fields = ["user", "role", "active"]


class DelegationFilter(StrictFilterSet):
    delegator = df.CharFilter(field_name="delegator__username")
    delegatee = df.CharFilter(field_name="delegatees__username")
    role = df.ChoiceFilter(choices=Role.choices)
    revoked = BooleanFilter(field_name="revoked_at", lookup_expr="isnull", exclude=True)

    class Meta:
        model = Delegation
        fields = ["delegator", "delegatee", "role", "revoked"]


class DeviceFilter(StrictFilterSet):
    device_class = IdFilter("device_class_id")
    vendor = IdFilter("vendor_id")
    firmware_version = df.CharFilter()
    online = BooleanFilter(
        method="filter_online",
        help_text="online by the registration: flagged online and its lifetime not run out",
    )
    fw_state = IntegerFilter(
        max_value=SMALL_MAX, help_text="LwM2M /5/0/3 State (0 idle .. 3 updating)"
    )
    fw_result = IntegerFilter(max_value=SMALL_MAX, help_text="LwM2M /5/0/5 Update Result")
    gateway_id = df.CharFilter()
    tag = df.CharFilter(method="filter_tag", help_text="devices carrying this tag")
    endpoint = df.CharFilter(lookup_expr="icontains")
    # The console device list's filters, answered by the same selectors.
    update_state = df.ChoiceFilter(
        choices=[(device_selectors.NEVER, "never in a campaign"), *RolloutState.choices],
        method="filter_update_state",
        help_text="the state of the device's latest rollout (none: never in a campaign)",
    )
    unseen_hours = IntegerFilter(
        min_value=1,
        max_value=device_selectors.MAX_HOURS,
        method="filter_unseen",
        help_text="devices not seen for more than this many hours (never-seen ones included)",
    )
    group = df.CharFilter(method="filter_group", help_text="members of this device group now")

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
            "update_state",
            "unseen_hours",
            "group",
        ]

    def filter_update_state(
        self, queryset: QuerySet[Device], name: str, value: str
    ) -> QuerySet[Device]:
        return device_selectors.filter_update_state(queryset, value)

    def filter_online(self, queryset: QuerySet[Device], name: str, value: bool) -> QuerySet[Device]:
        return device_selectors.filter_online(queryset, value, now=timezone.now())

    def filter_unseen(self, queryset: QuerySet[Device], name: str, value: int) -> QuerySet[Device]:
        return device_selectors.filter_unseen(queryset, value, now=timezone.now())

    def filter_group(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        # An unknown group selects nothing (a filter, not a lookup: no 404).
        try:
            group = group_named(value)
        except UnknownGroupError:
            return queryset.none()
        return queryset.filter(pk__in=group_devices(group).values("pk"))

    def filter_tag(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        return queryset.tagged(value)  # type: ignore[attr-defined]


class CampaignFilter(StrictFilterSet):
    status = df.ChoiceFilter(choices=CampaignStatus.choices)
    release = df.CharFilter(field_name="release__name")
    device_class = IdFilter("device_class_id")

    class Meta:
        model = Campaign
        fields = ["status", "release", "device_class"]


class RolloutFilter(StrictFilterSet):
    campaign = df.CharFilter(field_name="campaign__name")
    stage = IntegerFilter(max_value=SMALL_MAX)
    state = df.ChoiceFilter(choices=RolloutState.choices)
    reason = df.CharFilter()
    device = df.CharFilter(field_name="device__endpoint")

    class Meta:
        model = Rollout
        fields = ["campaign", "stage", "state", "reason", "device"]


class EmergencyStopFilter(StrictFilterSet):
    active = BooleanFilter(field_name="lifted_at", lookup_expr="isnull")
    scope = df.ChoiceFilter(choices=EmergencyStop.SCOPES)

    class Meta:
        model = EmergencyStop
        fields = ["active", "scope"]


class AuditEventFilter(StrictFilterSet):
    action = df.CharFilter(help_text="exact action, e.g. release.approve")
    action_prefix = df.CharFilter(
        field_name="action", lookup_expr="startswith", help_text="e.g. campaign."
    )
    object_type = df.CharFilter()
    object_id = df.CharFilter()
    actor = df.CharFilter()
    since = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    after_seq = IntegerFilter(field_name="seq", lookup_expr="gt")

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


class WebhookDeliveryFilter(StrictFilterSet):
    webhook = IdFilter("webhook_id")
    status = df.ChoiceFilter(choices=DeliveryStatus.choices)
    event_action = df.CharFilter()

    class Meta:
        model = WebhookDelivery
        fields = ["webhook", "status", "event_action"]
