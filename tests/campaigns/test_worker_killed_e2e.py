"""A real Celery worker is SIGKILLed mid-stage and a new one takes over: the campaign completes
with no device lost and none dispatched twice.

Everything crosses process boundaries as in production: the worker process runs
``campaign_reconcile_task``, ``device_command_task`` and ``device_events_task`` against the
pytest-django PostgreSQL test database; the gateway (in this process, with the simulated fleet)
consumes its commands from the Redis bus and reports device events as Celery tasks through the
Redis broker. This process plays Celery beat.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from campaigns import services
from campaigns.models import (
    IN_FLIGHT_STATES,
    Campaign,
    CampaignStatus,
    DeviceCommand,
    Rollout,
    RolloutState,
)
from campaigns.spec import parse_spec
from tests.campaigns.conftest import start_fleet
from tests.campaigns.support import (
    BEAT_SECONDS,
    Catalog,
    few_hundred_scenario,
    rollout_progress,
    spec_text,
    throttled,
    wait_for,
)
from workers.tasks import campaign_reconcile_task

REPO_ROOT = Path(__file__).resolve().parents[2]
FLEET = 24
BROKER = settings.CELERY_BROKER_URL or ""

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql" or not BROKER.startswith(("redis://", "rediss://")),
    reason="needs PostgreSQL (DATABASE_URL) and Redis (CELERY_BROKER_URL): a worker process "
    "cannot share SQLite's in-memory test database, nor an in-process broker",
)


def _database_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] or ""
    if db["PASSWORD"]:
        auth += f":{db['PASSWORD']}"
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{auth}@{host}/{db['NAME']}"


class Workers:
    """Celery worker processes this test starts (and only those are ever signalled)."""

    def __init__(self, queue: str, log_dir: Path) -> None:
        self.queue = queue
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "CELERY_BROKER_URL": BROKER,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "LWM2M_COMMAND_BUS_URL": BROKER,
            "DJANGO_SETTINGS_MODULE": "tests.campaigns.worker_settings",
            "FWUPD_TEST_CELERY_QUEUE": self.queue,
        }
        log = (self.log_dir / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--pool=solo",
                "-Q",
                self.queue,
                "-n",
                f"{self.queue}-{len(self.procs)}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("worker-*.log"))
        )


@pytest.fixture
def broker_queue(settings: Any) -> Iterator[str]:
    """This process publishes to a queue of its own, through Redis (not eagerly)."""
    from config.celery import app

    queue = f"fwupd-test-{uuid.uuid4().hex[:10]}"
    old = app.conf.task_always_eager, app.conf.task_default_queue
    app.conf.task_always_eager, app.conf.task_default_queue = False, queue
    settings.LWM2M_COMMAND_BUS_URL = BROKER
    yield queue
    app.conf.task_always_eager, app.conf.task_default_queue = old
    import redis

    client = redis.Redis.from_url(BROKER)
    client.delete(queue)
    client.close()


@dataclass
class CrossProcess:
    """Worker processes, and the gateway + fleet in this process reporting to them."""

    workers: Workers
    gateway_id: str
    embedded: Any = None

    def start_fleet(self, catalog: Catalog, **kwargs: Any) -> Any:
        self.embedded = start_fleet(catalog, gateway_id=self.gateway_id, **kwargs)
        return self.embedded


@contextlib.contextmanager
def cross_process(queue: str, tmp_path: Path) -> Iterator[CrossProcess]:
    """Stops the fleet and every worker afterwards, drops the gateway's command stream, and
    prints the workers' logs when the test fails."""
    run = CrossProcess(Workers(queue, tmp_path), gateway_id=f"gw-{queue}")
    try:
        yield run
    except BaseException:
        print(run.workers.logs())
        raise
    finally:
        if run.embedded is not None:
            run.embedded.stop()
        run.workers.stop_all()
        import redis

        client = redis.Redis.from_url(BROKER)
        client.delete(f"fwupd:lwm2m:gw:{run.gateway_id}:cmd")
        client.close()


