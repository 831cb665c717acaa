"""Gateway events travel in batches: the gateway hands queued events to the sink together, in
the order they were emitted, and ``device_events_task`` applies a batch in one transaction with
a savepoint per event (a failing event is rolled back alone, the rest kept, the error raised)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from campaigns import engine, services
from campaigns.events import CommandResult, FwStatus
from campaigns.models import Device, Rollout, RolloutState
from campaigns.spec import parse_spec
from tests.campaigns.support import (
    Catalog,
    build_catalog,
    make_devices,
    signed_report,
    spec_text,
)
from workers import tasks as tasks_module
from workers.lwm2m import emitter as emitter_module
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.gateway import Gateway, GatewayConfig
from workers.tasks import device_events_task


class BatchSink:
    """Records batches; the first call is slow, so the next events queue up behind it."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.singles = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        self.singles += 1
        self.batches.append([event])

    def emit_many(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            if self.fail_first:
                self.fail_first -= 1
                raise ConnectionError("broker hiccup")
            if not self.batches:
                time.sleep(0.2)
            self.batches.append(list(events))


def _run(sink: BatchSink, count: int) -> Gateway:
    gateway = Gateway(
        GatewayConfig(gateway_id="gw-batch", port=0, admission="open"),
        bus=InMemoryCommandBus(),
        sink=sink,
    )

    async def main() -> None:
        await gateway.start()
        try:
            await asyncio.gather(
                *(
                    gateway.emit(FwStatus(endpoint=f"dev-{i}", state=1, result=0))
                    for i in range(count)
                )
            )
        finally:
            await gateway.stop()

    asyncio.run(main())
    return gateway


def test_events_reach_the_sink_in_batches_in_emitted_order() -> None:
    sink = BatchSink()
    _run(sink, 250)
    flat = [event["endpoint"] for batch in sink.batches for event in batch]
    assert flat == [f"dev-{i}" for i in range(250)]
    assert all(e["gateway_id"] == "gw-batch" for batch in sink.batches for e in batch)
    assert len(sink.batches) < 250 // 10  # batched, not one call per event
    assert max(len(b) for b in sink.batches) <= emitter_module.EVENT_BATCH


def test_a_failed_hand_over_is_retried_with_the_same_batch() -> None:
    sink = BatchSink(fail_first=2)
    _run(sink, 30)
    flat = [event["endpoint"] for batch in sink.batches for event in batch]
    assert flat == [f"dev-{i}" for i in range(30)]


def test_a_steady_trickle_of_events_is_handed_over_in_few_batches() -> None:
    """Events that come one at a time, each a few milliseconds after the last (devices going
    through their updates), are gathered for EVENT_FLUSH_SECONDS after a hand-over: a few
    tasks a second, not one per event. A busier machine only makes the batches bigger."""
    sink = BatchSink()
    sink.batches.append([])  # no slow first call: every hand-over is immediate
    gateway = Gateway(
        GatewayConfig(gateway_id="gw-batch", port=0, admission="open"),
        bus=InMemoryCommandBus(),
        sink=sink,
    )

    async def main() -> None:
        await gateway.start()
        try:
            pending = []
            for i in range(100):
                pending.append(
                    asyncio.ensure_future(
                        gateway.emit(FwStatus(endpoint=f"dev-{i}", state=1, result=0))
                    )
                )
                await asyncio.sleep(0.002)
            await asyncio.gather(*pending)
        finally:
            await gateway.stop()

    asyncio.run(main())
    batches = sink.batches[1:]
    flat = [event["endpoint"] for batch in batches for event in batch]
    assert flat == [f"dev-{i}" for i in range(100)]
    assert len(batches) <= 100 // 4, [len(b) for b in batches]


def _registered(endpoint: str) -> dict[str, Any]:
    return {
        "type": "registered",
        "gateway_id": "gw-batch",
        "at": time.time(),
        "endpoint": endpoint,
        "registration_id": f"r-{endpoint}",
        "lifetime": 60,
    }


@pytest.mark.django_db(transaction=True)
def test_a_failing_event_is_rolled_back_alone_and_raised_after_the_batch_commits() -> None:
    broken = _registered("dev-broken")
    broken["lifetime"] = 10**15  # its expiry time is beyond any date: applying it fails
    with pytest.raises(OverflowError):
        device_events_task.run([_registered("dev-a"), broken, _registered("dev-b")])
    assert set(Device.objects.values_list("endpoint", flat=True)) == {"dev-a", "dev-b"}
    assert device_events_task.run([_registered("dev-a"), _registered("dev-b")]) == 2
    assert Device.objects.filter(online=True).count() == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "change",
    [
        {"type": "registred"},  # unknown type
        {"registration_id": None},  # a required field missing its value
        {"lifetime": "60"},  # mistyped
        {"queue_mode": 1},  # an int is not a boolean
    ],
    ids=["unknown-type", "null-required", "string-for-int", "int-for-bool"],
)
def test_an_event_outside_the_contract_is_dropped_and_the_batch_applied(
    change: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    bad = {**_registered("dev-bad"), **change}
    assert device_events_task.run([_registered("dev-a"), bad, _registered("dev-b")]) == 3
    assert set(Device.objects.values_list("endpoint", flat=True)) == {"dev-a", "dev-b"}
    assert "device event refused" in caplog.text


@pytest.fixture
def catalog(db: None, django_user_model: Any) -> Catalog:
    return build_catalog(django_user_model)


@pytest.mark.django_db(transaction=True)
def test_two_batches_crossing_a_device_and_the_audit_chain_do_not_deadlock(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers, two batches. A: dev-0's command result (its SUIT report is audited: the
    chain's lock), then a status of dev-1. B: a status of dev-1 (its row lock), then dev-1's
    command result (the chain's lock again). Applied event by event, with both first events
    done before either second one, A waits for dev-1 and B for the chain: a deadlock, one
    event rolled back and its batch retried. Taken up front in one order, the locks make one
    batch wait for the other and both apply in full."""
    now = timezone.now()
    make_devices(catalog, 2, prefix="dev")
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("crossing")), actor=catalog.ops, now=now
    )
    engine.campaign_reconcile(campaign.pk, now=now)
    by_endpoint = {
        r.device.endpoint: r
        for r in Rollout.objects.select_related("device", "manifest").filter(campaign=campaign)
    }
    dev0, dev1 = by_endpoint["dev-00000"], by_endpoint["dev-00001"]
    assert dev0.command_id and dev1.command_id
    Device.objects.update(firmware_version=dev0.manifest.version)

    def result(rollout: Rollout) -> dict[str, Any]:
        event = CommandResult(
            command_id=str(rollout.command_id), ok=True, suit_report=signed_report(rollout)
        )
        return {**event.to_dict(), "gateway_id": "gw-batch", "at": time.time()}

    def status() -> dict[str, Any]:
        event = FwStatus(endpoint="dev-00001", state=1, result=0)
        return {**event.to_dict(), "gateway_id": "gw-batch", "at": time.time()}

    batch_a, batch_b = [result(dev0), status()], [status(), result(dev1)]
    # Both first events applied before either second one (a batch that waits for the other's
    # locks never reaches the barrier: the other goes on when the wait times out).
    barrier = threading.Barrier(2, timeout=3)
    apply = tasks_module._apply_parsed
    applied = threading.local()

    def paced(event: Any) -> None:
        apply(event)
        if not getattr(applied, "first", False):
            applied.first = True
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()

    monkeypatch.setattr(tasks_module, "_apply_parsed", paced)
    errors: list[BaseException] = []

    def run(batch: list[dict[str, Any]]) -> None:
        try:
            device_events_task.run(batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(b,)) for b in (batch_a, batch_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    states = dict(
        Rollout.objects.filter(campaign=campaign).values_list("device__endpoint", "state")
    )
    assert states == {"dev-00000": RolloutState.SUCCEEDED, "dev-00001": RolloutState.SUCCEEDED}
