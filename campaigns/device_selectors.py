"""Fleet queries over the device registry: the device list's filters and sorts (shared by the
console and the API, so both answer a filter the same way), a device's attempt history, and the
installed versions per class. Read-only.

Built for 100,000 devices and more: every filter and sort is one SQL query the indexes of
``Device`` and ``Rollout`` serve (``campaigns/migrations/0007_device_list_indexes.py``), a
page costs one COUNT and one SELECT whatever its depth, and the latest rollout of each row
comes from a correlated subquery on (device, id), not a query per row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery

from campaigns.models import Device, DeviceCommand, Rollout, RolloutState

NEVER = "none"  # the update-state filter's value for devices never in a campaign
UNMAPPED = "none"  # the class filter's value for devices not mapped to a class
MAX_HOURS = 24 * 365 * 10  # "not seen for more than N hours": ten years is already "never"
MAX_TEXT = 255  # a filter value longer than any endpoint, version or tag is a mistake
ATTEMPT_ROWS = 500  # fw_update commands shown on a device page (newest first)

# Sort key -> ORDER BY, ascending; descending reverses every term, so each order is one scan
# of an index in one direction or the other (last seen: never-seen devices count as the
# stalest, first ascending and last descending, matching ``device_last_seen_idx``).
SORTS: dict[str, tuple[Any, ...]] = {
    "endpoint": (F("endpoint").asc(),),
    "class": (F("device_class_id").asc(), F("endpoint").asc()),
    "version": (F("firmware_version").asc(), F("endpoint").asc()),
    "last_seen": (F("last_seen").asc(nulls_first=True), F("endpoint").asc()),
}
SORT_LABELS = {
    "endpoint": "endpoint",
    "class": "class",
    "version": "version",
    "last_seen": "last seen",
}


class DeviceQueryError(ValueError):
    """A device-list filter or sort value that the list never produces; names the parameter."""

    code = "device.bad_query"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class DeviceQuery:
    """The device list's filters and sort, validated. Empty means "any"."""

    q: str = ""  # endpoint contains
    device_class: str = ""  # a class id, or UNMAPPED
    version: str = ""  # installed firmware version, exactly
    tag: str = ""
    state: str = ""  # the latest rollout's state, or NEVER
    online: bool | None = None
    unseen_hours: int | None = None  # not seen for more than this many hours (or never)
    sort: str = "endpoint"
    descending: bool = False

    def params(self) -> dict[str, str]:
        """The querystring form (only what is set), the inverse of ``device_query_parse``."""
        values = {
            "q": self.q,
            "class": self.device_class,
            "version": self.version,
            "tag": self.tag,
            "state": self.state,
            "online": "" if self.online is None else ("yes" if self.online else "no"),
            "unseen": "" if self.unseen_hours is None else str(self.unseen_hours),
        }
        if (self.sort, self.descending) != ("endpoint", False):
            values["sort"] = f"-{self.sort}" if self.descending else self.sort
        return {k: v for k, v in values.items() if v}


def _text(params: Mapping[str, str], name: str) -> str:
    value = (params.get(name) or "").strip()
    if len(value) > MAX_TEXT:
        raise DeviceQueryError(name, f"longer than {MAX_TEXT} characters")
    if "\x00" in value:
        raise DeviceQueryError(name, "contains a NUL character")
    return value


def device_query_parse(params: Mapping[str, str]) -> DeviceQuery:
    """The list's querystring (``class``, ``version``, ``tag``, ``state``, ``online``,
    ``unseen``, ``sort``, ``q``) as a ``DeviceQuery``; DeviceQueryError names the first value
    that is not one the list offers. Unknown parameters are left to the caller (``page``)."""
    device_class = _text(params, "class")
    if device_class and device_class != UNMAPPED and not device_class.isdigit():
        raise DeviceQueryError("class", f"a class id or {UNMAPPED!r}, not {device_class!r}")
    state = _text(params, "state")
    if state and state != NEVER and state not in RolloutState.values:
        raise DeviceQueryError(
            "state", f"unknown state {state!r}; one of {NEVER}, {', '.join(RolloutState.values)}"
        )
    online_text = _text(params, "online")
    if online_text not in ("", "yes", "no"):
        raise DeviceQueryError("online", f"'yes' or 'no', not {online_text!r}")
    unseen_text = _text(params, "unseen")
    unseen = None
    if unseen_text:
        if not unseen_text.isdigit() or not 1 <= int(unseen_text) <= MAX_HOURS:
            raise DeviceQueryError("unseen", f"hours from 1 to {MAX_HOURS}, not {unseen_text!r}")
        unseen = int(unseen_text)
    sort = _text(params, "sort") or "endpoint"
    key = sort.removeprefix("-")
    if key not in SORTS:
        raise DeviceQueryError("sort", f"one of {', '.join(SORTS)} (a leading - reverses)")
    return DeviceQuery(
        q=_text(params, "q"),
        device_class=device_class,
        version=_text(params, "version"),
        tag=_text(params, "tag"),
        state=state,
        online=None if not online_text else online_text == "yes",
        unseen_hours=unseen,
        sort=key,
        descending=sort.startswith("-"),
    )


