"""Sending a webhook delivery again (``POST /api/webhook-deliveries/{id}/resend/``, the console's
Re-send button): only finished deliveries, only to an enabled webhook, admins only, audited,
and the receiver sees the same delivery id so it can still drop a duplicate."""

from __future__ import annotations

from typing import Any

import pytest

from api import webhooks
from api.models import DeliveryStatus, Webhook, WebhookDelivery
from audit.models import AuditEvent
from tests.api.test_webhooks import (  # loopback receivers, eager Celery
    SECRET,
    _loopback_receivers_allowed,
    eager,
    receiver_factory,
)

pytestmark = pytest.mark.django_db
__all__ = ["_loopback_receivers_allowed", "eager", "receiver_factory"]


def failed_delivery(url: str, *, status: str = DeliveryStatus.FAILED) -> WebhookDelivery:
    hook = Webhook.objects.create(url=url, secret=SECRET, name="ops")
    return WebhookDelivery.objects.create(
        webhook=hook,
        event_seq=7,
        event_action="campaign.paused",
        payload={"event": "campaign.paused", "seq": 7, "details": {"reason": "canary"}},
        status=status,
        attempts=3,
        response_status=503,
        last_error="HTTP 503: down",
    )


def test_failed_delivery_is_sent_again_with_the_same_id(
    people: dict[str, Any],
    eager: None,
    receiver_factory: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver = receiver_factory([204])
    delivery = failed_delivery(receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        response = people["admin"].client.post(
            f"/api/webhook-deliveries/{delivery.pk}/resend/", format="json"
        )
    assert response.status_code == 202, response.json()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == (
        DeliveryStatus.SUCCEEDED,
        4,
        "",
    )
    assert len(receiver.requests) == 1
    headers = receiver.requests[0]["headers"]
    assert headers[webhooks.DELIVERY_HEADER] == str(delivery.pk)
    event = AuditEvent.objects.get(action="webhook.resend")
    assert (event.object_id, event.actor) == (str(delivery.pk), "admin")
    assert event.details["previous_status"] == DeliveryStatus.FAILED


@pytest.mark.parametrize("status", [DeliveryStatus.PENDING, DeliveryStatus.RETRYING])
def test_delivery_still_in_flight_is_not_sent_twice(people: dict[str, Any], status: str) -> None:
    delivery = failed_delivery("https://hooks.example.com/x", status=status)
    response = people["admin"].client.post(f"/api/webhook-deliveries/{delivery.pk}/resend/")
    assert response.status_code == 409
    assert response.json()["code"] == "webhook.delivery_in_flight"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (status, 3)
    assert not AuditEvent.objects.filter(action="webhook.resend").exists()


def test_delivery_of_a_disabled_webhook_is_refused(people: dict[str, Any]) -> None:
    delivery = failed_delivery("https://hooks.example.com/x")
    Webhook.objects.filter(pk=delivery.webhook_id).update(active=False)
    response = people["admin"].client.post(f"/api/webhook-deliveries/{delivery.pk}/resend/")
    assert response.status_code == 409
    assert response.json()["code"] == "webhook.disabled"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED


@pytest.mark.parametrize(
    ("who", "status"), [("auditor", 403), ("fleet_operator", 403), (None, 401)]
)
def test_only_admins_may_resend(
    people: dict[str, Any], anon: Any, who: str | None, status: int
) -> None:
    delivery = failed_delivery("https://hooks.example.com/x")
    client = anon if who is None else people[who].client
    response = client.post(f"/api/webhook-deliveries/{delivery.pk}/resend/")
    assert response.status_code == status
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
