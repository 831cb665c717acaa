"""The audit trail is append-only and every kind of tampering is detected by verification."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import threading
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from audit.chain import GENESIS
from audit.models import AuditEvent, AuditImmutableError
from audit.services import AuditError, audit_record, audit_verify

T0 = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)


def _append(n: int, actor: Any = "tester") -> list[AuditEvent]:
    events = []
    for i in range(n):
        with transaction.atomic():
            events.append(
                audit_record(
                    actor=actor,
                    action="release.approve",
                    object_type="release",
                    object_id=i,
                    details={"n": i, "text": "ünïcode", "nested": {"b": 1, "a": [1, 2]}},
                    now=T0 + dt.timedelta(seconds=i),
                )
            )
    return events


def _tamper(sql: str, params: list[Any] | None = None) -> None:
    """What an attacker with database access does: switch the guard off, then edit rows."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
            cursor.execute(sql, params or [])
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
        else:
            cursor.execute(sql, params or [])


@pytest.mark.django_db
def test_chain_links_each_event_to_the_previous_one():
    events = _append(5)
    assert events[0].seq == 1 and events[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
    verdict = audit_verify()
    assert verdict.ok and verdict.checked == 5 and verdict.head == events[-1].hash


@pytest.mark.django_db(transaction=True)
def test_record_outside_a_transaction_is_refused():
    with pytest.raises(AuditError):
        audit_record(actor="x", action="a", object_type="t", object_id=1)


@pytest.mark.django_db
def test_orm_refuses_update_and_delete():
    (event,) = _append(1)
    event.action = "forged"
    with pytest.raises(AuditImmutableError):
        event.save()
    with pytest.raises(AuditImmutableError):
        event.delete()
    with pytest.raises(AuditImmutableError):
        AuditEvent.objects.filter(pk=event.pk).update(action="forged")
    with pytest.raises(AuditImmutableError):
        AuditEvent.objects.all().delete()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "sql",
    ["UPDATE audit_auditevent SET action = 'forged'", "DELETE FROM audit_auditevent"],
    ids=["update", "delete"],
)
def test_database_trigger_refuses_raw_update_and_delete(sql: str):
    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's (docs/architecture.md §6)")
    _append(2)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        connection.cursor().execute(sql)
    assert audit_verify().ok


@pytest.mark.django_db
def test_modified_event_is_detected():
    _append(5)
    _tamper("UPDATE audit_auditevent SET details = %s WHERE seq = 3", ['{"n": 99}'])
    verdict = audit_verify()
    assert not verdict.ok and verdict.broken_seq == 3 and "modified" in verdict.problem


@pytest.mark.django_db
def test_modified_actor_with_recomputed_hash_breaks_the_next_link():
    _append(5)
    _tamper("UPDATE audit_auditevent SET hash = %s WHERE seq = 2", ["f" * 64])
    verdict = audit_verify()
    assert not verdict.ok and verdict.broken_seq == 2


@pytest.mark.django_db
def test_deleted_event_is_detected():
    _append(5)
    _tamper("DELETE FROM audit_auditevent WHERE seq = 2")
    verdict = audit_verify()
    assert not verdict.ok and verdict.broken_seq == 2 and "missing" in verdict.problem


@pytest.mark.django_db
def test_reordered_events_are_detected():
    _append(5)
    _tamper("UPDATE audit_auditevent SET seq = 100 WHERE seq = 2")
    _tamper("UPDATE audit_auditevent SET seq = 2 WHERE seq = 4")
    _tamper("UPDATE audit_auditevent SET seq = 4 WHERE seq = 100")
    verdict = audit_verify()
    assert not verdict.ok and verdict.broken_seq == 2


@pytest.mark.django_db
def test_inserted_event_is_detected():
    events = _append(3)
    _tamper(
        "INSERT INTO audit_auditevent (seq, actor, action, object_type, object_id, details,"
        " created_at, prev_hash, hash) VALUES (4, 'mallory', 'release.approve', 'release', '9',"
        " '{}', %s, %s, %s)",
        [T0, events[-1].hash, "e" * 64],
    )
    verdict = audit_verify()
    assert not verdict.ok and verdict.broken_seq == 4


@pytest.mark.django_db
def test_truncated_tail_is_detected_against_an_anchor():
    events = _append(4)
    anchor = events[-1].hash
    _tamper("DELETE FROM audit_auditevent WHERE seq = 4")
    assert audit_verify().ok  # the chain alone cannot see a cut tail...
    verdict = audit_verify(anchor=anchor)
    assert not verdict.ok and "anchor" in verdict.problem  # ...the exported anchor can


@pytest.mark.django_db
def test_cli_verify_export_and_head():
    events = _append(3, actor="cli-user")
    out = io.StringIO()
    call_command("audit", "verify", stdout=out)
    assert "OK: 3 events" in out.getvalue()
    out = io.StringIO()
    call_command("audit", "export", stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 3 and '"actor": "cli-user"' in lines[0]
    out = io.StringIO()
    call_command("audit", "head", stdout=out)
    assert out.getvalue().strip() == f"3 {events[-1].hash}"
    _tamper("DELETE FROM audit_auditevent WHERE seq = 1")
    with pytest.raises(CommandError, match="BROKEN"):
        call_command("audit", "verify")


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_never_fork_the_chain():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL; SQLite serialises the whole database")
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(k: int) -> None:
        try:
            barrier.wait()
            for i in range(10):
                with transaction.atomic():
                    audit_record(actor=f"w{k}", action="x", object_type="t", object_id=i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    verdict = audit_verify()
    assert verdict.ok and verdict.checked == 40