def _latest(field: str) -> Subquery:
    return Subquery(Rollout.objects.filter(device=OuterRef("pk")).order_by("-pk").values(field)[:1])


def with_latest_rollout(devices: QuerySet[Device]) -> QuerySet[Device]:
    """Each device with its latest rollout (the newest row: the newest campaign that took it
    in): ``latest_state``, ``latest_reason``, ``latest_fw_result``, ``latest_campaign``."""
    return devices.annotate(
        latest_state=_latest("state"),
        latest_reason=_latest("reason"),
        latest_fw_result=_latest("fw_result"),
        latest_campaign=_latest("campaign__name"),
    )


def filter_update_state(devices: QuerySet[Device], state: str) -> QuerySet[Device]:
    """Devices whose latest rollout is in ``state`` (NEVER: devices no campaign ever took)."""
    if not state:
        return devices
    if state == NEVER:
        return devices.filter(~Exists(Rollout.objects.filter(device=OuterRef("pk"))))
    # From the rollouts' side: those in the state (an index on state) that no newer rollout of
    # their device follows (the (device, id) index), not a latest-rollout lookup per device.
    newer = Rollout.objects.filter(device=OuterRef("device"), pk__gt=OuterRef("pk"))
    latest = Rollout.objects.filter(state=state).filter(~Exists(newer)).values("device_id")
    return devices.filter(pk__in=latest)


def filter_unseen(
    devices: QuerySet[Device], hours: int | None, *, now: dt.datetime
) -> QuerySet[Device]:
    """Devices not seen for more than ``hours`` (never-seen devices included)."""
    if hours is None:
        return devices
    return devices.filter(Q(last_seen__lt=now - dt.timedelta(hours=hours)) | Q(last_seen=None))


def live_registration(now: dt.datetime) -> Q:
    """Online by the registration interface: the registry says online and the registration's
    lifetime has not run out (a device whose gateway went away without reporting the expiry
    is not online). A row with no expiry (made without a Register: imported, or a test's)
    goes by the flag alone. The same rule the gateway applies before adopting a registration
    (``workers.lwm2m.selectors``)."""
    return Q(online=True) & (Q(registration_expires_at=None) | Q(registration_expires_at__gt=now))


def registration_live(device: Device, *, now: dt.datetime) -> bool:
    """``live_registration`` for one device already loaded (the same rule, in Python)."""
    expires = device.registration_expires_at
    return bool(device.online) and (expires is None or expires > now)


def filter_online(
    devices: QuerySet[Device], online: bool | None, *, now: dt.datetime
) -> QuerySet[Device]:
    if online is None:
        return devices
    live = live_registration(now)
    return devices.filter(live if online else ~live)


def _order(query: DeviceQuery) -> tuple[Any, ...]:
    order = SORTS[query.sort]
    if query.descending:
        order = tuple(term.copy().reverse_ordering() for term in order)
    return order


def device_list(*, query: DeviceQuery, now: dt.datetime) -> QuerySet[Device]:
    """The ids of the devices matching ``query``, in its order (the ORDER BY always ends on the
    unique endpoint, so pages never overlap): slice it for a page and pass the slice to
    ``device_rows``. Ids only: PostgreSQL computes a SELECT list for every row an OFFSET skips,
    so the rows' class and latest rollout are looked up for the page's rows alone."""
    devices = Device.objects.all()
    if query.q:
        devices = devices.filter(endpoint__icontains=query.q)
    if query.device_class == UNMAPPED:
        devices = devices.filter(device_class=None)
    elif query.device_class:
        devices = devices.filter(device_class_id=int(query.device_class))
    if query.version:
        devices = devices.filter(firmware_version=query.version)
    devices = filter_online(devices, query.online, now=now)
    devices = devices.tagged(query.tag)
    devices = filter_unseen(devices, query.unseen_hours, now=now)
    devices = filter_update_state(devices, query.state)
    return devices.order_by(*_order(query)).values_list("pk", flat=True)


