"""The campaign page: its device table refreshes itself (htmx polls a fragment that keeps the
filter and the page, in a constant number of queries), and the creation form's URL cannot be
shadowed by a campaign, whatever its name."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import resolve

from campaigns.models import Campaign, Rollout, RolloutState
from tests.console.world import make_devices, spec_text

LIVE = "/campaigns/thermo-rollout/devices/"


def _rows(response: Any) -> list[tuple[str, str]]:
    return [(r.device.endpoint, r.state) for r in response.context["rollouts"]]


def test_the_device_table_polls_a_fragment_that_keeps_filter_and_page(
    login: Any, campaign: Any, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("console.views.DEVICE_ROWS", 8)
    client = login("auditor")
    page = client.get("/campaigns/thermo-rollout/?state=pending&page=2").content.decode()
    assert (
        f'<div id="device-table" hx-get="{LIVE}?state=pending&amp;page=2" '
        'hx-trigger="every 2s [!this.contains(document.activeElement)]" hx-swap="outerHTML">'
    ) in page
    # Nothing reconciles here: all 20 devices are pending.
    first = client.get(LIVE, {"state": "pending"})
    assert first.context["page"].paginator.count == 20 and len(_rows(first)) == 8
    second = client.get(LIVE, {"state": "pending", "page": "2"})
    assert _rows(second) == [
        (r.device.endpoint, "pending")
        for r in Rollout.objects.filter(campaign=campaign)
        .select_related("device")
        .order_by("stage", "device__endpoint")[8:16]
    ]
    html = second.content.decode()
    # The fragment carries the same polling URL, so the next swap keeps filter and page.
    assert f'hx-get="{LIVE}?state=pending&amp;page=2"' in html
    assert 'href="/campaigns/thermo-rollout/?state=pending&amp;page=3" data-page="next"' in html
    assert "<html" not in html  # a fragment, not a page

    # A device changes state: the next poll shows it, filtered as the page asked.
    moved = Rollout.objects.filter(campaign=campaign).order_by("pk").first()
    Rollout.objects.filter(pk=moved.pk).update(state=RolloutState.SUCCEEDED)
    done = client.get(LIVE, {"state": "succeeded"})
    assert _rows(done) == [(moved.device.endpoint, "succeeded")]
    assert client.get(LIVE, {"state": "pending"}).context["page"].paginator.count == 19


def test_a_page_past_the_end_shows_the_last_one(
    login: Any, campaign: Any, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("console.views.DEVICE_ROWS", 8)
    response = login("ops").get(LIVE, {"page": "9"})
    assert response.status_code == 200
    assert response.context["page"].number == 3 and len(_rows(response)) == 4


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"state": "exploded"}, b"unknown state 'exploded'"),
        ({"page": "0"}, b"page must be a whole number from 1, not '0'"),
        ({"page": "two"}, b"page must be a whole number from 1, not 'two'"),
        ({"page": "\u00b2"}, b"page must be a whole number from 1"),
    ],
)
def test_a_bad_filter_or_page_is_a_400_that_says_why(
    login: Any, campaign: Any, query: dict[str, str], message: bytes
):
    client = login("ops")
    for url in (LIVE, "/campaigns/thermo-rollout/"):
        response = client.get(url, query)
        assert response.status_code == 400, url
        assert message in response.content, url


def test_the_device_fragment_costs_the_same_queries_for_more_devices(
    login: Any, campaign: Any, world: Any, django_assert_num_queries: Any
):
    client = login("ops")
    client.get(LIVE)  # warm the session
    with CaptureQueriesContext(connection) as few:
        assert len(_rows(client.get(LIVE))) == 20
    extra = make_devices(world, 60, prefix="more")
    Rollout.objects.bulk_create(
        [Rollout(campaign=campaign, device=d, stage=1, bucket=i) for i, d in enumerate(extra)]
    )
    with django_assert_num_queries(len(few.captured_queries)):
        assert len(_rows(client.get(LIVE))) == 80


def test_a_campaign_named_new_and_the_creation_form_both_work(login: Any, world: Any):
    make_devices(world, 4)
    client = login("ops")
    form = client.get("/campaigns/+new/")
    assert form.status_code == 200 and b'id="spec-input"' in form.content
    applied = client.post(
        "/campaigns/+new/", {"spec": spec_text("new"), "action": "apply"}, follow=True
    )
    assert applied.redirect_chain[-1][0] == "/campaigns/new/"
    assert applied.context["campaign"].name == "new"
    page = client.get("/campaigns/new/")
    assert page.status_code == 200 and page.context["campaign"] == Campaign.objects.get()
    assert b"<h1>Campaign new</h1>" in page.content
    assert client.get("/campaigns/new/live/").status_code == 200
    assert resolve("/campaigns/new/").url_name == "campaign"
    listing = client.get("/campaigns/").content.decode()
    assert 'href="/campaigns/+new/" id="new-campaign"' in listing


def test_stages_are_numbered_from_one_in_the_device_tables(login: Any, campaign: Any):
    client = login("auditor")
    table = client.get(LIVE).content.decode()
    assert '<td>1</td><td data-role="state">' in table
    assert '<td>0</td><td data-role="state">' not in table
    for index in (0, 1):
        rollout = Rollout.objects.filter(campaign=campaign, stage=index).first()
        device = client.get(f"/devices/{rollout.device.endpoint}/").content.decode()
        assert f"thermo-rollout</a></td><td>{index + 1}</td>" in device


@pytest.mark.parametrize(("action", "state"), [("pause", "paused"), ("abort", "aborted")])
def test_the_current_stage_of_a_stopped_campaign_shows_the_campaigns_state(
    login: Any, campaign: Any, world: Any, action: str, state: str
):
    from campaigns import engine, services

    engine.campaign_reconcile(campaign.pk)
    assert campaign.stages.get(index=0).status == "running"
    act = getattr(services, f"campaign_{action}")
    act(campaign=campaign, actor=world.users["ops"], reason="looking")
    live = login("auditor").get("/campaigns/thermo-rollout/live/")
    shown = {row["name"]: row["status"] for row in live.context["stages"]}
    assert shown == {"canary": state, "all": "pending"}
    assert f'<td data-role="stage-status">{state}' in live.content.decode()
