"""Every console page for every role, sign-in, CSRF, and the refusals: the auditor reads
everything and every POST of theirs is 403 before a service runs; a service's refusal is a
message on the page, never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from audit.models import AuditEvent
from campaigns.models import Campaign

ROLES = ["author", "qa", "sec", "ops", "auditor", "admin"]
PAGES = [
    "/",
    "/partials/campaigns/",
    "/campaigns/",
    "/campaigns/+new/",
    "/campaigns/thermo-rollout/",
    "/campaigns/thermo-rollout/?state=pending",
    "/campaigns/thermo-rollout/live/",
    "/campaigns/thermo-rollout/devices/",
    "/campaigns/thermo-rollout/devices/?state=pending&page=1",
    "/releases/",
    "/releases/thermo-1.1.0/",
    "/releases/thermo-1.2.0/",
    "/incident/",
    "/audit/",
    "/audit/?object_type=campaign",
    "/devices/",
    "/devices/?q=dev-0000&online=yes",
    "/devices/dev-00001/",
]
# Every POST the console accepts (its forms); the auditor gets 403 on each.
POSTS = [
    ("/campaigns/+new/", {"spec": "x", "action": "plan"}),
    ("/campaigns/thermo-rollout/pause/", {"reason": "r"}),
    ("/campaigns/thermo-rollout/resume/", {}),
    ("/campaigns/thermo-rollout/abort/", {"reason": "r"}),
    ("/campaigns/thermo-rollout/promote/", {}),
    ("/releases/thermo-1.2.0/approve/", {"role": "qa"}),
    ("/releases/thermo-1.2.0/revoke/", {"reason": "r"}),
    ("/incident/stop/", {"reason": "r", "scope": "global"}),
    ("/incident/revoke/", {"reason": "r"}),
    ("/incident/rollback/", {}),
    ("/incident/stops/1/lift/", {}),
]


@pytest.mark.parametrize("role", ROLES)
def test_every_page_renders_for_every_role(login: Any, campaign: Any, role: str):
    client = login(role)
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 200, (url, role)
        assert b"Traceback" not in response.content


def test_anonymous_users_are_sent_to_login(world: Any):
    client = Client()
    response = client.get("/campaigns/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/campaigns/"
    # An htmx poll after the session ended navigates the page instead of swapping a login form in.
    partial = client.get("/partials/campaigns/", headers={"HX-Request": "true"})
    assert partial.status_code == 204
    assert partial["HX-Redirect"].startswith("/login/")


def test_wrong_password_is_refused_and_login_page_has_csrf_token(world: Any):
    client = Client()
    page = client.get("/login/")
    assert b"csrfmiddlewaretoken" in page.content
    response = client.post("/login/", {"username": "ops", "password": "nope"})
    assert response.status_code == 200
    assert b"didn't match" in response.content


def test_posts_without_a_csrf_token_are_refused(world: Any, campaign: Any):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["ops"])
    response = client.post("/campaigns/thermo-rollout/pause/", {"reason": "r"})
    assert response.status_code == 403
    assert Campaign.objects.get(pk=campaign.pk).status == "running"


def test_every_form_carries_a_csrf_token(login: Any, campaign: Any):
    client = login("admin")
    for url in ["/campaigns/thermo-rollout/", "/releases/thermo-1.2.0/", "/incident/", "/"]:
        html = client.get(url).content.decode()
        forms = html.count('method="post"')
        assert forms and html.count("csrfmiddlewaretoken") == forms, url


@pytest.mark.parametrize(("url", "data"), POSTS, ids=[p[0] for p in POSTS])
def test_auditor_is_read_only_every_post_is_403(
    login: Any, campaign: Any, world: Any, url: str, data: dict[str, str]
):
    from campaigns import services

    services.emergency_stop(actor=world.users["ops"], reason="setup")
    events = AuditEvent.objects.count()
    response = login("auditor").post(url, data)
    assert response.status_code == 403
    assert b"needs one of the roles" in response.content
    assert AuditEvent.objects.count() == events  # no service ran


def test_a_user_without_any_role_sees_nothing(world: Any, django_user_model: Any):
    nobody = django_user_model.objects.create_user(username="nobody", password="x-x-x-x-1")
    client = Client()
    client.force_login(nobody)
    assert client.get("/").status_code == 403
    assert client.get("/audit/").status_code == 403


def test_get_is_not_allowed_on_action_urls(login: Any, campaign: Any):
    assert login("ops").get("/campaigns/thermo-rollout/pause/").status_code == 405


def test_htmx_and_styles_are_served_locally_no_cdn(login: Any, campaign: Any):
    path = finders.find("console/htmx.min.js")
    assert path and Path(path).stat().st_size > 10_000
    assert b"htmx" in Path(path).read_bytes()[:200]
    html = login("ops").get("/").content.decode()
    assert 'src="/static/console/htmx.min.js"' in html
    assert "https://" not in html and "http://" not in html
    assert 'hx-get="/partials/campaigns/" hx-trigger="every 2s [' in html


def test_progress_chart_counts_successes_and_failures_per_minute(login: Any, campaign: Any):
    import datetime as dt

    from django.utils import timezone

    from campaigns.models import Rollout, RolloutState
    from console.selectors import CHART_HEIGHT, CHART_WIDTH, progress_chart

    live = Rollout.objects.filter(campaign=campaign).exclude(state=RolloutState.SKIPPED)
    total = live.count()
    first, second, third = list(live.order_by("pk")[:3])
    t0 = timezone.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=5)
    for rollout, state, at in [
        (first, RolloutState.SUCCEEDED, t0),
        (second, RolloutState.SUCCEEDED, t0),
        (third, RolloutState.FAILED, t0 + dt.timedelta(minutes=1)),
    ]:
        Rollout.objects.filter(pk=rollout.pk).update(state=state, finished_at=at)
    chart = progress_chart(campaign)
    assert chart["minutes"] == 2 and chart["total"] == total
    ok = chart["succeeded"].split()
    bad = chart["failed"].split()
    assert ok[-1] == f"{float(CHART_WIDTH)},{round(CHART_HEIGHT * (1 - 2 / total), 1)}"
    assert bad[1] == f"{CHART_WIDTH / 2},{float(CHART_HEIGHT)}"
    assert bad[-1] == f"{float(CHART_WIDTH)},{round(CHART_HEIGHT * (1 - 1 / total), 1)}"
    page = login("ops").get("/").content.decode()
    assert 'class="progress-chart"' in page and chart["succeeded"] in page
