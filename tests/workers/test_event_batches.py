"""Gateway events travel in batches: the gateway hands queued events to the sink together, in
the order they were emitted, and ``device_events_task`` applies a batch in one transaction with
a savepoint per event (a failing event is rolled back alone, the rest kept, the error raised)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from campaigns.events import FwStatus
from campaigns.models import Device
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
