"""The audit hash chain, as pure functions.

Invariants the verifier enforces over events ordered by ``seq``:
- ``seq`` runs 1, 2, 3, … without gaps (a deleted row leaves a gap);
- each event's ``prev_hash`` equals the previous event's ``hash`` (the first one's is GENESIS);
- each event's ``hash`` equals SHA-256 over the canonical encoding of its own fields, ``seq`` and
  ``prev_hash`` included, so a modified, reordered or inserted row breaks its own hash or the
  next link.
The chain cannot tell a truncated tail from a short log on its own: keep the head exported by
``manage.py audit head`` somewhere else and pass it back as an anchor, which must still be in the
chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class ChainLink:
    seq: int
    actor: str
    action: str
    object_type: str
    object_id: str
    details: Any
    created_at: dt.datetime
    prev_hash: str
    hash: str


def canonical_time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def event_hash(
    *,
    seq: int,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    details: Any,
    created_at: dt.datetime,
    prev_hash: str,
) -> str:
    body = {
        "seq": seq,
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "details": details,
        "created_at": canonical_time(created_at),
        "prev_hash": prev_hash,
    }
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChainVerdict:
    ok: bool
    checked: int
    head: str
    broken_seq: int | None = None
    problem: str = ""


def verify_chain(links: Iterable[ChainLink], *, anchor: str | None = None) -> ChainVerdict:
    """Walk the chain; report the first broken link (the row at which it no longer holds)."""
    expected_prev = GENESIS
    expected_seq = 1
    checked = 0
    anchor_seen = anchor is None or anchor == GENESIS
    for link in links:
        if link.seq != expected_seq:
            kind = "missing (deleted?)" if link.seq > expected_seq else "out of order"
            return ChainVerdict(
                False,
                checked,
                expected_prev,
                expected_seq,
                f"event seq {expected_seq} is {kind}: found seq {link.seq} in its place",
            )
        if link.prev_hash != expected_prev:
            return ChainVerdict(
                False,
                checked,
                expected_prev,
                link.seq,
                f"event seq {link.seq} does not link to its predecessor "
                "(previous event modified, removed or reordered)",
            )
        recomputed = event_hash(
            seq=link.seq,
            actor=link.actor,
            action=link.action,
            object_type=link.object_type,
            object_id=link.object_id,
            details=link.details,
            created_at=link.created_at,
            prev_hash=link.prev_hash,
        )
        if recomputed != link.hash:
            return ChainVerdict(
                False, checked, expected_prev, link.seq, f"event seq {link.seq} was modified"
            )
        anchor_seen = anchor_seen or link.hash == anchor
        expected_prev = link.hash
        expected_seq += 1
        checked += 1
    if not anchor_seen:
        return ChainVerdict(
            False,
            checked,
            expected_prev,
            None,
            "the anchored head is not in the chain (events up to the anchor were removed, "
            "or the anchor belongs to another log)",
        )
    return ChainVerdict(True, checked, expected_prev)
