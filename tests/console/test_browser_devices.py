"""The device list, a device's page and the dashboard in a real browser (Debian's chromium,
headless, through Playwright; ``tests/console/test_browser.py`` starts it the same way): page
through 450 devices, filter by update state, open a device, come back with the back button to
the same filter, sort by a column, and read the dashboard's chart. Registry rows only (no
gateway): what is tested is the pages."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from campaigns.models import Device, Rollout, RolloutState
from tests.console.test_browser import CHROMIUM, _shot, _sign_in, browser_page
from tests.console.world import build_world, make_devices, make_release, spec_text

__all__ = ["browser_page"]  # the fixture, shared with test_browser.py

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]
FAILED = ("dev-00004", "dev-00123", "dev-00321")


@pytest.fixture
def fleet(transactional_db: None, live_server: Any, django_user_model: Any) -> Any:
    from campaigns import services
    from campaigns.spec import parse_spec

    world = build_world(django_user_model)
    make_release(world, name="thermo-1.1.0", version="1.1.0", sequence=5, counter=2)
    devices = make_devices(world, 450)
    now = timezone.now()
    for i, device in enumerate(devices):
        device.last_seen = now - dt.timedelta(minutes=i, seconds=30)
    Device.objects.bulk_update(devices, ["last_seen"])
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("thermo-rollout"), source="test"), actor=world.users["ops"]
    )
    Rollout.objects.filter(campaign=campaign, device__endpoint__in=FAILED).update(
        state=RolloutState.FAILED,
        reason="integrity_check_failed",
        fw_result=5,
        finished_at=now - dt.timedelta(minutes=2),
    )
    Rollout.objects.filter(campaign=campaign, device__endpoint="dev-00005").update(
        state=RolloutState.SUCCEEDED, fw_result=1, finished_at=now - dt.timedelta(minutes=5)
    )
    return world


def test_filter_page_and_open_a_device_in_the_browser(fleet: Any, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page
    _sign_in(page, "auditor")
    page.click("header a:has-text('Devices')")
    expect(page.locator("#span")).to_have_text("1\u2013200 of 450")
    expect(page.locator("#devices tr[data-device]")).to_have_count(200)

    # --- paging, and the back button returns to the page before -------------------------------
    page.click("#pager a[data-page='next']")
    expect(page.locator("#span")).to_have_text("201\u2013400 of 450")
    expect(page.locator("#devices tr[data-device]").first).to_have_attribute(
        "data-device", "dev-00200"
    )
    page.click("#pager a[data-page='last']")
    expect(page.locator("#span")).to_have_text("401\u2013450 of 450")
    page.go_back()
    expect(page.locator("#span")).to_have_text("201\u2013400 of 450")

    # --- filter by the latest update state ------------------------------------------------------
    page.select_option("select[name=state]", "failed")
    page.click("#device-filters button[type=submit]")
    expect(page.locator("#span")).to_have_text("1\u20133 of 3")
    rows = page.locator("#devices tr[data-device]")
    expect(rows).to_have_count(3)
    expect(rows.first.locator("td[data-role=update]")).to_contain_text(
        "Update failed: integrity check failure"
    )
    assert "state=failed" in page.url
    _shot(page, "devices-filtered")

    # --- a device's page, then back to the same filter ------------------------------------------
    page.click("#devices a:has-text('dev-00123')")
    expect(page.locator("#history")).to_contain_text("Update failed: integrity check failure")
    expect(page.locator("#history")).to_contain_text("thermo-rollout")
    _shot(page, "device-history")
    page.go_back()
    expect(page.locator("#span")).to_have_text("1\u20133 of 3")
    expect(page.locator("select[name=state]")).to_have_value("failed")

    # --- sort by last seen, the filter kept ---------------------------------------------------
    page.click("#devices th a[data-sort='last_seen']")
    expect(page.locator("#devices tr[data-device]").first).to_have_attribute(
        "data-device", "dev-00321"
    )
    page.click("#devices th a[data-sort='last_seen']")  # again: newest first
    expect(page.locator("#devices tr[data-device]").first).to_have_attribute(
        "data-device", "dev-00004"
    )
    assert "state=failed" in page.url and "sort=-last_seen" in page.url

    # --- a querystring the list never produces is refused, not a server error -----------------
    response = page.goto("/devices/?sort=serial")
    assert response is not None and response.status == 400
    expect(page.locator("#query-error")).to_contain_text("sort:")

    # --- the dashboard: versions per class, what rolls out, a chart with axes -----------------
    page.goto("/")
    expect(page.locator("#versions")).to_contain_text("1.0.0")
    expect(page.locator("#rolling tr[data-campaign='thermo-rollout']")).to_contain_text("canary")
    chart = page.locator("figure[data-chart='thermo-rollout'] svg.axis-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("text.axis-label")).to_have_count(2)
    expect(page.locator("figure[data-chart='thermo-rollout'] figcaption")).to_contain_text(
        "1 succeeded, 3 failed"
    )
    _shot(page, "dashboard-fleet")
