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
    """Apply one gateway event. Idempotent: the services ignore stale and repeated events."""
    device_services.device_event_apply(event=event)


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
