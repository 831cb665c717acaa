"""Celery tasks of the api app: thin, take ids, safe to run twice."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from api import webhooks


@shared_task(bind=True, acks_late=True, max_retries=None)
def webhook_deliver_task(self: Any, delivery_id: str) -> str:
    """Deliver one webhook event. Transient failures (connection, timeout, 5xx) are retried
    with exponential backoff up to WEBHOOK_MAX_ATTEMPTS; permanent ones (4xx, redirects) fail
    at once. The outcome is recorded on the delivery row and never raised, so a caller running
    tasks eagerly is never failed by a receiver."""
    if self.request.is_eager:
        # Embedded mode and tests: Celery's eager retry is cut short by eager propagation, so
        # the same attempts run here in a loop, without waiting out the backoff.
        outcome = webhooks.RETRY
        for attempt in range(settings.WEBHOOK_MAX_ATTEMPTS):
            outcome = webhooks.deliver_once(delivery_id, attempt=attempt)
            if outcome != webhooks.RETRY:
                break
        return outcome
    outcome = webhooks.deliver_once(delivery_id, attempt=self.request.retries)
    if outcome == webhooks.RETRY:
        raise self.retry(countdown=webhooks.backoff_seconds(self.request.retries))
    return outcome
