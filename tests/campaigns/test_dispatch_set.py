"""The set-based dispatch of PostgreSQL (``engine._dispatch_set``) against the portable row path
(``engine._dispatch_rows``) on the same rows: the same rollouts chosen in the same order, the
same refusals with the same wording, the same deferrals, the same commands. Every device case
the checks tell apart is in the fleet: refused for rollback, already current (a message naming
the device), a clock off (checked alone, held pending), a clock off accepted by an operator, a
clockless device, no delivery method, push delivery, busy in another campaign, outside its
maintenance window, no report key registered, and a room smaller than the eligible devices.
Each command carries its own report nonce (drawn apart by each path), compared by its shape."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from campaigns import delivery, engine
from campaigns.models import Campaign, Device, DeviceCommand, Rollout, RolloutState
from campaigns.selectors import spec_of
from tests.campaigns.support import (
    Catalog,
    apply,
    make_devices,
    release_trust_policy,
    spec_text,
)

pytestmark = pytest.mark.django_db


class _Undo(Exception):
    """Rolls a path's writes back once its rows are read."""


def _fleet(catalog: Catalog) -> None:
    for prefix, count in FLEET:
        make_devices(catalog, count, prefix=prefix, tags=["night"] if prefix == "night" else [])


FLEET = [
    ("ok", 24), ("counter", 3), ("current", 2), ("skewed", 3), ("trusted", 2), ("clockless", 2),
    ("nopull", 2), ("push", 2), ("night", 3), ("busy", 2), ("nokey", 2),
]  # fmt: skip


def _change_after_planning(now: dt.datetime) -> None:
    """What dispatch finds changed since the plan (the plan refuses what it already sees)."""
    changes: dict[str, dict[str, Any]] = {
        "counter": {"security_counter": 9},
        "current": {"sequence_number": 5, "firmware_version": "1.1.0"},
        "skewed": {"clock_offset_seconds": -7200.0},
        "trusted": {"clock_offset_seconds": -7200.0, "clock_trusted_at": now},
        "clockless": {"device_time": 100.0, "clock_offset_seconds": -1e9},
        "nopull": {"fw_protocols": [delivery.COAPS]},
        "push": {"fw_delivery_method": delivery.PUSH_ONLY},
        "nokey": {"report_key": ""},
    }
    for prefix, fields in changes.items():
        Device.objects.filter(endpoint__startswith=f"{prefix}-").update(**fields)


def _decide(campaign: Campaign, path: Any, now: dt.datetime) -> tuple[Any, list[Any]]:
    """One pass of ``path``; its answer and the rows it wrote, then rolled back."""
    spec = spec_of(campaign)
    release = engine.target_state(campaign, now=now)
    seen: dict[str, Any] = {}
    try:
        with transaction.atomic():
            locked = (
                Campaign.objects.select_for_update(of=("self",))
                .select_related(
                    "release__manifest", "device_class__vendor", "trust_policy__device_class"
                )
                .get(pk=campaign.pk)
            )
            room = engine._room(locked, spec, now=now, batch=None)
            seen["answer"] = path(locked, spec, release, room=room, now=now)
            commands = {
                c.pk: (c.device_id, c.operation, _nonce_shape(c.args), c.status)
                for c in DeviceCommand.objects.filter(operation="fw_update")
            }
            nonces = [c.args["report_nonce"] for c in DeviceCommand.objects.all()]
            assert len(set(nonces)) == len(nonces)
            seen["rows"] = [
                (
                    r.device.endpoint, r.state, r.reason, r.detail, r.device_clock, r.attempts,
                    r.next_attempt_at, r.finished_at, r.dispatched_at, r.deadline_at,
                    r.manifest_id, commands.get(r.command_id), r.payload, r.report_verdict,
                )
                for r in Rollout.objects.filter(campaign=campaign)
                .select_related("device")
                .order_by("device__endpoint")
            ]  # fmt: skip
            raise _Undo
    except _Undo:
        pass
    return seen["answer"], seen["rows"]


def _nonce_shape(args: dict[str, Any]) -> dict[str, Any]:
    """The command's arguments with its report nonce replaced by its size in bytes."""
    nonce = args.get("report_nonce")
    return {**args, "report_nonce": len(bytes.fromhex(nonce)) if nonce else None}


def _busy_elsewhere(catalog: Catalog, now: dt.datetime) -> None:
    other = apply(
        catalog,
        spec_text("other", target_extra="  include:\n    - busy-00000\n    - busy-00001\n"),
        now=now,
    )
    Rollout.objects.filter(campaign=other).update(state=RolloutState.DISPATCHED)


