"""Celery tasks of the device side: thin shells over ``campaigns.device_services``.

``device_events_task`` is how gateways report (registrations, Object 5 status, command results),
a batch of one gateway's events at a time; ``device_event_task`` applies a single event;
``device_command_task`` routes a stored command to the gateway holding the device.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError, transaction

from campaigns import device_services
from campaigns.engine import campaign_reconcile
from campaigns.events import EventError, event_from_dict
from campaigns.rollouts import rollouts_apply_event
from campaigns.trust_delivery import trust_policy_apply_event
from ops import tallies
from ops.logs import log_context
from workers.lwm2m.errors import LwM2MError

logger = logging.getLogger(__name__)


# A database that cannot be reached (restarting, failing over, refusing connections) is waited
# for: the task runs again with a growing pause (capped at 30 s, jittered), up to 40 times
# (about 20 minutes), instead of failing and being acknowledged with its work undone. The
# tasks are idempotent, so running one again after a partial attempt changes nothing twice.
DATABASE_RETRY: dict[str, Any] = {
    "acks_late": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 40,
}


def _apply_event(data: dict[str, Any]) -> None:
    event = event_from_dict(data)  # EventError for anything outside the contract
    device_services.device_event_apply(event=event)
    rollouts_apply_event(event=event)
    trust_policy_apply_event(event=event)


@shared_task(**DATABASE_RETRY)
def device_event_task(event: dict[str, Any]) -> None:
    """Apply one gateway event to the registry, then to the device's rollout, in one
    transaction. Idempotent: the services ignore stale and repeated events."""
    with log_context(device=_endpoint(event)), transaction.atomic():
        _apply_event(event)
    now = time.time()
    tallies.events_applied(count=1, lag_seconds=event_lag([event], now=now), now=now)


@shared_task(**DATABASE_RETRY)
def device_events_task(events: list[dict[str, Any]]) -> int:
    """Apply a batch of one gateway's events, in their order, in one transaction: one commit
    for the batch instead of several per event (a commit waits for the disk). Each event runs
    in its own savepoint, so one that fails is rolled back alone and logged while the others
    are kept; the first such error is raised after the commit, and the sender retries the
    batch (applying an event again changes nothing). An event outside the contract
    (``campaigns.events.EventError``) is logged and dropped: no retry can make it valid.
    Returns the number of events."""
    error: Exception | None = None
    with transaction.atomic():
        _lock_devices(events)
        for event in events:
            with log_context(device=_endpoint(event)):
                try:
                    with transaction.atomic():
                        _apply_event(event)
                except EventError as exc:
                    # Outside the contract: applying it again cannot help, so it is not retried.
                    logger.error("device event refused: %s", exc)
                except Exception as exc:
                    logger.exception(
                        "device event %s for %r failed", event.get("type"), event.get("endpoint")
                    )
                    error = error or exc
    if error is not None:
        raise error
    now = time.time()
    tallies.events_applied(count=len(events), lag_seconds=event_lag(events, now=now), now=now)
    return len(events)


def _lock_devices(events: list[Any]) -> None:
    """Lock the batch's known devices first, in primary-key order (FOR NO KEY UPDATE, as each
    event does). Event by event, a batch locked its devices in event order and held them to
    its commit; two batches naming the same devices in another order (a device moving between
    gateways, with the old one's held events and the new one's) deadlocked, and so did one that
    had taken the audit chain's lock and then waited for a device the other held."""
    endpoints = sorted({e for e in map(_endpoint, events) if e is not None})
    if endpoints:
        from campaigns.models import Device

        list(
            Device.objects.select_for_update(no_key=True)
            .filter(endpoint__in=endpoints)
            .order_by("pk")
            .values_list("pk", flat=True)
        )


def _endpoint(event: Any) -> str | None:
    endpoint = event.get("endpoint") if isinstance(event, dict) else None
    return endpoint if isinstance(endpoint, str) and endpoint else None


def event_lag(events: list[Any], *, now: float) -> float | None:
    """Seconds the oldest event of a batch waited between its gateway seeing it (``at``) and
    now, or None when no event says when it was seen."""
    seen = [
        e["at"]
        for e in events
        if isinstance(e, dict) and isinstance(e.get("at"), int | float) and e["at"] > 0
    ]
    return max(0.0, now - min(seen)) if seen else None


@shared_task(**DATABASE_RETRY)
def campaign_reconcile_task(campaign_id: int) -> dict[str, Any] | None:
    """One reconcile pass of one campaign (skipped if another worker holds it)."""
    with log_context(campaign=campaign_id):
        report = campaign_reconcile(campaign_id)
    return None if report is None else report.as_dict()


@shared_task(**DATABASE_RETRY)
def releases_reevaluate_task() -> int:
    """Beat entry point: keys expire without an event, so live releases are re-evaluated
    periodically; one that lost approval is marked and its campaigns pause (signal)."""
    from manifests.services import releases_reevaluate

    return releases_reevaluate(actor="system:expiry-check")


@shared_task(**DATABASE_RETRY)
def campaigns_reconcile_all_task() -> int:
    """Beat entry point: fan out one reconcile task per running campaign."""
    from campaigns.models import Campaign, CampaignStatus

    ids = list(Campaign.objects.filter(status=CampaignStatus.RUNNING).values_list("pk", flat=True))
    for campaign_id in ids:
        campaign_reconcile_task.delay(campaign_id)
    return len(ids)


@shared_task(**DATABASE_RETRY)
def devices_clock_reread_task() -> int:
    """Beat entry point: devices held back for an off clock get their information read again
    (``read_info``) when the last reading is older than DEVICE_CLOCK_REREAD_MINUTES."""
    from django.conf import settings

    return device_services.devices_clock_reread(
        older_than=dt.timedelta(minutes=settings.DEVICE_CLOCK_REREAD_MINUTES)
    )


@shared_task(**DATABASE_RETRY)
def registry_sweep_task() -> int:
    """Beat entry point: devices whose registration expired (past the grace) go offline, even
    when the gateway that held them died and never reported the expiry."""
    return device_services.registrations_sweep()


@shared_task(**DATABASE_RETRY)
def device_command_task(command_id: str) -> str:
    """Send a pending command to its gateway (at least once; see ``device_command_send``)."""
    from workers.lwm2m.bus import bus_for_url, configured_bus_url

    bus = bus_for_url(configured_bus_url())

    def publish(gateway_id: str, message: dict[str, Any]) -> None:
        try:
            bus.publish(gateway_id, message)
        except LwM2MError as exc:  # the bus refused it: the command fails, no retry
            raise device_services.CommandRefusedError(str(exc), code=exc.code) from exc

    return device_services.device_command_send(command_id=command_id, publish=publish)
