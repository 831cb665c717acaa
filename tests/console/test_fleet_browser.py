"""Fleet management in a real browser (Debian's chromium through Playwright, as
``test_browser.py``): the fleet operator imports devices from a CSV file (a bad file first: every
row's problem is shown and nothing is written), tags the imported devices in bulk from the device
list by a filter, edits one device's tags on its page, and saves a group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from audit.models import AuditEvent
from campaigns.device_services import device_psk_lookup
from campaigns.models import Device, DeviceGroup
from tests.console import test_browser
from tests.console.test_browser import CHROMIUM, _shot, _sign_in
from tests.console.world import build_world, make_devices

# The browser fixture of the console's browser tests (a headless chromium page on live_server).
browser_page = test_browser.browser_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]

KEY = bytes(range(16))
GOOD = (
    "endpoint,class,tags,psk_identity,psk_key\n"
    + "".join(f"imp-{i},acme.example/thermo-v2,eu,,\n" for i in range(1, 5))
    + f"imp-5,acme.example/thermo-v2,eu;lab,imp-5,{KEY.hex()}\n"
)
BAD = GOOD + "imp-2,,,,\nimp-6,acme.example/nope,e/u,,\n"


def test_import_then_bulk_tag_in_the_browser(
    live_server: Any, browser_page: Any, django_user_model: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    world = build_world(django_user_model)
    make_devices(world, 3)  # dev-00000.. already registered, untagged
    page = browser_page
    _sign_in(page, "ops")

    # A bad file: refused as a whole, every problem listed with its row.
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD)
    page.click("header nav a:has-text('Import')")
    page.set_input_files("#import-file", str(bad))
    page.click("#import-button")
    errors = page.locator("#import-errors")
    expect(errors).to_contain_text("nothing written")
    expect(errors.locator("tr")).to_have_count(3)  # header + two rows
    expect(errors).to_contain_text("duplicate of row 3")
    expect(errors).to_contain_text("not a tag")
    _shot(page, "fleet-import-refused")
    assert not Device.objects.filter(endpoint__startswith="imp-").exists()

    # The good file, pasted this time.
    page.fill("#import-text", GOOD)
    page.click("#import-button")
    page.wait_for_url("**/devices/")
    expect(page.locator("ul.messages")).to_contain_text("imported 5 device(s)")
    assert device_psk_lookup(identity="imp-5") == KEY

    # Bulk tag from the device list: every device tagged eu gets wave-1.
    page.click("#bulk-tags summary")
    page.fill("#bulk-tag", "eu")
    page.select_option("#bulk-mode", "add")
    page.fill("#bulk-tags-input", "wave-1")
    _shot(page, "fleet-bulk-tags")
    page.click("#bulk-tags-button")
    expect(page.locator("ul.messages")).to_contain_text("5 device(s) selected (tag=eu), 5 changed")
    assert sorted(
        Device.objects.filter(tags__contains=["wave-1"]).values_list("endpoint", flat=True)
    ) == [f"imp-{i}" for i in range(1, 6)]
    event = AuditEvent.objects.get(action="device.tags")
    assert event.details["filter"] == {"tag": "eu"} and event.details["count"] == 5

    # One device's tags on its page.
    page.goto("/devices/dev-00001/")
    page.fill("#device-tags-input", "lab; pilot")
    page.click("#device-tags-button")
    expect(page.locator("#device-tags")).to_have_text("lab, pilot")

    # A saved filter group.
    page.click("header nav a:has-text('Groups')")
    page.fill("#group-name", "wave-one")
    page.check("#group-kind-filter")
    page.fill("#group-new input[name=tag]", "wave-1")
    page.click("#group-create")
    row = page.locator("#groups tr[data-group='wave-one']")
    expect(row.locator("td[data-role=count]")).to_have_text("5")
    _shot(page, "fleet-groups")
    assert DeviceGroup.objects.get(name="wave-one").filter == {"tag": "wave-1"}


@pytest.fixture(autouse=True)
def _end_live_server_sessions(live_server: Any) -> Any:
    """The live server's thread keeps its PostgreSQL session, which would block dropping the
    test database (as ``test_browser``'s deployment fixture, after the test)."""
    yield
    if connection.vendor == "postgresql":
        test_browser._close_stopped_threads_connections()
