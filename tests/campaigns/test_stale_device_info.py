"""A device's information applied late must not undo what it reported after an update.

Gateway events reach the registry in batches through the task queue. A batch can be applied
long after it was sent, and after newer batches: it was retried because PostgreSQL refused
connections, or redelivered because the worker holding it was killed. A late ``device_info``
read before a device's update said 1.0.0; applied after the device reported 1.1.0 (its
re-registration after the reboot), it wrote 1.0.0 back, and the rollout, whose command then
succeeded, never saw the manifest's version: it stayed ``updating`` until the device timeout.
Each event says when the gateway read its values (``at``); the registry keeps the newer
observation."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from campaigns import engine, services
from campaigns.events import CommandResult, DeviceInfo
from campaigns.models import Device, Rollout, RolloutState
from campaigns.spec import parse_spec
from tests.campaigns.support import Catalog, build_catalog, make_devices, signed_report, spec_text
from workers.tasks import device_events_task


@pytest.fixture
def catalog(db: None, django_user_model: Any) -> Catalog:
    return build_catalog(django_user_model)


def _info(endpoint: str, version: str, at: float) -> dict[str, Any]:
    event = DeviceInfo(
        endpoint=endpoint,
        manufacturer="Acme Sensors",
        model="thermo-v2",
        serial="sn-1",
        firmware_version=version,
        device_time=at,
    )
    return {**event.to_dict(), "gateway_id": "gw-a", "at": at}


def _dispatched(catalog: Catalog) -> Rollout:
    now = timezone.now()
    make_devices(catalog, 1, prefix="late", model="thermo-v2")
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("late-info")), actor=catalog.ops, now=now
    )
    engine.campaign_reconcile(campaign.pk, now=now)
    rollout = Rollout.objects.select_related("device", "manifest").get(campaign=campaign)
    assert rollout.command_id is not None
    return rollout


def test_a_stale_device_info_applied_late_does_not_undo_the_update(catalog: Catalog) -> None:
    """The device read 1.0.0 (t0), updated, rebooted and reported 1.1.0 (t0 + 20); the t0 batch,
    retried after a database outage, lands after that one, and then the command's success."""
    rollout = _dispatched(catalog)
    endpoint, new = rollout.device.endpoint, rollout.manifest.version
    t0 = time.time() - 60
    assert device_events_task.run([_info(endpoint, new, t0 + 20)]) == 1
    assert device_events_task.run([_info(endpoint, "1.0.0", t0)]) == 1  # the late retry
    device = Device.objects.get(endpoint=endpoint)
    assert device.firmware_version == new
    assert device.device_time == t0 + 20  # the newer clock reading is kept with it
    result = CommandResult(
        command_id=str(rollout.command_id), ok=True, suit_report=signed_report(rollout)
    )
    event = {**result.to_dict(), "gateway_id": "gw-a", "at": t0 + 25}
    assert device_events_task.run([event]) == 1
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.SUCCEEDED, (rollout.state, rollout.reason)


def test_an_older_observation_still_fills_what_the_registry_does_not_know(
    catalog: Catalog,
) -> None:
    """A newer read that lacked the firmware version (the device did not answer in time) and an
    older one that has it: the older one's value is taken, as nothing newer contradicts it."""
    t0 = time.time() - 60
    partial = _info("late-x", "", t0 + 10)
    partial["serial"] = ""
    assert device_events_task.run([partial, _info("late-x", "1.0.0", t0)]) == 2
    device = Device.objects.get(endpoint="late-x")
    assert device.firmware_version == "1.0.0"
    assert device.serial == "sn-1"
    assert device.device_time == t0 + 10
    assert device.info_read_at is not None and device.info_read_at.timestamp() == pytest.approx(
        t0 + 10, abs=1e-5
    )
    # A newer observation replaces it, as always.
    assert device_events_task.run([_info("late-x", "1.1.0", t0 + 30)]) == 1
    assert Device.objects.get(endpoint="late-x").firmware_version == "1.1.0"


def test_a_success_whose_version_never_comes_ends_at_the_device_timeout(catalog: Catalog) -> None:
    """Whatever keeps the new version from the registry, the rollout does not stay ``updating``:
    the device timeout ends it with its reason (and the campaign's retry policy decides)."""
    rollout = _dispatched(catalog)
    result = CommandResult(
        command_id=str(rollout.command_id), ok=True, suit_report=signed_report(rollout)
    )
    event = {**result.to_dict(), "gateway_id": "gw-a", "at": time.time()}
    assert device_events_task.run([event]) == 1
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.UPDATING  # the registry still says 1.0.0
    assert rollout.deadline_at is not None
    engine.campaign_reconcile(rollout.campaign_id, now=rollout.deadline_at + timedelta(seconds=1))
    rollout.refresh_from_db()
    assert (rollout.state, rollout.reason) == (RolloutState.TIMED_OUT, "timed_out")
