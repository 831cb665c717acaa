"""The device command task: the fleet side queues it by name, and the bus's refusal reaches the
command as a failure with the bus's own error code."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns import device_services
from campaigns.models import CommandStatus, Device, DeviceCommand
from workers.tasks import device_command_task, device_commands_task


@pytest.mark.django_db
def test_a_command_for_a_gateway_the_bus_does_not_know_fails_with_the_bus_code(
    settings: Any,
) -> None:
    settings.LWM2M_COMMAND_BUS_URL = "memory://"  # the in-process bus refuses unknown gateways
    device = Device.objects.create(endpoint="dev-1", online=True, gateway_id="gw-nowhere")
    command = DeviceCommand.objects.create(device=device, operation="read")

    assert device_command_task.run(str(command.pk)) == "refused"

    command.refresh_from_db()
    assert command.status == CommandStatus.FAILED
    assert command.error_code == "lwm2m.device_not_connected"


@pytest.mark.django_db
def test_commands_are_queued_by_task_name_after_commit(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    queued: list[str] = []
    monkeypatch.setattr(device_command_task, "delay", queued.append)
    Device.objects.create(endpoint="dev-1", online=True, gateway_id="gw-x")
    with django_capture_on_commit_callbacks(execute=True):
        command = device_services.device_command_create(endpoint="dev-1", operation="read")
        assert queued == []  # not before the command row is committed
    assert queued == [str(command.pk)]


@pytest.mark.django_db
def test_a_pass_commands_are_sent_in_batches_after_commit(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    queued: list[list[str]] = []
    monkeypatch.setattr(device_commands_task, "delay", queued.append)
    ids = [f"id-{i}" for i in range(2 * device_services.COMMAND_SEND_BATCH + 1)]
    with django_capture_on_commit_callbacks(execute=True):
        device_services.commands_queue(ids)
        assert queued == []
    assert [len(batch) for batch in queued] == [
        device_services.COMMAND_SEND_BATCH,
        device_services.COMMAND_SEND_BATCH,
        1,
    ]
    assert [i for batch in queued for i in batch] == ids


@pytest.mark.django_db
def test_a_batch_of_commands_is_sent_one_by_one_and_a_second_run_sends_none_twice(
    settings: Any,
) -> None:
    settings.LWM2M_COMMAND_BUS_URL = "memory://"  # the in-process bus refuses unknown gateways
    offline = Device.objects.create(endpoint="dev-off", online=False)
    nowhere = Device.objects.create(endpoint="dev-x", online=True, gateway_id="gw-nowhere")
    commands = [
        DeviceCommand.objects.create(device=offline, operation="read"),
        DeviceCommand.objects.create(device=nowhere, operation="read"),
    ]
    ids = [str(c.pk) for c in commands]
    assert device_commands_task.run(ids) == {"offline": 1, "refused": 1}
    assert device_commands_task.run(ids) == {"skipped": 2}
    statuses = set(DeviceCommand.objects.values_list("status", flat=True))
    assert statuses == {CommandStatus.FAILED}
