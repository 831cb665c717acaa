"""Across processes, as in production: a real Celery worker (its own process, the Redis broker,
the PostgreSQL test database) applies device events and runs a reconcile pass; this process's
``/metrics`` sees the dispatches and the applied events the worker counted, and the worker's
JSON log lines carry the request id of the request that queued the work."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from campaigns.models import Rollout, RolloutState
from ops import logs
from tests.campaigns.support import Catalog, apply, build_catalog, make_devices, spec_text
from tests.campaigns.test_worker_killed_e2e import BROKER, Workers, broker_queue
from workers.tasks import campaign_reconcile_task, device_events_task

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql" or not BROKER.startswith(("redis://", "rediss://")),
    reason="needs PostgreSQL (DATABASE_URL) and Redis (CELERY_BROKER_URL)",
)
__all__ = ["broker_queue"]
TOKEN = "worker-e2e-metrics-token-0123"


class JsonWorkers(Workers):
    """Workers that log JSON lines (LOG_FORMAT=json)."""

    def start(self) -> Any:
        import os

        from django.conf import settings

        os.environ["LOG_FORMAT"] = "json"
        os.environ["METRICS_TALLY_PREFIX"] = settings.METRICS_TALLY_PREFIX  # this test's own
        try:
            return super().start()
        finally:
            del os.environ["LOG_FORMAT"], os.environ["METRICS_TALLY_PREFIX"]


@pytest.fixture
def worker(broker_queue: str, tmp_path: Path) -> Iterator[JsonWorkers]:
    workers = JsonWorkers(broker_queue, tmp_path)
    workers.start()
    yield workers
    workers.stop_all()


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for(predicate: Any, workers: Workers, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time\n" + workers.logs())
        time.sleep(0.2)


def test_worker_counts_reach_the_web_tiers_metrics_and_its_logs_carry_the_request_id(
    transactional_db: None, django_user_model: Any, worker: JsonWorkers, settings: Any
) -> None:
    settings.METRICS_TOKEN = TOKEN
    catalog: Catalog = build_catalog(django_user_model)
    make_devices(catalog, 4)
    campaign = apply(catalog, spec_text("e2e-metrics"), now=timezone.now())

    request_id = "req-e2e-0000-1111"
    with logs.log_context(request_id=request_id):
        campaign_reconcile_task.delay(campaign.pk)
        device_events_task.delay(
            [
                {"type": "fw_status", "endpoint": "dev-e2e", "state": "not a number"},
                {
                    "type": "expired",
                    "endpoint": "dev-gone",
                    "registration_id": "r1",
                    "at": time.time() - 30,
                },
            ]
        )

    def counted() -> bool:
        found = scrape()
        return (
            found.get(("fwupd_dispatches_total", (("campaign", "e2e-metrics"),))) == 4
            and found.get(("fwupd_device_events_applied_total", ())) == 2
        )

    wait_for(counted, worker)
    assert Rollout.objects.filter(campaign=campaign, state=RolloutState.QUEUED).count() == 4
    found = scrape()
    lag = found[("fwupd_device_event_lag_seconds", ())]
    assert 30 <= lag < 3600
    assert found[("fwupd_rollouts", (("campaign", "e2e-metrics"), ("state", "queued")))] == 4

    def json_lines() -> list[dict[str, Any]]:
        text = "\n".join(p.read_text() for p in sorted(worker.log_dir.glob("worker-*.log")))
        parsed = []
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):  # a line being written right now
                    parsed.append(json.loads(line))
        return parsed

    def traced() -> set[str]:
        return {
            e["data"]["name"]
            for e in json_lines()
            if e["logger"] == "celery.app.trace" and e["request_id"] == request_id
        }

    # The commands the pass queued run after it: wait for the last of them to be logged.
    wait_for(lambda: "workers.tasks.device_commands_task" in traced(), worker)
    lines = json_lines()
    refused = next((e for e in lines if "device event refused" in e.get("message", "")), None)
    assert refused is not None, worker.logs()
    assert (refused["request_id"], refused["device"]) == (request_id, "dev-e2e")
    # The reconcile pass ran under the request's id, and the commands it queued carried the
    # id on to their own tasks.
    assert traced() >= {
        "workers.tasks.campaign_reconcile_task",
        "workers.tasks.device_events_task",
        "workers.tasks.device_commands_task",
    }