def device_rows(page: QuerySet[Device], *, query: DeviceQuery) -> list[Device]:
    """The devices of one page of ``device_list`` (a slice of it), in the list's order, with
    their class and latest rollout (``with_latest_rollout``): one query."""
    rows = Device.objects.select_related("device_class__vendor").filter(pk__in=page)
    return list(with_latest_rollout(rows).order_by(*_order(query)))


# The distinct installed versions by a loose index scan of ``device_version_idx``: one index
# probe per distinct version, where SELECT DISTINCT reads every device's row.
_VERSION_SKIP_SCAN = """
WITH RECURSIVE v(version) AS (
    (SELECT firmware_version FROM campaigns_device WHERE firmware_version > ''
     ORDER BY firmware_version LIMIT 1)
    UNION ALL
    SELECT (SELECT d.firmware_version FROM campaigns_device d
            WHERE d.firmware_version > v.version ORDER BY d.firmware_version LIMIT 1)
    FROM v WHERE v.version IS NOT NULL
)
SELECT version FROM v WHERE version IS NOT NULL LIMIT %s
"""


def version_names(*, limit: int) -> list[str]:
    """The installed firmware versions (the first ``limit`` in text order): the version
    filter's suggestions. One query."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_VERSION_SKIP_SCAN, [limit])
            return [row[0] for row in cursor.fetchall()]
    versions = (
        Device.objects.exclude(firmware_version="")
        .values_list("firmware_version", flat=True)
        .distinct()
        .order_by("firmware_version")
    )
    return list(versions[:limit])


def installed_versions() -> list[dict[str, Any]]:
    """Per device class (unmapped devices last): how many devices run each firmware version,
    most common first, with its share of the class. One GROUP BY over the registry."""
    from manifests.models import DeviceClass

    rows = (
        Device.objects.values_list("device_class_id", "firmware_version")
        .annotate(n=Count("pk"))
        .order_by()
    )
    per_class: dict[int | None, list[tuple[str, int]]] = {}
    for class_id, version, n in rows:
        per_class.setdefault(class_id, []).append((version, n))
    classes = DeviceClass.objects.select_related("vendor").in_bulk([k for k in per_class if k])
    result = []
    for class_id, versions in per_class.items():
        total = sum(n for _, n in versions)
        result.append(
            {
                "device_class": classes.get(class_id) if class_id else None,
                "class_id": class_id,
                "total": total,
                "versions": [
                    {"version": v, "count": n, "share": round(100 * n / total, 1)}
                    for v, n in sorted(versions, key=lambda item: (-item[1], item[0]))
                ],
            }
        )
    return sorted(result, key=lambda r: (r["class_id"] is None, str(r["device_class"] or "")))


def device_attempts(device: Device) -> list[dict[str, Any]]:
    """Every rollout of the device across campaigns, newest first, each with its attempts:
    the ``fw_update`` commands sent for it (a retry is a new command). A command belongs to
    the rollout of the newest campaign, created before the command, whose release has the
    manifest the command carried (or whose trust policy it carried). Two queries."""
    rollouts = list(
        Rollout.objects.filter(device=device)
        .select_related("campaign__release__manifest", "campaign__trust_policy", "manifest")
        .order_by("-campaign__created_at", "-pk")
    )
    commands = list(
        DeviceCommand.objects.filter(device=device, operation="fw_update").order_by("-created_at")[
            :ATTEMPT_ROWS
        ]
    )
    attempts: dict[int, list[DeviceCommand]] = {r.pk: [] for r in rollouts}
    for command in commands:
        digest = (command.args or {}).get("manifest_digest")
        for rollout in rollouts:
            campaign = rollout.campaign
            # What the command carried: the manifest's digest, or a trust-policy campaign's
            # policy's (its document's SHA-256).
            if campaign.trust_policy is not None:
                sent = campaign.trust_policy.sha256
            else:
                manifest = rollout.manifest or (
                    campaign.release.manifest if campaign.release is not None else None
                )
                sent = manifest.manifest_digest if manifest is not None else None
            if sent is not None and sent == digest and campaign.created_at <= command.created_at:
                attempts[rollout.pk].append(command)
                break
    # Oldest first within a rollout: attempt 1, 2, ...
    history = [{"rollout": r, "attempts": attempts[r.pk][::-1]} for r in rollouts]
    return history
