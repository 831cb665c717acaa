"""The console's device list: pages, each filter, each sort, refused querystrings, and a
bounded number of queries whatever the fleet size (``console.views_devices``,
``campaigns.device_selectors``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from campaigns.models import Device, Rollout, RolloutState
from tests.console.world import make_devices

PAGE = 200


def _endpoints(response: Any) -> list[str]:
    return [d.endpoint for d in response.context["devices"]]


@pytest.fixture
def fleet(world: Any) -> Any:
    """450 thermo-v2 devices (dev-00000..dev-00449), last seen one minute apart, newest first
    (dev-i i minutes and a half ago: no device sits on a whole-hour boundary)."""
    devices = make_devices(world, 450)
    now = timezone.now()
    for i, device in enumerate(devices):
        device.last_seen = now - dt.timedelta(minutes=i, seconds=30)
    Device.objects.bulk_update(devices, ["last_seen"])
    return world


@pytest.mark.parametrize(
    ("page", "span", "first", "last"),
    [
        ("1", "1\u2013200 of 450", "dev-00000", "dev-00199"),
        ("2", "201\u2013400 of 450", "dev-00200", "dev-00399"),
        ("3", "401\u2013450 of 450", "dev-00400", "dev-00449"),
        ("4", "401\u2013450 of 450", "dev-00400", "dev-00449"),  # past the end: the last page
        ("999999999", "401\u2013450 of 450", "dev-00400", "dev-00449"),
    ],
)
def test_pages_split_the_fleet_at_their_boundaries(
    login: Any, fleet: Any, page: str, span: str, first: str, last: str
) -> None:
    response = login("auditor").get("/devices/", {"page": page})
    assert response.status_code == 200
    assert response.context["span"] == span
    shown = _endpoints(response)
    assert (shown[0], shown[-1]) == (first, last)
    assert span in response.content.decode()


def test_page_links_keep_the_filters_and_the_sort(login: Any, fleet: Any) -> None:
    response = login("auditor").get("/devices/", {"online": "yes", "sort": "-version", "page": 2})
    links = dict(response.context["page_links"])
    assert links["first"] == "?online=yes&sort=-version"
    assert links["previous"] == "?online=yes&sort=-version"
    assert links["next"] == "?online=yes&sort=-version&page=3"
    assert links["last"] == "?online=yes&sort=-version&page=3"


def test_the_pages_together_hold_every_device_once(login: Any, fleet: Any) -> None:
    client = login("auditor")
    seen = []
    for page in (1, 2, 3):
        seen += _endpoints(client.get("/devices/", {"sort": "-last_seen", "page": page}))
    assert len(seen) == len(set(seen)) == 450


def test_filter_by_class_and_unmapped(login: Any, fleet: Any) -> None:
    make_devices(fleet, 3, prefix="old", device_class=fleet.thermo_v1)
    make_devices(fleet, 2, prefix="lost", device_class=None)
    Device.objects.filter(endpoint__startswith="lost").update(device_class=None)
    client = login("auditor")
    old = client.get("/devices/", {"class": fleet.thermo_v1.pk})
    assert _endpoints(old) == ["old-00000", "old-00001", "old-00002"]
    assert _endpoints(client.get("/devices/", {"class": "none"})) == ["lost-00000", "lost-00001"]
    thermo = client.get("/devices/", {"class": fleet.thermo.pk})
    assert thermo.context["page"].paginator.count == 450


def test_filter_by_version_tag_and_endpoint(login: Any, fleet: Any) -> None:
    Device.objects.filter(endpoint__in=["dev-00007", "dev-00300"]).update(
        firmware_version="1.1.0", tags=["lab", "eu"]
    )
    Device.objects.filter(endpoint="dev-00008").update(tags=["laboratory"])
    client = login("auditor")
    assert _endpoints(client.get("/devices/", {"version": "1.1.0"})) == ["dev-00007", "dev-00300"]
    assert _endpoints(client.get("/devices/", {"tag": "lab"})) == ["dev-00007", "dev-00300"]
    found = _endpoints(client.get("/devices/", {"q": "-0030"}))
    assert found == [f"dev-0030{i}" for i in range(10)]
    both = client.get("/devices/", {"version": "1.1.0", "q": "003"})
    assert _endpoints(both) == ["dev-00300"]


def test_filter_online_and_not_seen_for_hours(login: Any, fleet: Any) -> None:
    now = timezone.now()
    Device.objects.filter(endpoint="dev-00001").update(online=False)
    Device.objects.filter(endpoint="dev-00002").update(last_seen=now - dt.timedelta(hours=30))
    Device.objects.filter(endpoint="dev-00003").update(last_seen=None, online=False)
    client = login("auditor")
    assert _endpoints(client.get("/devices/", {"online": "no"})) == ["dev-00001", "dev-00003"]
    assert client.get("/devices/", {"online": "yes"}).context["page"].paginator.count == 448
    # Not seen for more than a day: the one seen 30 h ago and the one never seen.
    assert _endpoints(client.get("/devices/", {"unseen": "24"})) == ["dev-00002", "dev-00003"]
    # Not seen for more than 6 hours: those two and dev-00360..dev-00449.
    six = client.get("/devices/", {"unseen": "6", "page": 1})
    assert six.context["page"].paginator.count == 2 + 90


def test_a_lapsed_registration_counts_as_offline(login: Any, fleet: Any) -> None:
    """Flagged online, but its registration's lifetime ran out with no expiry reported (its
    gateway went away): offline, and the row says why."""
    now = timezone.now()
    Device.objects.filter(endpoint="dev-00011").update(
        registration_expires_at=now - dt.timedelta(minutes=5)
    )
    Device.objects.filter(endpoint="dev-00012").update(
        registration_expires_at=now + dt.timedelta(minutes=5)
    )
    client = login("auditor")
    offline = client.get("/devices/", {"online": "no"})
    assert _endpoints(offline) == ["dev-00011"]
    assert "offline (registration lapsed)" in offline.content.decode()
    online = client.get("/devices/", {"online": "yes", "q": "dev-0001"})
    assert "dev-00011" not in _endpoints(online) and "dev-00012" in _endpoints(online)


def test_filter_by_the_latest_update_state(login: Any, campaign: Any, world: Any) -> None:
    """A device's update state is its latest rollout's; "never" finds devices no campaign
    took in."""
    from campaigns import services
    from campaigns.spec import parse_spec
    from tests.console.world import spec_text

    target = Rollout.objects.get(campaign=campaign, device__endpoint="dev-00004")
    Rollout.objects.filter(pk=target.pk).update(
        state=RolloutState.FAILED, reason="integrity_check_failed", fw_result=5
    )
    make_devices(world, 2, prefix="fresh")
    client = login("auditor")
    failed = client.get("/devices/", {"state": "failed"})
    assert _endpoints(failed) == ["dev-00004"]
    assert "Update failed: integrity check failure" in failed.content.decode()
    assert _endpoints(client.get("/devices/", {"state": "none"})) == ["fresh-00000", "fresh-00001"]
    # A newer campaign takes the device in again: its rollout is now the latest.
    Rollout.objects.filter(campaign=campaign).exclude(pk=target.pk).update(
        state=RolloutState.SUCCEEDED
    )
    services.campaign_abort(campaign=campaign, actor=world.users["ops"], reason="done")
    second, _ = services.campaign_apply(
        spec=parse_spec(spec_text("thermo-second"), source="test"), actor=world.users["ops"]
    )
    assert Rollout.objects.filter(campaign=second, device=target.device_id).exists()
    failed = client.get("/devices/", {"state": "failed"})
    assert "dev-00004" not in _endpoints(failed)
    row = client.get("/devices/", {"q": "dev-00004"}).context["devices"][0]
    assert row.latest_campaign == "thermo-second"


SORTED = {
    "endpoint": ["dev-00000", "dev-00001", "dev-00002", "dev-00003"],
    "-endpoint": ["dev-00449", "dev-00448", "dev-00447", "dev-00446"],
    # dev-00005 runs the highest version, dev-00006 the lowest; the rest in endpoint order.
    "version": ["dev-00006", "dev-00000", "dev-00001", "dev-00002"],
    "-version": ["dev-00005", "dev-00449", "dev-00448", "dev-00447"],
    # never-seen first when ascending (the stalest), last when descending.
    "last_seen": ["dev-00009", "dev-00449", "dev-00448", "dev-00447"],
    "-last_seen": ["dev-00000", "dev-00001", "dev-00002", "dev-00003"],
    "class": ["dev-00000", "dev-00001", "dev-00002", "dev-00003"],
    "-class": ["dev-00010", "dev-00449", "dev-00448", "dev-00447"],
}


@pytest.mark.parametrize("sort", SORTED)
def test_each_column_sorts_both_ways(login: Any, fleet: Any, sort: str) -> None:
    Device.objects.filter(endpoint="dev-00005").update(firmware_version="2.0.0")
    Device.objects.filter(endpoint="dev-00006").update(firmware_version="0.9.0")
    Device.objects.filter(endpoint="dev-00009").update(last_seen=None)
    Device.objects.filter(endpoint="dev-00010").update(device_class=fleet.thermo_v1)
    response = login("auditor").get("/devices/", {"sort": sort})
    assert _endpoints(response)[:4] == SORTED[sort]
    if sort == "-class":
        # v1 was created after v2: its id is larger, so it comes first in reverse.
        assert fleet.thermo_v1.pk > fleet.thermo.pk


def test_sort_links_reverse_the_current_column(login: Any, fleet: Any) -> None:
    sorts = login("auditor").get("/devices/", {"sort": "version", "online": "yes"}).context["sorts"]
    assert sorts["version"]["url"] == "?online=yes&sort=-version"
    assert sorts["version"]["arrow"] == "\u25b2"
    assert sorts["last_seen"]["url"] == "?online=yes&sort=last_seen"
    assert sorts["endpoint"]["url"] == "?online=yes"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page": "two"}, "page"),
        ({"page": "1" * 12}, "page"),
        ({"sort": "serial"}, "sort"),
        ({"sort": "--endpoint"}, "sort"),
        ({"state": "exploded"}, "state"),
        ({"online": "maybe"}, "online"),
        ({"unseen": "0"}, "unseen"),
        ({"unseen": "1.5"}, "unseen"),
        ({"unseen": "99999999"}, "unseen"),
        ({"class": "thermo"}, "class"),
        ({"version": "1\x00"}, "version"),
        ({"tag": "x" * 300}, "tag"),
    ],
)
def test_a_querystring_the_list_never_produces_is_refused_with_its_reason(
    login: Any, fleet: Any, params: dict[str, str], field: str
) -> None:
    response = login("auditor").get("/devices/", params)
    assert response.status_code == 400
    assert response.context["error"].startswith(f"{field}: ")
    assert 'id="query-error"' in response.content.decode()
    assert response.context["devices"] == []


def test_an_unknown_class_id_finds_nothing_rather_than_failing(login: Any, fleet: Any) -> None:
    response = login("auditor").get("/devices/", {"class": "999999"})
    assert response.status_code == 200
    assert response.context["span"] == "0 of 0"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"page": "2", "sort": "-last_seen"},
        {"state": "pending", "online": "yes", "tag": "lab", "unseen": "1", "version": "1.0.0"},
        {"class": "none", "sort": "version"},
    ],
)
def test_a_page_costs_the_same_queries_at_any_fleet_size(
    login: Any, campaign: Any, world: Any, django_assert_num_queries: Any, params: Any
) -> None:
    """One COUNT and one SELECT for the rows (with class and latest rollout joined or
    subqueried), not one query per device: the same count at 20 devices and at 620."""
    client = login("auditor")
    client.get("/devices/", params)  # warm the session and the user
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as small:
        assert client.get("/devices/", params).status_code == 200
    make_devices(world, 600, prefix="more", tags=["lab"])
    with django_assert_num_queries(len(small.captured_queries)):
        response = client.get("/devices/", params)
    assert response.status_code == 200
    assert len(small.captured_queries) <= 16
