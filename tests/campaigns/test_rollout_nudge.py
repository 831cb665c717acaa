"""A rollout that ends on a device's event (succeeded, failed, back to pending) asks for a pass
of its campaign at once, so the next device is dispatched without waiting for the beat: one
nudged pass queued per campaign at a time (a shared flag in Redis, up from the nudge to the
start of its pass), none when tasks run eagerly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import current_app
from django.utils import timezone

from campaigns import engine, rollouts, services
from campaigns.events import CommandResult, FwStatus
from campaigns.models import Device, Rollout, RolloutState
from campaigns.spec import parse_spec
from ops import tallies
from tests.campaigns.support import Catalog, make_devices, signed_report, spec_text
from workers.tasks import campaign_reconcile_task

pytestmark = pytest.mark.django_db

STAGES = "  - name: all\n    size: 100%\n    max_in_flight: 2\n"


@pytest.fixture
def nudges(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[list[tuple[Any, ...]]]:
    """Tasks run by a broker (not eagerly), the flag in this test's own Redis keys, and the
    nudged passes recorded instead of sent."""
    if tallies.redis_url() is None:
        pytest.skip("needs CELERY_BROKER_URL on Redis (the nudge flag is shared there)")
    settings.METRICS_TALLY_PREFIX = f"test-nudge-{uuid.uuid4().hex[:8]}:"
    eager = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = False
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        campaign_reconcile_task,
        "apply_async",
        lambda args, kwargs, countdown=None: sent.append((*args, kwargs, countdown)),
    )
    yield sent
    current_app.conf.task_always_eager = eager
    tallies._client().delete(*(tallies.key(rollouts.nudge_flag(i)) for i in range(1, 1000)))


def _campaign(catalog: Catalog) -> tuple[Any, list[Rollout]]:
    now = timezone.now()
    make_devices(catalog, 3)
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("nudged", stages=STAGES)), actor=catalog.ops, now=now
    )
    engine.campaign_reconcile(campaign.pk, now=now)
    flying = list(
        Rollout.objects.select_related("manifest")
        .filter(campaign=campaign, command_id__isnull=False)
        .order_by("pk")
    )
    assert len(flying) == 2
    Device.objects.update(firmware_version=flying[0].manifest.version)
    return campaign, flying


def _succeed(rollout: Rollout) -> None:
    rollouts.rollouts_apply_event(
        event=CommandResult(
            command_id=str(rollout.command_id), ok=True, suit_report=signed_report(rollout)
        )
    )


def test_a_rollout_ending_queues_one_pass_after_commit(
    catalog: Catalog, nudges: list[tuple[Any, ...]], django_capture_on_commit_callbacks: Any
) -> None:
    campaign, (first, second) = _campaign(catalog)
    with django_capture_on_commit_callbacks(execute=True):
        # Progress that frees no slot asks for nothing.
        rollouts.rollouts_apply_event(
            event=FwStatus(endpoint=first.device.endpoint, state=1, result=0)
        )
        _succeed(first)
        assert nudges == []  # not before the rollout's end is committed
    assert nudges == [(campaign.pk, {"nudged": True}, rollouts.NUDGE_DELAY_SECONDS)]

    # A second end before the nudged pass started: that pass will see it.
    with django_capture_on_commit_callbacks(execute=True):
        rollouts.rollouts_apply_event(
            event=CommandResult(
                command_id=str(second.command_id), ok=False, error_code="x", permanent=True
            )
        )
    assert len(nudges) == 1
    assert Rollout.objects.get(pk=second.pk).state == RolloutState.FAILED

    # The nudged pass lowers the flag and dispatches the third device into a free slot.
    report = campaign_reconcile_task.run(campaign.pk, nudged=True)
    assert report is not None and report["dispatched"] == 1
    third = Rollout.objects.select_related("manifest").get(
        campaign=campaign, command_id__isnull=False, state=RolloutState.QUEUED
    )
    with django_capture_on_commit_callbacks(execute=True):
        _succeed(third)
    assert nudges == [(campaign.pk, {"nudged": True}, rollouts.NUDGE_DELAY_SECONDS)] * 2


def test_no_nudge_when_tasks_run_eagerly(
    catalog: Catalog,
    nudges: list[tuple[Any, ...]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    current_app.conf.task_always_eager = True  # restored by the fixture
    _, (first, _second) = _campaign(catalog)
    with django_capture_on_commit_callbacks(execute=True):
        _succeed(first)
    assert Rollout.objects.get(pk=first.pk).state == RolloutState.SUCCEEDED
    assert nudges == []
