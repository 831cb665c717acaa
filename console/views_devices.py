"""The fleet pages of the console: the device list (filters, sorts and pages, all in the
querystring so links and the back button keep them) and a device's page (every attempt of every
campaign, the gateway's events, in words). Queries are ``campaigns.device_selectors``, the API's
device filters too; sentences are ``campaigns.wording``."""

from __future__ import annotations

import re
from typing import Any, cast
from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone

from campaigns import clock, wording
from campaigns import device_selectors as fleet
from campaigns.models import Device, DeviceEvent, RolloutState
from campaigns.spec import DEFAULT_MAX_CLOCK_SKEW
from console.access import console_view
from console.views import _page
from manifests.models import DeviceClass

DEVICE_ROWS = 200  # rows per page of the device list ("201-400 of 100,140")
EVENT_ROWS = 100  # a device's events (newest first)
VERSION_CHOICES = 200  # installed versions offered in the version filter's list
# "Not seen for more than ..." choices of the last-seen filter (any whole number of hours is
# accepted in the querystring).
UNSEEN_CHOICES = ((1, "1 hour"), (6, "6 hours"), (24, "a day"), (168, "a week"), (720, "30 days"))
PAGE = re.compile(r"[1-9][0-9]{0,8}")


def _clock_text(device: Device) -> str:
    """The device's clock state against the default tolerance (a campaign may set another),
    and whether an operator accepted it."""
    state = clock.clock_state(
        device_time=device.device_time,
        offset_seconds=device.clock_offset_seconds,
        max_skew=DEFAULT_MAX_CLOCK_SKEW,
    )
    if state == clock.OFF and device.clock_offset_seconds is not None:
        state = f"off ({clock.describe_offset(device.clock_offset_seconds)})"
    return f"{state}, accepted" if device.clock_trusted_at else state


def _update_text(device: Any) -> str:
    if device.latest_state is None:
        return "never in a campaign"
    return wording.rollout_text(
        state=device.latest_state,
        reason=device.latest_reason or "",
        fw_result=device.latest_fw_result,
    )


def _filter_choices() -> dict[str, Any]:
    return {
        "classes": list(DeviceClass.objects.select_related("vendor").order_by("pk")),
        "versions": fleet.version_names(limit=VERSION_CHOICES),
        "states": [(fleet.NEVER, "never in a campaign"), *RolloutState.choices],
        "unseen_choices": UNSEEN_CHOICES,
        "unmapped": fleet.UNMAPPED,
    }


def _sort_links(query: fleet.DeviceQuery) -> dict[str, dict[str, str]]:
    """Per sortable column: the link that sorts by it (reversing the order when it already
    sorts by it) and the arrow showing the current order."""
    links = {}
    for key in fleet.SORTS:
        current = query.sort == key
        descending = current and not query.descending
        params = {**query.params(), "sort": f"-{key}" if descending else key}
        if params["sort"] == "endpoint":
            del params["sort"]
        links[key] = {
            "url": "?" + urlencode(params),
            "arrow": ("▼" if query.descending else "▲") if current else "",
            "label": fleet.SORT_LABELS[key],
        }
    return links


@console_view()
def device_list(request: HttpRequest) -> HttpResponse:
    """One page of the fleet: one COUNT and one SELECT (the page's ids in a subquery, the rows
    with their class and latest rollout around it) whatever the page's depth. A filter, sort or
    page value the list never offers is refused (400, the form stays to correct it); a page
    past the end shows the last page."""
    context: dict[str, Any] = {**_filter_choices(), "device_rows": DEVICE_ROWS}
    try:
        query = fleet.device_query_parse(request.GET)
        number = request.GET.get("page", "1").strip() or "1"
        if not PAGE.fullmatch(number):
            raise fleet.DeviceQueryError("page", f"a whole number from 1, not {number!r}")
    except fleet.DeviceQueryError as exc:
        context.update(error=str(exc), query=fleet.DeviceQuery(), devices=[], sorts={})
        return _page(request, "console/devices.html", context, status=400)
    now = timezone.now()
    paginator = Paginator(fleet.device_list(query=query, now=now), DEVICE_ROWS)
    page = paginator.get_page(int(number))
    ids = cast("QuerySet[Device]", page.object_list)
    rows = fleet.device_rows(ids, query=query) if paginator.count else []
    for device in rows:
        device.clock = _clock_text(device)  # type: ignore[attr-defined]
        device.update_text = _update_text(device)  # type: ignore[attr-defined]
        device.lapsed = device.online and not fleet.registration_live(  # type: ignore[attr-defined]
            device, now=now
        )
    params = query.params()

    def link(n: int) -> str:
        return "?" + urlencode({**params, "page": n} if n > 1 else params)

    links = []
    if page.has_previous():
        links += [("first", link(1)), ("previous", link(page.previous_page_number()))]
    if page.has_next():
        links += [("next", link(page.next_page_number())), ("last", link(paginator.num_pages))]
    count = paginator.count
    context.update(
        query=query,
        devices=rows,
        page=page,
        page_links=links,
        sorts=_sort_links(query),
        params=params,
        unseen_custom=query.unseen_hours is not None
        and query.unseen_hours not in dict(UNSEEN_CHOICES),
        span=(
            f"{page.start_index():,}\u2013{page.end_index():,} of {count:,}" if count else "0 of 0"
        ),
    )
    return _page(request, "console/devices.html", context)


@console_view()
def device_detail(request: HttpRequest, endpoint: str) -> HttpResponse:
    device = get_object_or_404(
        Device.objects.select_related("device_class__vendor", "vendor"), endpoint=endpoint
    )
    history = fleet.device_attempts(device)
    for item in history:
        rollout = item["rollout"]
        item["text"] = wording.rollout_text(
            state=rollout.state, reason=rollout.reason, fw_result=rollout.fw_result
        )
        item["payload"] = wording.payload_text(rollout.payload) if rollout.payload else ""
        item["attempt_rows"] = [
            {
                "number": n,
                "command": command,
                "method": (command.args or {}).get("method", ""),
                "delta": bool((command.args or {}).get("delta_sha256")),
                "text": wording.attempt_text(
                    status=command.status,
                    result=command.result or {},
                    error_code=command.error_code,
                    error=command.error,
                ),
            }
            for n, command in enumerate(item["attempts"], start=1)
        ]
    events = [
        {"event": e, "text": wording.event_text(e.kind, e.data or {})}
        for e in DeviceEvent.objects.filter(device=device).order_by("-id")[:EVENT_ROWS]
    ]
    return _page(
        request,
        "console/device.html",
        {
            "device": device,
            "clock": _clock_text(device),
            "reported_time": (
                "-" if device.device_time is None else clock.format_reported(device.device_time)
            ),
            "fw_state_text": wording.fw_state_text(device.fw_state),
            "fw_result_text": wording.update_result_text(device.fw_result),
            "history": history,
            "rollouts": [item["rollout"] for item in history],
            "events": events,
            "event_rows": EVENT_ROWS,
        },
    )