def throttled_reconcile() -> Any:
    """The beat of the worker scenarios: a reconcile task per campaign, throttled."""
    last: dict[int, float] = {}

    def reconcile(campaign_id: int) -> None:
        now = time.monotonic()
        if now - last.get(campaign_id, float("-inf")) >= BEAT_SECONDS:
            last[campaign_id] = now
            campaign_reconcile_task.delay(campaign_id)

    return reconcile


def test_worker_sigkilled_mid_stage_loses_no_device_and_dispatches_none_twice(
    transactional_db: None, broker_queue: str, catalog: Catalog, tmp_path: Path
) -> None:
    with cross_process(broker_queue, tmp_path) as run:
        first = run.workers.start()
        embedded = run.start_fleet(catalog, count=FLEET, wrong_class=0)
        stages = (
            "  - name: canary\n    size: 25%\n    max_in_flight: 3\n"
            "  - name: wave\n    size: 50%\n    max_in_flight: 4\n"
            "  - name: all\n    size: rest\n    max_in_flight: 4\n"
        )
        text = spec_text("kill-worker", stages=stages, extra="timeouts:\n  device: 5m\n")
        campaign, _ = services.campaign_apply(spec=parse_spec(text), actor=catalog.ops)
        rollouts = Rollout.objects.filter(campaign=campaign)

        beat = throttled(lambda: campaign_reconcile_task.delay(campaign.pk))

        def mid_stage() -> bool:
            c = Campaign.objects.get(pk=campaign.pk)
            return c.current_stage >= 1 and rollouts.filter(state__in=IN_FLIGHT_STATES).exists()

        moved = rollout_progress(rollouts)
        wait_for(
            mid_stage, timeout=60, tick=beat, interval=0.3, what="second stage in flight",
            progress=moved,
        )  # fmt: skip
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert first.returncode == -signal.SIGKILL
        in_flight_at_kill = rollouts.filter(state__in=IN_FLIGHT_STATES).count()
        assert in_flight_at_kill >= 1
        # While no worker runs, the beat and the gateway's events pile up in Redis.
        for _ in range(6):
            beat()
            time.sleep(0.25)

        run.workers.start()

        def completed() -> bool:
            status = Campaign.objects.get(pk=campaign.pk).status
            assert status in (CampaignStatus.RUNNING, CampaignStatus.COMPLETED), status
            return status == CampaignStatus.COMPLETED

        wait_for(
            completed, timeout=120, tick=beat, interval=0.3, what="campaign completed",
            progress=moved,
        )  # fmt: skip

        # No device lost: every one of them succeeded, and runs the new firmware.
        assert rollouts.filter(state=RolloutState.SUCCEEDED).count() == FLEET
        assert embedded.fleet is not None
        for endpoint, device in embedded.fleet.devices.items():
            assert device.state.version == "1.1.0", endpoint
            # None dispatched twice: one update command, one install, one boot per device.
            assert device.boots == 1, (endpoint, device.events)
        for rollout in rollouts.select_related("device"):
            assert rollout.attempts == 1, rollout.device.endpoint
            # Beside the attempt, one command per wait (a command that never reached the device).
            commands = DeviceCommand.objects.filter(device=rollout.device, operation="fw_update")
            assert commands.count() == rollout.attempts + rollout.waits, rollout.device.endpoint
            assert str(commands.latest("created_at").pk) == str(rollout.command_id)


def test_a_few_hundred_devices_through_three_stages_with_a_worker(
    transactional_db: None, broker_queue: str, catalog: Catalog, tmp_path: Path
) -> None:
    """The issue's end-to-end scale across processes: a Celery worker applies the gateway's
    events and runs the reconcile and command tasks sent through Redis while 240 simulated
    devices update (scenario: tests/campaigns/support.py, few_hundred_scenario)."""
    with cross_process(broker_queue, tmp_path) as run:
        run.workers.start()
        few_hundred_scenario(
            run.start_fleet(catalog, count=240, wrong_class=4),
            catalog,
            fleet_size=240,
            reconcile=throttled_reconcile(),
            interval=0.5,
        )
