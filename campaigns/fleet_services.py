"""Fleet management services: device tags (one device or many), saved device groups, and bulk
provisioning from CSV. Each checks the actor's role (who may provision devices,
``access.OPERATORS``), runs in one transaction and writes one audit event, however many devices
it touches. The rules (tag form, filter keys, CSV format) are the pure ``campaigns.fleet``.

Tags are written with the device rows locked in primary-key order: the gateway's services
(``campaigns.device_services``) lock a device before saving the whole row, so a tag change and
a registration never overwrite each other's fields.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit.services import audit_record
from campaigns.device_services import psk_secret
from campaigns.fleet import (
    DeviceFilter,
    FleetError,
    GroupError,
    GroupExistsError,
    ImportRejectedError,
    RowError,
    TagChange,
    UnknownDevicesError,
    check_endpoint,
    check_group_name,
    parse_import,
)
from campaigns.fleet_selectors import devices_matching, group_named
from campaigns.models import Device, DeviceGroup, DevicePSK, GroupKind
from campaigns.psk import MAX_IDENTITY_BYTES, MAX_PSK_BYTES, encrypt_psk
from manifests.models import DeviceClass
from manifests.services import access, require_role

# Rows per UPDATE / INSERT statement: one statement per batch keeps a bulk change of a large
# fleet at a few dozen queries, each well under PostgreSQL's parameter limit (65,535) at the
# widest row we write (a Device insert binds ~40 parameters: 1,000 x 40 = 40,000).
WRITE_BATCH = 1000
# Endpoints an audit event names by itself; beyond that it records the count only.
AUDIT_ENDPOINTS = 100


@dataclass(frozen=True)
class TagResult:
    matched: int  # devices the selection named
    changed: int  # devices whose tags differ afterwards


@dataclass(frozen=True)
class ImportResult:
    created: int
    with_psk: int
    endpoints: list[str]


def _selection(
    endpoints: list[str] | None, device_filter: DeviceFilter | None
) -> tuple[QuerySet[Device], dict[str, Any]]:
    if (endpoints is None) == (device_filter is None):
        raise FleetError("select devices by a list of endpoints or by a filter (one of them)")
    if device_filter is not None:
        return devices_matching(device_filter), {"filter": device_filter.as_dict()}
    names = sorted({check_endpoint(e) for e in endpoints or []})
    if not names:
        raise FleetError("the list of endpoints is empty")
    described: dict[str, Any] = {"endpoints": names[:AUDIT_ENDPOINTS]}
    if len(names) > AUDIT_ENDPOINTS:
        described["endpoints_truncated"] = True
    return Device.objects.filter(endpoint__in=names), described


def _require_known(missing: list[str]) -> None:
    """Refuse a list naming endpoints the registry does not hold (the first ten named)."""
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise UnknownDevicesError(f"{len(missing)} unknown device(s): {shown}")


def device_tags_change(
    *,
    actor: Any,
    change: TagChange,
    endpoints: list[str] | None = None,
    device_filter: DeviceFilter | None = None,
    now: dt.datetime | None = None,
) -> TagResult:
    """Add/remove tags on, or replace the tags of, the devices an explicit endpoint list or a
    filter selects. A list naming an unknown endpoint changes nothing. One audit event
    (``device.tags``) names the selection, the change and the counts; doing it again changes
    no device (counted as 0 changed) and is audited again as asked."""
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    queryset, selection = _selection(endpoints, device_filter)
    with transaction.atomic():
        rows = list(
            queryset.select_for_update(of=("self",))
            .order_by("pk")
            .values_list("pk", "endpoint", "tags")
        )
        if endpoints is not None:
            _require_known(sorted(set(endpoints) - {endpoint for _, endpoint, _ in rows}))
        updates = []
        for pk, _, tags in rows:
            after = change.apply(tags or [])
            if after != (tags or []):
                updates.append(Device(pk=pk, tags=after, updated_at=now))
        Device.objects.bulk_update(updates, ["tags", "updated_at"], batch_size=WRITE_BATCH)
        audit_record(
            actor=actor,
            action="device.tags",
            object_type="device",
            object_id=selection.get("endpoints", [""])[0] if len(rows) == 1 else "",
            details={
                **selection,
                **change.as_dict(),
                "count": len(rows),
                "changed": len(updates),
            },
            now=now,
        )
    return TagResult(matched=len(rows), changed=len(updates))


def device_group_create(
    *,
    actor: Any,
    name: str,
    description: str = "",
    endpoints: list[str] | None = None,
    device_filter: DeviceFilter | None = None,
    now: dt.datetime | None = None,
) -> DeviceGroup:
    """A saved group: a static list of existing devices, or a saved filter (evaluated when used,
    e.g. when a campaign targeting the group is created). Audited (``device_group.create``)."""
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    check_group_name(name)
    if (endpoints is None) == (device_filter is None):
        raise GroupError("a group is a list of endpoints or a filter (one of them)")
    with transaction.atomic():
        if DeviceGroup.objects.filter(name=name).exists():
            raise GroupExistsError(f"a device group named {name!r} exists already")
        devices: list[int] = []
        if endpoints is not None:
            names = sorted({check_endpoint(e) for e in endpoints})
            if not names:
                raise GroupError("a static group needs at least one endpoint")
            found = dict(Device.objects.filter(endpoint__in=names).values_list("endpoint", "pk"))
            _require_known([e for e in names if e not in found])
            devices = [found[e] for e in names]
        try:
            with transaction.atomic():
                group = DeviceGroup.objects.create(
                    name=name,
                    description=description.strip(),
                    kind=GroupKind.STATIC if endpoints is not None else GroupKind.FILTER,
                    filter=device_filter.as_dict() if device_filter is not None else {},
                    created_by=actor,
                )
        except IntegrityError:
            raise GroupExistsError(f"a device group named {name!r} exists already") from None
        through = DeviceGroup.devices.through
        through.objects.bulk_create(
            [through(devicegroup_id=group.pk, device_id=pk) for pk in devices],
            batch_size=WRITE_BATCH,
        )
        audit_record(
            actor=actor,
            action="device_group.create",
            object_type="device_group",
            object_id=name,
            details={
                "kind": group.kind,
                **({"filter": group.filter} if group.kind == GroupKind.FILTER else {}),
                **({"count": len(devices)} if group.kind == GroupKind.STATIC else {}),
            },
            now=now,
        )
    return group


def device_group_delete(*, actor: Any, name: str, now: dt.datetime | None = None) -> None:
    """Delete a group. Campaigns created from it keep the members they froze at creation."""
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    with transaction.atomic():
        group = group_named(name)
        kind = group.kind
        group.delete()
        audit_record(
            actor=actor,
            action="device_group.delete",
            object_type="device_group",
            object_id=name,
            details={"kind": kind},
            now=now,
        )


def devices_import(
    *, actor: Any, data: bytes | str, source: str = "", now: dt.datetime | None = None
) -> ImportResult:
    """Provision devices from a CSV file (``campaigns.fleet.parse_import``): all or nothing.
    Every problem of every row is collected first (form, duplicates in the file, endpoints the
    registry holds already, unknown classes, the DTLS key rules of ``device_provision``) and
    raised together as ``ImportRejectedError``; otherwise the devices and their keys are
    inserted in batches and one ``device.import`` audit event records the count (never a key).
    """
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    parsed = parse_import(data, max_psk_bytes=MAX_PSK_BYTES, max_identity_bytes=MAX_IDENTITY_BYTES)
    errors = list(parsed.errors)
    rows = parsed.rows
    if not rows:
        raise ImportRejectedError(errors)
    # Rows that read well are checked against the catalog and the registry too, so that one
    # answer lists every problem of the file.
    classes = _classes_named({r.device_class for r in rows if r.device_class})
    for r in rows:
        if r.device_class and r.device_class not in classes:
            errors.append(RowError(r.row, "class", f"no device class {r.device_class!r}"))
    with transaction.atomic():
        existing = _existing_endpoints([r.endpoint for r in rows])
        for r in rows:
            if r.endpoint in existing:
                errors.append(
                    RowError(r.row, "endpoint", "a device with this endpoint exists already")
                )
        if errors:
            raise ImportRejectedError(errors)
        secret = psk_secret()
        try:
            with transaction.atomic():
                created = _insert_devices(rows, classes)
        except IntegrityError:
            raise ImportRejectedError(
                [RowError(0, "endpoint", "a device of the file was created meanwhile; try again")]
            ) from None
        pk_of = {d.endpoint: d.pk for d in created}
        keys = [
            DevicePSK(
                device_id=pk_of[r.endpoint],
                identity=r.endpoint,
                key_encrypted=encrypt_psk(r.psk, secret=secret),
            )
            for r in rows
            if r.psk is not None
        ]
        DevicePSK.objects.bulk_create(keys, batch_size=WRITE_BATCH)
        audit_record(
            actor=actor,
            action="device.import",
            object_type="device",
            object_id="",
            details={
                "source": source,
                "count": len(rows),
                "psk": len(keys),
                "report_key": sum(1 for r in rows if r.report_key),
                "endpoints": [r.endpoint for r in rows[:AUDIT_ENDPOINTS]],
                **({"endpoints_truncated": True} if len(rows) > AUDIT_ENDPOINTS else {}),
            },
            now=now,
        )
    return ImportResult(created=len(rows), with_psk=len(keys), endpoints=[r.endpoint for r in rows])


def _insert_devices(rows: list[Any], classes: dict[str, DeviceClass]) -> list[Device]:
    devices = []
    for r in rows:
        device_class = classes.get(r.device_class or "")
        devices.append(
            Device(
                endpoint=r.endpoint,
                device_class=device_class,
                vendor=device_class.vendor if device_class is not None else None,
                tags=r.tags,
                report_key=r.report_key,
            )
        )
    return Device.objects.bulk_create(devices, batch_size=WRITE_BATCH)


def _classes_named(names: set[str]) -> dict[str, DeviceClass]:
    """The catalog's classes by "vendor-domain/class-name" among ``names`` (one query)."""
    if not names:
        return {}
    domains = {n.partition("/")[0] for n in names}
    return {
        str(c): c
        for c in DeviceClass.objects.select_related("vendor").filter(vendor__domain__in=domains)
        if str(c) in names
    }


def _existing_endpoints(endpoints: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(endpoints), WRITE_BATCH * 10):
        found.update(
            Device.objects.filter(endpoint__in=endpoints[i : i + WRITE_BATCH * 10]).values_list(
                "endpoint", flat=True
            )
        )
    return found
