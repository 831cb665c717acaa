"""The incident path with the keyboard alone, in a real browser (Debian's chromium through
Playwright, as ``test_browser.py``): the fleet operator signs in, pauses a campaign, raises an
emergency stop and launches a rollback campaign using only Tab, Shift+Tab, Enter and Space (and
typing text: reasons, names, a select's type-ahead). At every stop along the way the focused
control must show a visible focus ring and have an accessible name; the first Tab of a page
offers a skip link to the main content; a live block refreshing itself never steals focus.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from campaigns.models import Campaign, CampaignStatus, EmergencyStop
from tests.console.test_actions import _rollback_ready
from tests.console.test_browser import (
    CHROMIUM,
    _close_stopped_threads_connections,
    browser_page,
)
from tests.console.world import PASSWORD

__all__ = ["browser_page"]  # the fixture, shared with test_browser.py

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (/usr/bin/chromium): "
        "run `bash scripts/install-system-deps.sh`",
    ),
]

# What the keyboard user sees of the focused element: a ring (outline at least 2 px, not
# "none"), a name a screen reader would read, whether it is on screen and inside <main>.
FOCUS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body || el === document.documentElement) return null;
  const style = getComputedStyle(el);
  let name = el.getAttribute("aria-label") || "";
  if (!name && el.labels && el.labels.length) name = el.labels[0].innerText;
  if (!name && ["A", "BUTTON"].includes(el.tagName)) name = el.innerText;
  const box = el.getBoundingClientRect();
  return {
    tag: el.tagName, id: el.id, name: name.trim(),
    ring: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
    outline: `${style.outlineStyle} ${style.outlineWidth} ${style.outlineColor}`,
    shown: box.width > 0 && box.height > 0 && box.bottom > 0 && box.right > 0,
    in_main: el.closest("main") !== null,
    in_live: el.closest("[hx-trigger]") !== null,
  };
}"""
STEPS = 80  # more Tabs than any page of the path has controls before the one sought


def focused(page: Any) -> dict[str, Any] | None:
    return page.evaluate(FOCUS)


def tab_to(page: Any, wanted: Any, *, back: bool = False) -> dict[str, Any]:
    """Press Tab (Shift+Tab with ``back``) until ``wanted(focus)``; every control passed on
    the way must show its focus and have a name."""
    seen = []
    for _ in range(STEPS):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        focus = focused(page)
        assert focus is not None, f"focus left the page after {seen}"
        assert focus["ring"], f"no visible focus on {focus} (after {seen[-3:]})"
        assert focus["name"], f"a control without an accessible name: {focus}"
        assert focus["shown"], f"focus on something not on screen: {focus}"
        seen.append(focus["name"] or focus["id"])
        if wanted(focus):
            return focus
    raise AssertionError(f"never reached the control; passed {seen}")


def named(text: str) -> Any:
    return lambda focus: focus["name"] == text


def with_id(element_id: str) -> Any:
    return lambda focus: focus["id"] == element_id


@pytest.fixture
def sessions_closed(live_server: Any) -> Iterator[None]:
    """The live server's threads keep their PostgreSQL sessions, which would block dropping
    the test database: end them afterwards (as ``test_browser.py`` does)."""
    yield
    if connection.vendor == "postgresql":
        _close_stopped_threads_connections()


def test_pause_emergency_stop_and_rollback_launch_with_the_keyboard_only(
    live_server: Any, sessions_closed: None, world: Any, campaign: Any, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    rollback_release = _rollback_ready(world)

    # --- sign in ------------------------------------------------------------------------------
    page.goto("/login/")
    assert (focused(page) or {}).get("id") == "id_username"  # the form's autofocus
    page.keyboard.type("ops")
    tab_to(page, with_id("id_password"))
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("header .who")).to_contain_text("ops (")

    # --- the dashboard's live cards refresh without taking focus away ---------------------------
    card_link = tab_to(page, lambda f: f["in_live"] and f["name"] == "thermo-rollout")
    page.wait_for_timeout(4500)  # two refreshes of the cards (every 2 s)
    assert focused(page) == card_link

    # --- pause the campaign ---------------------------------------------------------------------
    page.keyboard.press("Enter")  # follows the card's link
    page.wait_for_url("**/campaigns/thermo-rollout/")
    skip = tab_to(page, lambda f: True)
    assert (skip["name"], skip["in_main"]) == ("Skip to main content", False)
    page.keyboard.press("Enter")
    after_skip = tab_to(page, lambda f: True)
    assert after_skip["in_main"], f"the skip link did not lead into <main>: {after_skip}"
    tab_to(page, named("reason for pausing (optional)"))
    page.keyboard.type("keyboard pass: field reports")
    assert tab_to(page, lambda f: True)["id"] == "action-pause"
    page.keyboard.press("Space")  # the confirmation is accepted (browser_page)
    expect(page.locator("#campaign-status")).to_have_text("paused")
    campaign.refresh_from_db()
    assert (campaign.status, campaign.pause_reason) == (
        CampaignStatus.PAUSED,
        "keyboard pass: field reports",
    )

    # --- emergency stop: back up to the navigation with Shift+Tab ------------------------------
    tab_to(page, with_id("action-resume"))
    tab_to(page, named("Incident"), back=True)
    page.keyboard.press("Enter")
    page.wait_for_url("**/incident/")
    tab_to(page, with_id("stop-reason"))
    page.keyboard.type("reboot loops after 1.2.0")
    assert tab_to(page, lambda f: True)["id"] == "stop-button"
    page.keyboard.press("Enter")
    expect(page.locator("#stop-banner")).to_contain_text("reboot loops after 1.2.0")
    stop = EmergencyStop.objects.get(lifted_at__isnull=True)
    assert (stop.scope, stop.reason) == ("global", "reboot loops after 1.2.0")

    # --- launch the rollback campaign -----------------------------------------------------------
    tab_to(page, with_id("rollback-release"))
    page.keyboard.type("rollback-")  # the select's type-ahead
    tab_to(page, with_id("rollback-replaces"))
    page.keyboard.type("thermo-1.2")
    chosen = page.eval_on_selector_all(
        "#rollback-form select", "els => els.map(e => e.selectedOptions[0].text)"
    )
    assert chosen[0].startswith("rollback-thermo-1.2.0-r2") and chosen[1].startswith(
        "thermo-1.2.0"
    ), chosen
    tab_to(page, with_id("rollback-campaign"))
    page.keyboard.type("thermo-rb-keys")
    assert tab_to(page, lambda f: True)["id"] == "rollback-button"
    page.keyboard.press("Space")
    page.wait_for_url("**/campaigns/thermo-rb-keys/")
    expect(page.locator("ul.messages")).to_contain_text("rollback campaign thermo-rb-keys")
    assert Campaign.objects.get(name="thermo-rb-keys").release == rollback_release
