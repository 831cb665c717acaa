"""Console pages of fleet management: a device's tags, tags of many devices at once (the form on
the device list), saved device groups, and the CSV import. Each calls one service of
``campaigns.fleet_services`` (the CLI's and the API's); who may post is who may provision a
device (``OPERATORS``), as everywhere else."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils.http import url_has_allowed_host_and_scheme

from campaigns import fleet_services
from campaigns.fleet import (
    FILTER_KEYS,
    FW_STATES,
    DeviceFilter,
    FleetError,
    ImportRejectedError,
    TagChange,
    split_tags,
)
from campaigns.fleet_selectors import groups_with_counts
from campaigns.models import Device
from console.access import SERVICE_ERRORS, console_view, report_refusal
from console.views import _page
from manifests.models import DeviceClass
from manifests.services.access import OPERATORS

REFUSALS = (*SERVICE_ERRORS, FleetError)


def _filter_from_form(data: Any) -> DeviceFilter | None:
    """The filter fields of a form (class, version, tag, state, online: yes/no); None when
    none is filled in."""
    online = data.get("online", "")
    values: dict[str, Any] = {k: data.get(k, "").strip() or None for k in FILTER_KEYS}
    values["online"] = {"yes": True, "no": False}.get(online)
    if all(v is None for v in values.values()):
        return None
    return DeviceFilter.parse(values)


def _back(request: HttpRequest, default: str) -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return redirect(target)
    return redirect(default)


@console_view(get=None, post=OPERATORS)
def device_tags(request: HttpRequest, endpoint: str) -> HttpResponse:
    """Replace one device's tags with what the form lists (empty: no tags)."""
    device = get_object_or_404(Device, endpoint=endpoint)
    try:
        result = fleet_services.device_tags_change(
            actor=request.user,
            change=TagChange.build(replace=split_tags(request.POST.get("tags", ""))),
            endpoints=[device.endpoint],
        )
    except REFUSALS as exc:
        report_refusal(request, exc)
    else:
        messages.success(request, "tags saved" if result.changed else "tags unchanged (already so)")
    return redirect("console:device", endpoint=device.endpoint)


@console_view(get=None, post=OPERATORS)
def bulk_tags(request: HttpRequest) -> HttpResponse:
    """Add / remove tags on (or replace the tags of) the devices listed or filtered."""
    endpoints = split_tags(request.POST.get("endpoints", "")) or None
    try:
        device_filter = _filter_from_form(request.POST)
        if endpoints and device_filter:
            raise FleetError("list endpoints or fill in the filter, not both")
        if not endpoints and not device_filter:
            raise FleetError("list endpoints or fill in the filter to choose the devices")
        mode = request.POST.get("mode", "add")
        tags = split_tags(request.POST.get("tags", ""))
        change = TagChange.build(
            add=tags if mode == "add" else (),
            remove=tags if mode == "remove" else (),
            replace=tags if mode == "set" else None,
        )
        result = fleet_services.device_tags_change(
            actor=request.user, change=change, endpoints=endpoints, device_filter=device_filter
        )
    except REFUSALS as exc:
        report_refusal(request, exc)
    else:
        selection = str(device_filter) if device_filter else f"{len(endpoints or [])} listed"
        messages.success(
            request,
            f"{result.matched} device(s) selected ({selection}), {result.changed} changed",
        )
    return _back(request, "console:devices")


@console_view(post=OPERATORS)
def device_groups(request: HttpRequest) -> HttpResponse:
    """The saved groups, with a form to create one (a static list or a saved filter)."""
    if request.method == "POST":
        try:
            kind = request.POST.get("kind", "static")
            endpoints = split_tags(request.POST.get("endpoints", "")) if kind == "static" else None
            fleet_services.device_group_create(
                actor=request.user,
                name=request.POST.get("name", "").strip(),
                description=request.POST.get("description", ""),
                endpoints=endpoints,
                device_filter=_filter_from_form(request.POST) if kind == "filter" else None,
            )
        except REFUSALS as exc:
            report_refusal(request, exc)
        else:
            messages.success(request, f"group {request.POST.get('name', '').strip()} created")
        return redirect("console:device-groups")
    rows = [
        {
            "group": group,
            "count": count,
            "definition": (
                "static list"
                if group.kind == "static"
                else f"filter {DeviceFilter.parse(group.filter)}"
            ),
        }
        for group, count in groups_with_counts()
    ]
    return _page(
        request,
        "console/device_groups.html",
        {"rows": rows, "classes": _class_names(), "states": list(FW_STATES)},
    )


@console_view(get=None, post=OPERATORS)
def device_group_delete(request: HttpRequest, name: str) -> HttpResponse:
    try:
        fleet_services.device_group_delete(actor=request.user, name=name)
    except REFUSALS as exc:
        report_refusal(request, exc)
    else:
        messages.success(request, f"group {name} deleted")
    return redirect("console:device-groups")


@console_view(get=OPERATORS, post=OPERATORS)
def device_import(request: HttpRequest) -> HttpResponse:
    """Upload (or paste) a CSV file; all or nothing. A refused file is shown again with every
    row's problem (400)."""
    context: dict[str, Any] = {"errors": [], "pasted": ""}
    if request.method == "POST":
        upload = request.FILES.get("file")
        pasted = request.POST.get("csv", "")
        data: bytes | str = upload.read() if upload is not None else pasted
        source = (upload.name if upload is not None else "") or "console"
        try:
            if not data:
                raise FleetError("choose a CSV file or paste its text")
            result = fleet_services.devices_import(actor=request.user, data=data, source=source)
        except ImportRejectedError as exc:
            context.update(errors=exc.errors, message=str(exc), pasted=pasted)
            return _page(request, "console/device_import.html", context, status=400)
        except REFUSALS as exc:
            report_refusal(request, exc)
            return redirect("console:device-import")
        messages.success(
            request,
            f"imported {result.created} device(s) from {source}; {result.with_psk} with a DTLS PSK",
        )
        return redirect("console:devices")
    return _page(request, "console/device_import.html", context)


def _class_names() -> list[str]:
    return [
        str(c)
        for c in DeviceClass.objects.select_related("vendor").order_by("vendor__domain", "name")
    ]
