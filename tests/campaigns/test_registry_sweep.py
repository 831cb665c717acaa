"""Registration liveness swept by the workers (``device_services.registrations_sweep``): a
device whose registration lapsed goes offline even when the gateway that held it died, a
registration refreshed meanwhile is never overwritten, and a swept device is not commanded
through the gateway that no longer holds it.

Time is passed as ``now=``; the one test with a gateway behind the devices is in
``test_registry_sweep_e2e.py``.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import device_services, engine
from campaigns.device_services import (
    REGISTRY_SWEEPER,
    SWEPT,
    device_command_create,
    device_command_send,
    device_register,
    device_registration_update,
    registrations_sweep,
)
from campaigns.models import CommandStatus, Device, DeviceEvent, Rollout, RolloutState
from tests.campaigns.support import Catalog, apply, make_devices, spec_text

GRACE = dt.timedelta(seconds=30)


def _register(endpoint: str, *, at: dt.datetime, lifetime: int = 60, gateway: str = "gw-a") -> None:
    device_register(
        endpoint=endpoint,
        gateway_id=gateway,
        registration_id=f"r-{endpoint}",
        lifetime=lifetime,
        at=at,
    )


def _swept_events() -> list[tuple[str, str, dict[str, Any]]]:
    return list(
        DeviceEvent.objects.filter(kind="expired")
        .order_by("device__endpoint")
        .values_list("device__endpoint", "gateway_id", "data")
    )


@pytest.mark.django_db
def test_sweep_takes_a_lapsed_registration_offline_and_leaves_a_fresh_one() -> None:
    now = timezone.now()
    _register("dev-lapsed", at=now - dt.timedelta(seconds=100))  # expired 40 s ago
    _register("dev-in-grace", at=now - dt.timedelta(seconds=80))  # expired 20 s ago
    _register("dev-fresh", at=now - dt.timedelta(seconds=10))
    _register("dev-updated", at=now - dt.timedelta(seconds=100))
    device_registration_update(
        endpoint="dev-updated",
        registration_id="r-dev-updated",
        gateway_id="gw-b",
        at=now - dt.timedelta(seconds=50),
    )

    assert registrations_sweep(grace=GRACE, now=now) == 1

    online = dict(Device.objects.values_list("endpoint", "online"))
    assert online == {
        "dev-lapsed": False,
        "dev-in-grace": True,
        "dev-fresh": True,
        "dev-updated": True,
    }
    # The same event kind the holding gateway's expiry logs, saying it was swept and where the
    # registration was held.
    assert _swept_events() == [
        ("dev-lapsed", "gw-a", {"registration_id": "r-dev-lapsed", "reason": SWEPT})
    ]
    lapsed = Device.objects.get(endpoint="dev-lapsed")
    assert lapsed.registration_id == "r-dev-lapsed"  # kept: a late event still names it
    audit = AuditEvent.objects.get(action="device.registrations_swept")
    assert audit.actor == REGISTRY_SWEEPER
    assert audit.details == {"count": 1, "gateways": {"gw-a": 1}, "grace_seconds": 30.0}


@pytest.mark.django_db
def test_sweeping_twice_changes_nothing_more() -> None:
    now = timezone.now()
    _register("dev-lapsed", at=now - dt.timedelta(hours=1))
    _register("dev-fresh", at=now)
    assert registrations_sweep(grace=GRACE, now=now) == 1
    rows = list(Device.objects.order_by("pk").values())
    events = DeviceEvent.objects.count()
    audits = AuditEvent.objects.count()

    assert registrations_sweep(grace=GRACE, now=now) == 0
    assert registrations_sweep(grace=GRACE, now=now + dt.timedelta(seconds=5)) == 0

    assert list(Device.objects.order_by("pk").values()) == rows
    assert DeviceEvent.objects.count() == events
    assert AuditEvent.objects.count() == audits


@pytest.mark.django_db
def test_an_update_arriving_after_the_sweep_brings_the_device_back() -> None:
    """A premature sweep (an Update delayed in the event pipeline beyond the grace) costs the
    device nothing lasting: its Update names the registration it still holds."""
    now = timezone.now()
    _register("dev-late", at=now - dt.timedelta(seconds=100))
    assert registrations_sweep(grace=GRACE, now=now) == 1
    device_registration_update(
        endpoint="dev-late", registration_id="r-dev-late", gateway_id="gw-a", at=now
    )
    device = Device.objects.get(endpoint="dev-late")
    assert device.online
    assert device.registration_expires_at == now + dt.timedelta(seconds=60)
    assert registrations_sweep(grace=GRACE, now=now) == 0


@pytest.mark.django_db(transaction=True)
def test_a_register_landing_while_the_sweep_runs_is_not_overwritten() -> None:
    """A Register of a lapsed device is being applied (its row locked, not yet committed)
    while the sweep reads and updates: the sweep leaves the row to it, and the fresh
    registration stands. (If the sweep waited for the lock instead, its UPDATE's WHERE would
    see the new expiry after the commit and still leave the row alone.)"""
    now = timezone.now()
    _register("dev-race", at=now - dt.timedelta(hours=1))
    _register("dev-dead", at=now - dt.timedelta(hours=1))
    locked, swept = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def register_again() -> None:
        try:
            with transaction.atomic():
                device_register(
                    endpoint="dev-race",
                    gateway_id="gw-b",
                    registration_id="r-new",
                    lifetime=60,
                    at=now,
                )
                locked.set()
                swept.wait(5)  # holds its row lock until the sweep ran (or 5 s)
        except BaseException as exc:  # reported on the test thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=register_again)
    thread.start()
    try:
        assert locked.wait(10)
        count = registrations_sweep(grace=GRACE, now=now)
    finally:
        swept.set()
        thread.join(10)
    assert not errors
    assert count == 1
    race = Device.objects.get(endpoint="dev-race")
    assert (race.online, race.registration_id, race.gateway_id) == (True, "r-new", "gw-b")
    assert race.registration_expires_at == now + dt.timedelta(seconds=60)
    assert [e[0] for e in _swept_events()] == ["dev-dead"]
    # Once committed, the fresh registration is not lapsed: a later sweep leaves it too.
    assert registrations_sweep(grace=GRACE, now=now) == 0


def _lapsed_fleet(catalog: Catalog, count: int, *, now: dt.datetime, prefix: str) -> None:
    make_devices(
        catalog,
        count,
        prefix=prefix,
        gateway_id="gw-dead",
        registration_id="",
        registration_expires_at=now - dt.timedelta(hours=1),
    )


@pytest.mark.django_db
def test_sweep_queries_do_not_grow_with_the_fleet(catalog: Catalog) -> None:
    now = timezone.now()
    _lapsed_fleet(catalog, 3, now=now, prefix="small")
    with CaptureQueriesContext(connection) as small:
        assert registrations_sweep(grace=GRACE, now=now) == 3
    _lapsed_fleet(catalog, 120, now=now, prefix="large")
    with CaptureQueriesContext(connection) as large:
        assert registrations_sweep(grace=GRACE, now=now) == 120
    assert len(large.captured_queries) == len(small.captured_queries)
    assert DeviceEvent.objects.filter(kind="expired", data__reason=SWEPT).count() == 123
    assert not Device.objects.filter(online=True).exists()


@pytest.mark.django_db
def test_sweep_runs_in_batches_of_one_update_each(catalog: Catalog) -> None:
    now = timezone.now()
    _lapsed_fleet(catalog, 25, now=now, prefix="dev")
    with CaptureQueriesContext(connection) as queries:
        assert registrations_sweep(grace=GRACE, now=now, batch=10) == 25
    updates = [
        q for q in queries.captured_queries if q["sql"].startswith("UPDATE campaigns_device")
    ]
    assert len(updates) == 3  # 10 + 10 + 5: the last, short batch ends the sweep
    assert AuditEvent.objects.filter(action="device.registrations_swept").count() == 3


@pytest.mark.django_db
def test_a_sweep_batch_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        registrations_sweep(grace=GRACE, batch=0)


# --- what a dispatch does for a swept device -------------------------------------------------
def _publisher() -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    published: list[tuple[str, dict[str, Any]]] = []

    def publish(gateway_id: str, message: dict[str, Any]) -> None:
        published.append((gateway_id, message))

    return published, publish


@pytest.mark.django_db
def test_a_command_to_a_swept_device_fails_offline_and_never_reaches_the_dead_gateway() -> None:
    now = timezone.now()
    _register("dev-swept", at=now - dt.timedelta(hours=1), gateway="gw-dead")
    command = device_command_create(endpoint="dev-swept", operation="read_info")
    assert registrations_sweep(grace=GRACE) == 1
    published, publish = _publisher()
    assert device_command_send(command_id=str(command.pk), publish=publish) == "offline"
    assert published == []
    command.refresh_from_db()
    assert (command.status, command.error_code) == (CommandStatus.FAILED, "device.offline")


@pytest.mark.django_db
def test_a_command_to_a_lapsed_registration_not_yet_swept_is_not_sent_to_its_gateway() -> None:
    now = timezone.now()
    _register("dev-lapsed", at=now - dt.timedelta(hours=1), gateway="gw-dead")
    _register("dev-live", at=now, gateway="gw-live")
    lapsed = device_command_create(endpoint="dev-lapsed", operation="read_info")
    live = device_command_create(endpoint="dev-live", operation="read_info")
    published, publish = _publisher()
    assert device_command_send(command_id=str(lapsed.pk), publish=publish) == "offline"
    assert device_command_send(command_id=str(live.pk), publish=publish) == "sent"
    assert [gateway for gateway, _ in published] == ["gw-live"]


@pytest.mark.django_db
def test_a_swept_device_waits_and_is_dispatched_once_it_registers_again(
    catalog: Catalog,
) -> None:
    now = timezone.now()
    make_devices(catalog, 3, registration_expires_at=now + dt.timedelta(hours=1))
    Device.objects.filter(endpoint="dev-00001").update(
        gateway_id="gw-dead", registration_expires_at=now - dt.timedelta(hours=1)
    )
    assert registrations_sweep(grace=GRACE, now=now) == 1
    campaign = apply(catalog, spec_text("swept"), now=now)
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 2
    waiting = Rollout.objects.get(campaign=campaign, device__endpoint="dev-00001")
    assert waiting.state == RolloutState.PENDING and waiting.command_id is None

    later = now + dt.timedelta(seconds=10)
    device_register(
        endpoint="dev-00001",
        gateway_id="gw-live",
        registration_id="r-back",
        lifetime=300,
        at=later,
    )
    report = engine.campaign_reconcile(campaign.pk, now=later)
    assert report is not None and report.dispatched == 1
    waiting.refresh_from_db()
    assert waiting.state == RolloutState.QUEUED
    published, publish = _publisher()
    assert device_command_send(command_id=str(waiting.command_id), publish=publish) == "sent"
    assert [gateway for gateway, _ in published] == ["gw-live"]


def test_the_sweep_runs_on_the_beat_schedule(settings: Any) -> None:
    entries = {e["task"]: e["schedule"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert entries["workers.tasks.registry_sweep_task"] == float(settings.REGISTRY_SWEEP_SECONDS)
    assert device_services.registration_grace() == dt.timedelta(
        seconds=settings.REGISTRATION_GRACE_SECONDS
    )
