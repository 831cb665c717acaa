"""The gateway against the real database: registrations land in the device registry, Celery
tasks route commands through the bus to the gateway holding the device, results come back.

The gateway runs on its own thread and loop (as in production it is its own process), so these
tests use ``transactional_db``; Celery runs eagerly so events are applied in the gateway's event
thread, exactly as in the embedded default.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from campaigns import device_services
from campaigns.models import CommandStatus, Device, DeviceCommand
from tests.workers.lwm2m.conftest import DictFirmware, fleet_spec, make_release, wait_for
from workers.lwm2m.bus import bus_for_url
from workers.lwm2m.gateway import CeleryEventSink, Gateway, GatewayConfig, GatewayThread
from workers.lwm2m.simulator import Fleet


@pytest.fixture
def gateway_with_fleet(
    transactional_db: None, eager_celery: None, signing_key: Any
) -> Iterator[tuple[GatewayThread, Fleet, Any]]:
    release = make_release(signing_key)
    firmware = DictFirmware(
        envelopes={release.digest: release.envelope},
        images={hashlib.sha256(release.payload).hexdigest(): release.payload},
    )
    gateway = Gateway(
        GatewayConfig(
            gateway_id="gw-db", port=0, fw_poll_seconds=0.3, request_timeout=5, admission="open"
        ),
        bus=bus_for_url("memory://"),
        sink=CeleryEventSink(),
        firmware=firmware,
    )
    thread = GatewayThread(gateway).start()
    fleet = Fleet(server_uri=gateway.config.base_uri, trust_anchors=[signing_key.public_key()])
    fleet.load_or_create(fleet_spec(2))
    try:
        thread.call(fleet.start())
        thread.call(fleet.wait_registered(10))
        yield thread, fleet, release
    finally:
        thread.call(fleet.stop(deregister=False))
        thread.stop()


@pytest.fixture
def acme_class(transactional_db: None) -> Any:
    # Plain ORM rows: the manifests services also write append-only audit rows, which a
    # transactional test's flush cannot delete.
    from manifests.models import DeviceClass, Vendor
    from tests.workers.lwm2m.conftest import CLASS_ID, CLASS_NAME, VENDOR_DOMAIN, VENDOR_ID

    vendor = Vendor.objects.create(name="Acme Sensors", domain=VENDOR_DOMAIN, uuid=VENDOR_ID)
    return DeviceClass.objects.create(vendor=vendor, name=CLASS_NAME, uuid=CLASS_ID)


def test_registration_creates_registry_rows_mapped_to_vendor_and_class(
    acme_class: Any, gateway_with_fleet: Any
) -> None:
    device_class = acme_class
    wait_for(lambda: Device.objects.filter(online=True, serial__startswith="SN").count() == 2)
    device = Device.objects.get(endpoint="sim-00000")
    assert device.gateway_id == "gw-db"
    assert device.vendor == device_class.vendor and device.device_class == device_class
    assert device.firmware_version == "1.0.0"
    assert device.fw_protocols == [0] and device.fw_delivery_method == 0
    assert device.registration_id and device.lwm2m_version == "1.1"
    assert abs(device.clock_offset_seconds) < 5
    assert "/5/0" in device.lwm2m_objects


def test_command_task_routes_update_to_gateway_and_records_result(gateway_with_fleet: Any) -> None:
    _thread, fleet, release = gateway_with_fleet
    wait_for(lambda: Device.objects.filter(online=True).count() == 2)
    command = device_services.device_command_create(
        endpoint="sim-00001", operation="fw_update", args={"manifest_digest": release.digest}
    )
    wait_for(lambda: DeviceCommand.objects.get(pk=command.pk).status == CommandStatus.SUCCEEDED, 20)
    wait_for(lambda: Device.objects.get(endpoint="sim-00001").firmware_version == "1.1.0")
    device = Device.objects.get(endpoint="sim-00001")
    assert device.fw_state == 0 and device.fw_result == 1
    assert fleet.devices["sim-00001"].state.version == "1.1.0"
    assert device.events.filter(kind="fw_installed").exists()


def test_deregistration_and_stale_deregistration(gateway_with_fleet: Any) -> None:
    thread, fleet, _ = gateway_with_fleet
    wait_for(lambda: Device.objects.filter(online=True).count() == 2)
    old_registration = Device.objects.get(endpoint="sim-00000").registration_id
    # A stale "expired" for an older registration must not take the device offline.
    device_services.device_registration_end(
        endpoint="sim-00000", registration_id="not-the-current", reason="expired"
    )
    assert Device.objects.get(endpoint="sim-00000").online
    thread.call(fleet.devices["sim-00000"].stop(deregister=True))
    wait_for(lambda: not Device.objects.get(endpoint="sim-00000").online)
    assert Device.objects.get(endpoint="sim-00000").registration_id == old_registration


def test_command_for_offline_device_fails_at_once(
    transactional_db: None, eager_celery: None
) -> None:
    Device.objects.create(endpoint="ghost", online=False)
    command = device_services.device_command_create(endpoint="ghost", operation="read")
    command.refresh_from_db()
    assert command.status == CommandStatus.FAILED
    assert command.error_code == "device.offline"


def test_command_send_marks_sent_only_after_publishing(
    transactional_db: None, eager_celery: None
) -> None:
    from workers.lwm2m.errors import DeviceNotConnectedError

    Device.objects.create(endpoint="dev-1", online=True, gateway_id="gw-x")
    command = DeviceCommand.objects.create(device=Device.objects.get(), operation="read")
    published: list[tuple[str, dict[str, Any]]] = []

    def broken(gateway_id: str, message: dict[str, Any]) -> None:
        raise ConnectionError("broker down")

    # A failure that is not a refusal (the broker is down, the worker dies) leaves it pending.
    with pytest.raises(ConnectionError):
        device_services.device_command_send(command_id=str(command.pk), publish=broken)
    command.refresh_from_db()
    assert command.status == CommandStatus.PENDING and command.attempts == 0

    outcome = device_services.device_command_send(
        command_id=str(command.pk), publish=lambda g, m: published.append((g, m))
    )
    command.refresh_from_db()
    assert outcome == "sent" and command.status == CommandStatus.SENT and command.attempts == 1
    assert published == [
        (
            "gw-x",
            {"command_id": str(command.pk), "endpoint": "dev-1", "operation": "read", "args": {}},
        )
    ]
    # Sent already: a second task for it publishes nothing.
    assert (
        device_services.device_command_send(
            command_id=str(command.pk), publish=lambda g, m: published.append((g, m))
        )
        == "skipped"
    )
    assert len(published) == 1

    refused = DeviceCommand.objects.create(device=Device.objects.get(), operation="read")

    def refuse(gateway_id: str, message: dict[str, Any]) -> None:
        # What device_command_task makes of the bus's refusal (DeviceNotConnectedError).
        refusal = DeviceNotConnectedError("no gateway 'gw-x' in this process")
        raise device_services.CommandRefusedError(str(refusal), code=refusal.code)

    assert device_services.device_command_send(command_id=str(refused.pk), publish=refuse) == (
        "refused"
    )
    refused.refresh_from_db()
    assert (
        refused.status == CommandStatus.FAILED
        and refused.error_code == "lwm2m.device_not_connected"
    )


def test_gateway_runs_a_command_delivered_twice_once(gateway_with_fleet: Any) -> None:
    thread, fleet, release = gateway_with_fleet
    wait_for(lambda: Device.objects.filter(online=True).count() == 2)
    gateway = thread.gateway
    command = DeviceCommand.objects.create(
        device=Device.objects.get(endpoint="sim-00001"),
        operation="fw_update",
        args={"manifest_digest": release.digest},
    )
    message = {
        "command_id": str(command.pk),
        "endpoint": "sim-00001",
        "operation": "fw_update",
        "args": {"manifest_digest": release.digest},
    }
    before = gateway.stats["commands"]
    device_services.device_command_send(command_id=str(command.pk), publish=gateway.bus.publish)
    gateway.bus.publish("gw-db", message)  # redelivered while the first is running
    wait_for(lambda: DeviceCommand.objects.get(pk=command.pk).status == CommandStatus.SUCCEEDED, 20)
    gateway.bus.publish("gw-db", message)  # and once more after it finished
    wait_for(lambda: Device.objects.get(endpoint="sim-00001").firmware_version == "1.1.0")
    time.sleep(0.5)
    assert gateway.stats["commands"] == before + 1
    assert fleet.devices["sim-00001"].boots == 1
    assert DeviceCommand.objects.get(pk=command.pk).status == CommandStatus.SUCCEEDED


def test_a_partial_device_information_report_keeps_what_the_registry_knows(
    acme_class: Any,
) -> None:
    device_services.device_info_record(
        endpoint="dev-p", manufacturer="Acme Sensors", model="thermo-v2", serial="SN1",
        firmware_version="1.0.0",
    )  # fmt: skip
    # The next registration's reads of /3/0/0..3 went unanswered: blanks change nothing.
    device_services.device_info_record(endpoint="dev-p", device_time=time.time())
    device = Device.objects.get(endpoint="dev-p")
    assert (device.manufacturer, device.model, device.serial) == (
        "Acme Sensors",
        "thermo-v2",
        "SN1",
    )
    assert device.device_class == acme_class and device.firmware_version == "1.0.0"
