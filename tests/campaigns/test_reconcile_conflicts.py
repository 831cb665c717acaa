"""A reconcile pass that loses a deadlock or serialization conflict (event intake locks the same
rollouts in another order) runs again; any other database error is not retried."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.db import OperationalError

from campaigns import engine


def _conflict(cause: BaseException) -> OperationalError:
    exc = OperationalError(str(cause))
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("cause", "transient"),
    [
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.SerializationFailure("could not serialize access"), True),
        (psycopg.errors.UndefinedTable("no such table"), False),
    ],
)
def test_which_errors_are_transient(cause: BaseException, transient: bool) -> None:
    assert engine.transient_conflict(_conflict(cause)) is transient


def test_sqlite_busy_is_transient() -> None:
    assert engine.transient_conflict(OperationalError("database is locked"))


def test_a_pass_that_lost_a_deadlock_runs_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    report: Any = engine.ReconcileReport("c7", "running", 0)

    def once(campaign_id: int, *, now: Any) -> Any:
        calls.append(campaign_id)
        if len(calls) < engine.RECONCILE_ATTEMPTS:
            raise _conflict(psycopg.errors.DeadlockDetected("deadlock detected"))
        return report

    monkeypatch.setattr(engine, "_reconcile_once", once)
    monkeypatch.setattr(engine.time, "sleep", lambda s: None)
    assert engine.campaign_reconcile(7) is report
    assert calls == [7] * engine.RECONCILE_ATTEMPTS


def test_conflicts_beyond_the_attempts_and_other_errors_propagate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def always(campaign_id: int, *, now: Any) -> Any:
        calls.append(campaign_id)
        raise _conflict(psycopg.errors.DeadlockDetected("deadlock detected"))

    monkeypatch.setattr(engine, "_reconcile_once", always)
    monkeypatch.setattr(engine.time, "sleep", lambda s: None)
    with pytest.raises(OperationalError):
        engine.campaign_reconcile(7)
    assert len(calls) == engine.RECONCILE_ATTEMPTS

    calls.clear()

    def broken(campaign_id: int, *, now: Any) -> Any:
        calls.append(campaign_id)
        raise _conflict(psycopg.errors.UndefinedTable("no such table"))

    monkeypatch.setattr(engine, "_reconcile_once", broken)
    with pytest.raises(OperationalError):
        engine.campaign_reconcile(7)
    assert calls == [7]