@pytest.mark.parametrize(
    ("name", "stages", "extra"),
    [
        ("plain", "  - name: all\n    size: 100%\n", ""),
        ("capped", "  - name: all\n    size: 100%\n    max_in_flight: 9\n", ""),
    ],
)
def test_set_based_dispatch_writes_what_the_row_path_writes(
    catalog: Catalog, name: str, stages: str, extra: str
) -> None:
    now = timezone.now()
    _fleet(catalog)
    _busy_elsewhere(catalog, now)
    campaign = apply(catalog, spec_text(name, stages=stages, extra=extra), now=now)
    _change_after_planning(now)
    rows_answer, by_rows = _decide(campaign, engine._dispatch_rows, now)
    set_answer, by_set = _decide(campaign, engine._dispatch_set, now)
    assert set_answer == rows_answer
    assert by_set == by_rows
    dispatched, skipped = set_answer
    assert dispatched == (9 if name == "capped" else 33)
    if name == "plain":
        assert skipped == {
            "already_current": 2,
            "clock_skew": 3,
            "no_supported_delivery": 2,
            "no_report_key": 2,
            "rollback_refused_counter": 3,
        }
        by_endpoint = {row[0]: row for row in by_set}
        assert "current-00001" in by_endpoint["current-00001"][3]
        assert by_endpoint["trusted-00000"][4] == "off"
        assert by_endpoint["clockless-00000"][4] == "clockless"
        assert by_endpoint["busy-00000"][1] == RolloutState.PENDING
        assert by_endpoint["busy-00000"][6] == now + engine.DEFER_RECHECK
        assert by_endpoint["push-00000"][11][2]["method"] == "push"


def test_set_based_dispatch_defers_outside_the_window_as_the_row_path_does(
    catalog: Catalog,
) -> None:
    now = timezone.now()
    _fleet(catalog)
    closed = (now + dt.timedelta(hours=3)).hour
    extra = f"windows:\n  - cron: '0 {closed} * * *'\n    duration: 1h\n    tags: [night]\n"
    campaign = apply(catalog, spec_text("windowed", extra=extra), now=now)
    _change_after_planning(now)
    rows_answer, by_rows = _decide(campaign, engine._dispatch_rows, now)
    set_answer, by_set = _decide(campaign, engine._dispatch_set, now)
    assert set_answer == rows_answer
    assert by_set == by_rows
    night = [row for row in by_set if row[0].startswith("night-")]
    assert [(row[1], row[6]) for row in night] == [
        (RolloutState.PENDING, now + engine.DEFER_RECHECK)
    ] * 3


POLICY_FLEET = [
    ("ok", 12), ("held", 3), ("newer", 2), ("skewed", 2), ("trusted", 2), ("nopull", 2),
    ("push", 2), ("busy", 2), ("nokey", 2), ("older", 2),
]  # fmt: skip


def test_trust_policy_campaign_dispatch_is_the_same_on_both_paths(catalog: Catalog) -> None:
    """A trust-policy campaign: the devices that hold the policy or a later one, found so at
    dispatch, are skipped with the same reasons and wording on both paths, and the chosen ones
    get the same trust-policy commands (no manifest on the rollout)."""
    now = timezone.now()
    release_trust_policy(catalog)
    v2 = release_trust_policy(catalog)
    for prefix, count in POLICY_FLEET:
        make_devices(catalog, count, prefix=prefix, trust_policy_version=1)
    _busy_elsewhere(catalog, now)
    campaign = apply(catalog, spec_text("policy", trust_policy=2), now=now)
    assert campaign.trust_policy_id == v2.pk and campaign.release_id is None
    _change_after_planning(now)
    Device.objects.filter(endpoint__startswith="held-").update(trust_policy_version=2)
    Device.objects.filter(endpoint__startswith="newer-").update(trust_policy_version=3)
    Device.objects.filter(endpoint__startswith="older-").update(trust_policy_version=None)
    rows_answer, by_rows = _decide(campaign, engine._dispatch_rows, now)
    set_answer, by_set = _decide(campaign, engine._dispatch_set, now)
    assert set_answer == rows_answer
    assert by_set == by_rows
    dispatched, skipped = set_answer
    # ok 12, trusted 2, push 2, older 2 (no policy recorded: it may take v2).
    assert dispatched == 18
    assert skipped == {
        "clock_skew": 2,
        "no_report_key": 2,
        "no_supported_delivery": 2,
        "trust_policy_held": 3,
        "trust_policy_rollback": 2,
    }
    by_endpoint = {row[0]: row for row in by_set}
    assert "held-00002 already holds trust policy v2" in by_endpoint["held-00002"][3]
    assert "newer-00001 holds trust policy v3" in by_endpoint["newer-00001"][3]
    command = by_endpoint["ok-00000"][11][2]
    assert command["delivery"] == "trust-policy"
    assert command["manifest_digest"] == v2.sha256
    assert command["report_nonce"] == 16
    assert by_endpoint["push-00000"][11][2]["method"] == "push"
    assert by_endpoint["ok-00000"][10] is None  # no manifest
