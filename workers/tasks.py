"""Celery tasks of the device side: thin shells over ``campaigns.device_services``.

``device_event_task`` is how gateways report (registrations, Object 5 status, command results);
``device_command_task`` routes a stored command to the gateway holding the device.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from campaigns import device_services


@shared_task(acks_late=True)
def device_event_task(event: dict[str, Any]) -> None:
    """Apply one gateway event to the registry, then to the device's rollout. Idempotent: the
    services ignore stale and repeated events."""
    from campaigns.engine import rollouts_apply_event

    device_services.device_event_apply(event=event)
    rollouts_apply_event(event=event)


@shared_task(acks_late=True)
def campaign_reconcile_task(campaign_id: int) -> dict[str, Any] | None:
    """One reconcile pass of one campaign (skipped if another worker holds it)."""
    from campaigns.engine import campaign_reconcile

    report = campaign_reconcile(campaign_id)
    return (
        None
        if report is None
        else {
            "campaign": report.campaign,
            "status": report.status,
            "stage": report.stage,
            "dispatched": report.dispatched,
        }
    )


@shared_task(acks_late=True)
def releases_reevaluate_task() -> int:
    """Beat entry point: keys expire without an event, so live releases are re-evaluated
    periodically; one that lost approval is marked and its campaigns pause (signal)."""
    from manifests.services import releases_reevaluate

    return releases_reevaluate(actor="system:expiry-check")


@shared_task(acks_late=True)
def campaigns_reconcile_all_task() -> int:
    """Beat entry point: fan out one reconcile task per running campaign."""
    from campaigns.models import Campaign, CampaignStatus

    ids = list(Campaign.objects.filter(status=CampaignStatus.RUNNING).values_list("pk", flat=True))
    for campaign_id in ids:
        campaign_reconcile_task.delay(campaign_id)
    return len(ids)


@shared_task(acks_late=True)
def device_command_task(command_id: str) -> None:
    """Send a pending command to its gateway; a command already claimed is left alone."""
    from workers.lwm2m.bus import bus_for_url, configured_bus_url
    from workers.lwm2m.errors import LwM2MError

    claimed = device_services.device_command_claim(command_id=command_id)
    if claimed is None:
        return
    command, gateway_id = claimed
    message = {
        "command_id": str(command.pk),
        "endpoint": command.device.endpoint,
        "operation": command.operation,
        "args": command.args,
    }
    try:
        bus_for_url(configured_bus_url()).publish(gateway_id, message)
    except LwM2MError as exc:
        device_services.device_command_complete(
            command_id=command_id, ok=False, error_code=exc.code, error=str(exc)
        )
