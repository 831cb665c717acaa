"""A campaign apply and event intake meet on the same device rows (PostgreSQL): the apply's
COPY of rollouts share-locks each device for its foreign key, in plan order, while a batch of
gateway events locks its devices one event at a time, in event order, until the batch commits.
With intake holding its devices FOR UPDATE the two could each wait for the other (a deadlock
the chaos scenario met); intake now holds them FOR NO KEY UPDATE, which a key-share lock does
not wait for, so neither waits for the other. Real connections, one per thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction

from campaigns import services
from campaigns.device_services import device_event_apply
from campaigns.events import FwStatus
from campaigns.models import Rollout, RolloutState
from campaigns.spec import parse_spec
from tests.campaigns.support import Catalog, make_devices, spec_text

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row lock modes are PostgreSQL's"
)

# How long the apply may wait for a row lock before PostgreSQL refuses the statement: the
# apply must not wait at all, so any wait ends the test with the lock error, not a hang.
LOCK_TIMEOUT = "3s"


class _Intake:
    """An event batch on a connection of its own, held open between steps."""

    def __init__(self) -> None:
        self.steps: list[tuple[Callable[[], Any], threading.Event]] = []
        self.go = threading.Condition()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.closed = False

    def start(self) -> None:
        self.thread.start()

    def run(self, step: Callable[[], Any]) -> None:
        """Run ``step`` inside the batch's transaction and wait until it is done."""
        done = threading.Event()
        with self.go:
            self.steps.append((step, done))
            self.go.notify()
        assert done.wait(30), "the intake step did not finish"
        if self.error is not None:
            raise self.error

    def commit(self) -> None:
        with self.go:
            self.closed = True
            self.go.notify()
        self.thread.join(30)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            with transaction.atomic():
                while True:
                    with self.go:
                        while not self.steps and not self.closed:
                            self.go.wait()
                        if not self.steps:
                            break
                        step, done = self.steps.pop(0)
                    try:
                        step()
                    except BaseException as exc:
                        self.error = exc
                        done.set()
                        raise
                    done.set()
        except BaseException as exc:
            self.error = self.error or exc
        finally:
            connections.close_all()


@pytest.fixture
def intake() -> Iterator[_Intake]:
    batch = _Intake()
    batch.start()
    yield batch
    if batch.thread.is_alive():
        batch.commit()


def _status(endpoint: str) -> FwStatus:
    """An Object 5 report (State Idle, Update Result 0): the device row is saved whole."""
    return FwStatus(endpoint=endpoint, gateway_id="gw-none", state=0, result=0)


def test_campaign_apply_does_not_wait_for_an_event_batch_holding_its_devices(
    transactional_db: None, catalog: Catalog, intake: _Intake
) -> None:
    first, second = make_devices(catalog, 2)
    # The batch has applied an event of the second device and goes on with its other events.
    intake.run(lambda: device_event_apply(event=_status(second.endpoint)))
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    try:
        campaign, outcome = services.campaign_apply(
            spec=parse_spec(spec_text("beside-intake")), actor=catalog.ops
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert outcome == "created"
    # The batch's next event is the first device's, which the apply's rows reference.
    intake.run(lambda: device_event_apply(event=_status(first.endpoint)))
    intake.commit()
    rows = Rollout.objects.filter(campaign=campaign)
    assert set(rows.values_list("device_id", flat=True)) == {first.pk, second.pk}
    assert set(rows.values_list("state", flat=True)) == {RolloutState.PENDING}
