"""The dashboard's fleet view: installed versions per class, what is rolling out where, and a
progress chart with labelled axes; its queries do not grow with the fleet."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from campaigns.models import Device, Rollout, RolloutState
from tests.console.world import make_devices


def test_installed_versions_per_class_with_counts_and_shares(
    login: Any, campaign: Any, world: Any
) -> None:
    Device.objects.filter(endpoint__in=["dev-00000", "dev-00001", "dev-00002", "dev-00003"]).update(
        firmware_version="1.1.0"
    )
    make_devices(world, 2, prefix="old", device_class=world.thermo_v1, firmware_version="0.9.0")
    response = login("auditor").get("/")
    versions = {str(c["device_class"]): c for c in response.context["versions"]}
    thermo = versions[str(world.thermo)]
    assert thermo["total"] == 20
    assert [(v["version"], v["count"], v["share"]) for v in thermo["versions"]] == [
        ("1.0.0", 16, 80.0),
        ("1.1.0", 4, 20.0),
    ]
    assert [(v["version"], v["share"]) for v in versions[str(world.thermo_v1)]["versions"]] == [
        ("0.9.0", 100.0)
    ]
    page = response.content.decode()
    assert f"?class={world.thermo.pk}&amp;version=1.1.0" in page


def test_rolling_out_names_the_campaign_stage_and_progress(login: Any, campaign: Any) -> None:
    now = timezone.now()
    canary = list(Rollout.objects.filter(campaign=campaign, stage=0).order_by("pk"))
    Rollout.objects.filter(pk__in=[r.pk for r in canary[:2]]).update(
        state=RolloutState.SUCCEEDED, finished_at=now - dt.timedelta(minutes=3)
    )
    Rollout.objects.filter(pk=canary[2].pk).update(
        state=RolloutState.FAILED, finished_at=now - dt.timedelta(minutes=1)
    )
    response = login("auditor").get("/")
    (row,) = response.context["rolling"]
    assert row["campaign"] == campaign
    assert (row["stage"]["name"], row["stage_number"], row["stages"]) == ("canary", 1, 2)
    assert (row["succeeded"], row["failed"]) == (2, 1)
    chart = row["chart"]
    assert (chart["succeeded_total"], chart["failed_total"]) == (2, 1)
    assert chart["total"] == row["eligible"]
    page = response.content.decode()
    assert 'id="rolling"' in page and "canary (1/2" in page
    svg = page[page.index('<svg class="axis-chart"') :].split("</svg>", 1)[0]
    assert ">time (UTC)</text>" in svg and ">devices</text>" in svg
    assert 'data-series="succeeded"' in svg and 'data-series="failed"' in svg
    assert len(chart["x_ticks"]) >= 2 and [t.label for t in chart["y_ticks"]][:2] == ["0", "1"]


def test_dashboard_queries_do_not_grow_with_the_fleet(
    login: Any, campaign: Any, world: Any, django_assert_num_queries: Any
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = login("auditor")
    client.get("/")
    with CaptureQueriesContext(connection) as before:
        client.get("/")
    make_devices(world, 300, prefix="more", firmware_version="1.2.3")
    make_devices(world, 30, prefix="v1", device_class=world.thermo_v1)
    with django_assert_num_queries(len(before.captured_queries)):
        response = client.get("/")
    assert len(response.context["versions"]) == 2
