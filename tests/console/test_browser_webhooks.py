"""Webhooks in a real browser (Debian's chromium through Playwright) against a live server and
a receiver on loopback: the admin creates a webhook, an emergency stop made from the incident
console is delivered to it and refused by the receiver, and the admin re-sends the failed
delivery from the webhook's page, this time accepted. Keyboard and mouse as a person would."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from api.models import DeliveryStatus, Webhook, WebhookDelivery
from audit.models import AuditEvent
from tests.api.test_webhooks import Receiver
from tests.console.test_browser import (
    CHROMIUM,
    _close_stopped_threads_connections,
    _shot,
    _sign_in,
    browser_page,
)
from tests.console.world import World, build_world

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]
__all__ = ["browser_page"]


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    """Refuses the first delivery (400: failed for good), accepts the next."""
    settings.WEBHOOK_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]
    settings.WEBHOOK_TIMEOUT_SECONDS = 5
    made = Receiver([400, 200])
    yield made
    made.close()


@pytest.fixture
def world(live_server: Any, eager_celery: None, django_user_model: Any) -> Iterator[World]:
    yield build_world(django_user_model)
    # The live server's request threads are gone but their sessions stay open, which would
    # block dropping the test database.
    if connection.vendor == "postgresql":
        _close_stopped_threads_connections()


def test_admin_creates_a_webhook_and_resends_a_failed_delivery_in_the_browser(
    world: World, receiver: Receiver, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    _sign_in(page, "admin")
    page.click("header nav a:has-text('Webhooks')")
    expect(page.locator("#no-webhooks")).to_be_visible()

    # Create: typed, tabbed, submitted with the keyboard.
    page.click("#wh-name")
    page.keyboard.type("pager")
    page.keyboard.press("Tab")
    page.keyboard.type(receiver.url)
    page.keyboard.press("Tab")
    page.keyboard.type("emergency.*")
    page.focus("#webhook-create")
    page.keyboard.press("Enter")
    expect(page.locator(".messages")).to_contain_text("signing secret, shown only now")
    hook = Webhook.objects.get()
    assert (hook.name, hook.url, hook.events, hook.active) == (
        "pager",
        receiver.url,
        ["emergency.*"],
        True,
    )
    expect(page.locator(".messages")).to_contain_text(hook.secret)
    expect(page.locator("#webhook-state")).to_have_text("enabled")
    expect(page.locator("#no-deliveries")).to_be_visible()
    _shot(page, "webhook-created")

    # An emergency stop from the incident console: delivered, refused by the receiver.
    page.click("header nav a:has-text('Incident')")
    page.fill("#stop-reason", "webhook drill")
    page.click("#stop-button")
    expect(page.locator("#stop-banner")).to_contain_text("webhook drill")
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.response_status) == (DeliveryStatus.FAILED, 400)
    assert len(receiver.requests) == 1

    page.click("header nav a:has-text('Webhooks')")
    row = page.locator("#webhooks tr[data-webhook]")
    expect(row.locator("td[data-role=failed]")).to_have_text("1")
    page.click(f"#webhooks a[href='/webhooks/{hook.pk}/'] >> nth=0")
    delivery_row = page.locator(f"#deliveries tr[data-delivery='{delivery.pk}']")
    expect(delivery_row.locator("td[data-role=status]")).to_have_text("Failed for good")
    expect(delivery_row).to_contain_text("HTTP 400: nope")
    _shot(page, "webhook-delivery-failed")

    # Re-send: the receiver now accepts; same delivery id, one more attempt, audited.
    delivery_row.locator("button[data-role=resend]").click()
    expect(page.locator(".messages")).to_contain_text("sent again: delivered (2xx)")
    delivery_row = page.locator(f"#deliveries tr[data-delivery='{delivery.pk}']")
    expect(delivery_row.locator("td[data-role=status]")).to_have_text("Delivered (2xx)")
    expect(delivery_row.locator("td[data-role=attempts]")).to_have_text("2")
    _shot(page, "webhook-delivery-resent")
    assert len(receiver.requests) == 2
    ids = {r["headers"]["X-Fwupd-Delivery"] for r in receiver.requests}
    assert ids == {str(delivery.pk)}
    assert AuditEvent.objects.filter(action="webhook.resend", actor="admin").count() == 1
