"""The embedded beat (``workers.beat``): the beat schedule run by a thread of this process, as
``manage.py demo --serve`` uses it, with the real tasks (eager, as on the embedded default)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from celery import current_app
from celery.schedules import crontab

from campaigns.models import Rollout, RolloutState
from tests.campaigns.support import (
    Catalog,
    apply,
    build_catalog,
    make_devices,
    spec_text,
    wait_for,
)
from workers.beat import EmbeddedBeat, schedule_entries


@pytest.fixture
def catalog(db: None, django_user_model: Any) -> Catalog:
    return build_catalog(django_user_model)


def test_the_settings_schedule_is_runnable_embedded() -> None:
    entries = {
        e.name: e
        for e in schedule_entries(__import__("django.conf").conf.settings.CELERY_BEAT_SCHEDULE)
    }
    assert entries["reconcile-campaigns"].task == "workers.tasks.campaigns_reconcile_all_task"
    assert all(e.every > 0 for e in entries.values())


@pytest.mark.parametrize("schedule", [crontab(minute="*/5"), 0, -1.0, "5"])
def test_an_entry_that_is_not_an_interval_is_refused_by_name(schedule: Any) -> None:
    with pytest.raises(ValueError, match="beat entry 'odd': the embedded beat runs intervals"):
        schedule_entries({"odd": {"task": "workers.tasks.x", "schedule": schedule}})


def test_timedelta_intervals_and_arguments_are_kept() -> None:
    (entry,) = schedule_entries(
        {"e": {"task": "t", "schedule": dt.timedelta(seconds=90), "args": [7], "kwargs": {"a": 1}}}
    )
    assert (entry.every, entry.args, entry.kwargs) == (90.0, (7,), {"a": 1})


@pytest.mark.django_db(transaction=True)
def test_the_beat_thread_moves_a_campaign_and_survives_a_failing_entry(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(current_app.conf, "task_always_eager", True)  # the embedded default
    make_devices(catalog, 3)
    campaign = apply(catalog, spec_text("beat"))
    beat = EmbeddedBeat(
        {
            "broken": {"task": "workers.tasks.no_such_task", "schedule": 0.1},
            "reconcile": {
                "task": "workers.tasks.campaign_reconcile_task",
                "schedule": 0.2,
                "args": [campaign.pk],
            },
        },
        tick=0.05,
    ).start()
    try:
        wait_for(
            lambda: (
                Rollout.objects.filter(campaign=campaign, state=RolloutState.QUEUED).count() == 3
            ),
            timeout=30,
            what="the beat's reconcile dispatched the campaign",
        )
        wait_for(lambda: beat.failures["broken"] >= 2, timeout=30, what="the broken entry ran")
    finally:
        beat.stop()
    assert beat.runs["reconcile"] >= 1 and beat.failures["reconcile"] == 0
    assert beat.runs["broken"] == 0
    assert not beat._thread.is_alive()  # stopped: nothing runs any more
