"""Celery tasks of the device side: thin shells over ``campaigns.device_services``.

``device_events_task`` is how gateways report (registrations, Object 5 status, command results),
a batch of one gateway's events at a time; ``device_event_task`` applies a single event;
``device_command_task`` routes a stored command to the gateway holding the device,
``device_commands_task`` a reconcile pass's commands, a batch at a time.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError, transaction

from campaigns import device_services
from campaigns.engine import campaign_reconcile, campaign_reconcile_nudged
from campaigns.events import DeviceEvent, EventError, event_from_dict
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
    _apply_parsed(event_from_dict(data))  # EventError for anything outside the contract


def _apply_parsed(event: DeviceEvent) -> None:
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
    for the batch instead of several per event (a commit waits for the disk). The batch's
    locks are taken first, in the one order every batch uses
    (``device_services.device_events_lock``), so two workers never deadlock on two batches.
    Each event runs in its own savepoint, so one that fails is rolled back alone and logged
    while the others are kept; the first such error is raised after the commit, and the sender
    retries the batch (applying an event again changes nothing). An event outside the contract
    (``campaigns.events.EventError``) is logged and dropped: no retry can make it valid.
    Returns the number of events."""
    parsed: list[tuple[dict[str, Any], DeviceEvent | None]] = []
    for data in events:
        try:
            parsed.append((data, event_from_dict(data)))
        except EventError as exc:
            # Outside the contract: applying it again cannot help, so it is not retried.
            with log_context(device=_endpoint(data)):
                logger.error("device event refused: %s", exc)
            parsed.append((data, None))
    error: Exception | None = None
    with transaction.atomic():
        device_services.device_events_lock(batch=[e for _, e in parsed if e is not None])
        for data, event in parsed:
            if event is None:
                continue
            with log_context(device=_endpoint(data)):
                try:
                    with transaction.atomic():
                        _apply_parsed(event)
                except Exception as exc:
                    logger.exception(
                        "device event %s for %r failed", data.get("type"), data.get("endpoint")
                    )
                    error = error or exc
    if error is not None:
        raise error
    now = time.time()
    tallies.events_applied(count=len(events), lag_seconds=event_lag(events, now=now), now=now)
    return len(events)


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
def campaign_reconcile_task(campaign_id: int, nudged: bool = False) -> dict[str, Any] | None:
    """One reconcile pass of one campaign (skipped if another worker holds it); ``nudged``: a
    pass a rollout's end asked for (``campaigns.rollouts.campaign_nudge``)."""
    with log_context(campaign=campaign_id):
        if nudged:
            report = campaign_reconcile_nudged(campaign_id)
        else:
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


def _publisher() -> Callable[[str, dict[str, Any]], None]:
    from workers.lwm2m.bus import bus_for_url, configured_bus_url

    bus = bus_for_url(configured_bus_url())

    def publish(gateway_id: str, message: dict[str, Any]) -> None:
        try:
            bus.publish(gateway_id, message)
        except LwM2MError as exc:  # the bus refused it: the command fails, no retry
            raise device_services.CommandRefusedError(str(exc), code=exc.code) from exc

    return publish


@shared_task(**DATABASE_RETRY)
def device_command_task(command_id: str) -> str:
    """Send a pending command to its gateway (at least once; see ``device_command_send``)."""
    return device_services.device_command_send(command_id=command_id, publish=_publisher())


@shared_task(**DATABASE_RETRY)
def device_commands_task(command_ids: list[str]) -> dict[str, int]:
    """Send a batch of pending commands (a reconcile pass's), each as ``device_command_task``
    would, in its own transaction. A command whose sending failed (the bus unreachable) stays
    pending and the others are still sent; the first such error is raised at the end, so the
    task is retried (a command already sent is skipped) or, failing that, the reconcile's
    resend sends it. Returns how many commands had each outcome."""
    publish = _publisher()
    outcomes: dict[str, int] = {}
    error: Exception | None = None
    for command_id in command_ids:
        try:
            outcome = device_services.device_command_send(command_id=command_id, publish=publish)
        except (OperationalError, InterfaceError):
            raise  # the database: retried with backoff as a whole (DATABASE_RETRY)
        except Exception as exc:
            logger.exception("command %s not sent", command_id)
            error = error or exc
            continue
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if error is not None:
        raise error
    return outcomes
