"""The rollout table carries exactly the indexes its queries read (each is written by every
dispatch), the conflict rule's partial unique index among them, and the queries that read rollouts
by device still find an index for it."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

EXPECTED = {
    "campaigns_rollout_pkey": "(id)",
    "uniq_rollout_per_device": "(campaign_id, device_id)",
    "one_in_flight_rollout_per_device": "(device_id) WHERE",
    "campaigns_r_campaig_1efb2f_idx": "(campaign_id, stage, state)",
    "campaigns_r_campaig_c9b423_idx": "(campaign_id, state, stage, bucket)",
    "rollout_device_latest_idx": "(device_id, id)",
    "campaigns_r_state_1f6969_idx": "(state, deadline_at)",
}


def _indexes() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'campaigns_rollout'"
        )
        return dict(cursor.fetchall())


def test_rollout_has_only_the_indexes_its_queries_read() -> None:
    found = _indexes()
    assert set(found) == set(EXPECTED)
    for name, columns in EXPECTED.items():
        assert columns in found[name], (name, found[name])
    assert "UNIQUE" in found["one_in_flight_rollout_per_device"]


@pytest.mark.parametrize(
    ("query", "index"),
    [
        # a device's in-flight rollout (eligibility's busy check, the conflict rule)
        (
            "SELECT id FROM campaigns_rollout WHERE device_id = 1 AND state IN "
            "('queued', 'dispatched', 'downloading', 'downloaded', 'updating')",
            "one_in_flight_rollout_per_device",
        ),
        # a device's latest rollout (the device list)
        (
            "SELECT id FROM campaigns_rollout WHERE device_id = 1 ORDER BY id DESC LIMIT 1",
            "rollout_device_latest_idx",
        ),
        # a campaign's rollouts (no index of its own: the leading column of several)
        ("SELECT id FROM campaigns_rollout WHERE campaign_id = 1", None),
    ],
)
def test_rollouts_by_device_and_campaign_still_use_an_index(query: str, index: str | None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + query)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan" not in plan, plan
    assert index is None or index in plan, plan
