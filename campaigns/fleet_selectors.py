"""Fleet queries: the devices a filter or a saved group selects. Read-only."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from campaigns.fleet import FW_STATES, DeviceFilter, UnknownGroupError
from campaigns.models import Device, DeviceGroup, GroupKind


def devices_matching(device_filter: DeviceFilter) -> QuerySet[Device]:
    devices = Device.objects.all()
    if device_filter.device_class is not None:
        domain, _, name = device_filter.device_class.partition("/")
        devices = devices.filter(device_class__vendor__domain=domain, device_class__name=name)
    if device_filter.version is not None:
        devices = devices.filter(firmware_version=device_filter.version)
    if device_filter.state is not None:
        devices = devices.filter(fw_state=FW_STATES[device_filter.state])
    if device_filter.online is not None:
        devices = devices.filter(online=device_filter.online)
    if device_filter.tag is not None:
        devices = devices.tagged(device_filter.tag)
    return devices


def group_devices(group: DeviceGroup) -> QuerySet[Device]:
    """The devices a group holds now: its list, or what its saved filter selects today."""
    if group.kind == GroupKind.STATIC:
        return Device.objects.filter(groups=group)
    return devices_matching(DeviceFilter.parse(group.filter))


def group_named(name: str) -> DeviceGroup:
    group = DeviceGroup.objects.filter(name=name).first()
    if group is None:
        raise UnknownGroupError(f"no device group named {name!r}")
    return group


def group_member_endpoints(name: str) -> list[str]:
    """The sorted endpoints of the named group now (what a campaign created now freezes)."""
    return sorted(group_devices(group_named(name)).values_list("endpoint", flat=True))


def groups_with_counts() -> list[tuple[DeviceGroup, int]]:
    """Every group with its current member count (one query per saved-filter group: filters
    differ, so they cannot share one; static groups are counted in a single query)."""
    groups = list(DeviceGroup.objects.select_related("created_by").order_by("name"))
    static_counts = _static_counts()
    return [
        (g, static_counts.get(g.pk, 0) if g.kind == GroupKind.STATIC else group_devices(g).count())
        for g in groups
    ]


def _static_counts() -> dict[int, int]:
    through = DeviceGroup.devices.through
    return dict(
        through.objects.values_list("devicegroup_id")
        .annotate(n=Count("pk"))
        .values_list("devicegroup_id", "n")
    )
