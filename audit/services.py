"""Writing the audit trail. ``audit_record`` must be called inside the caller's transaction so the
event commits or rolls back with the change it describes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from audit.chain import GENESIS, ChainLink, ChainVerdict, event_hash, verify_chain
from audit.models import AuditEvent

# Any constant works; it names the one PostgreSQL advisory lock that serialises appends.
_PG_AUDIT_LOCK = 0x6677_7570  # "fwup"
VERIFY_BATCH = 2000  # rows fetched per round trip when walking the chain


class AuditError(Exception):
    """The audit trail could not be written."""

    code = "audit.error"


def audit_lock() -> None:
    """Take the chain's append lock now, in the caller's transaction (held to its end), so that
    a transaction that will append later can take it before its other locks: one lock order
    for every writer (device event batches take it before their devices' rows)."""
    if not connection.in_atomic_block:
        raise AuditError("audit_lock must run inside the transaction that appends")
    _lock_chain()


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_PG_AUDIT_LOCK])
    # SQLite serialises writers on the database lock; the unique seq/prev_hash columns make a
    # forked chain impossible on any backend.


def audit_record(
    *,
    actor: AbstractBaseUser | str | None,
    action: str,
    object_type: str,
    object_id: Any,
    details: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> AuditEvent:
    if not connection.in_atomic_block:
        raise AuditError("audit_record must run inside the transaction of the change it records")
    if isinstance(actor, AbstractBaseUser):
        actor_name, actor_user = actor.get_username(), actor
    else:
        actor_name, actor_user = (actor or "system"), None
    _lock_chain()
    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS)
    created_at = (now or timezone.now()).astimezone(dt.UTC)
    payload = details or {}
    digest = event_hash(
        seq=seq,
        actor=actor_name,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        details=payload,
        created_at=created_at,
        prev_hash=prev_hash,
    )
    return AuditEvent.objects.create(
        seq=seq,
        actor=actor_name,
        actor_user=actor_user,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        details=payload,
        created_at=created_at,
        prev_hash=prev_hash,
        hash=digest,
    )


def iter_links() -> Iterator[ChainLink]:
    """Stream the chain in seq order, in keyset-paginated batches (constant memory)."""
    after = 0
    while True:
        rows = list(
            AuditEvent.objects.filter(seq__gt=after)
            .order_by("seq")
            .values_list(
                "seq",
                "actor",
                "action",
                "object_type",
                "object_id",
                "details",
                "created_at",
                "prev_hash",
                "hash",
            )[:VERIFY_BATCH]
        )
        if not rows:
            return
        for row in rows:
            yield ChainLink(*row)
        after = rows[-1][0]


def audit_verify(*, anchor: str | None = None) -> ChainVerdict:
    with transaction.atomic():
        return verify_chain(iter_links(), anchor=anchor)
