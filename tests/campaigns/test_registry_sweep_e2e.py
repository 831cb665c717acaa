"""A gateway process is SIGKILLed while holding registrations: it never reports their expiry,
and the workers' sweep (``registry_sweep_task``) takes its devices offline once their lifetime
and the grace have passed.

The gateway is ``manage.py lwm2m_gateway`` in its own process, applying its device events to the
pytest-django PostgreSQL test database (eager Celery in that process); the simulated devices run
on a loop in this process and register over loopback; a Celery worker process takes the sweep
tasks from Redis, and this process plays beat.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from audit.models import AuditEvent
from campaigns.device_services import REGISTRY_SWEEPER, SWEPT, registrations_sweep
from campaigns.models import Device, DeviceEvent
from tests.campaigns.support import wait_for
from tests.campaigns.test_worker_killed_e2e import BROKER, Workers, broker_queue
from tests.workers.lwm2m.conftest import fleet_spec
from workers.lwm2m.ports import claim_udp_port
from workers.lwm2m.simulator import Fleet
from workers.tasks import registry_sweep_task

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVICES = 6
LIFETIME = 10  # seconds: the devices Update every 5 s while the gateway answers

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql" or not BROKER.startswith(("redis://", "rediss://")),
    reason="needs PostgreSQL (DATABASE_URL) and Redis (CELERY_BROKER_URL): a gateway or "
    "worker process cannot share SQLite's in-memory test database, nor an in-process broker",
)
# Used as a fixture (this process's tasks go to a queue of its own, read by the worker).
__all__ = ["broker_queue"]


def _database_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] or ""
    if db["PASSWORD"]:
        auth += f":{db['PASSWORD']}"
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{auth}@{host}/{db['NAME']}"


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A gateway process of this test's own (only it is ever signalled)."""
    port = claim_udp_port("127.0.0.1")
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "CELERY_TASK_ALWAYS_EAGER": "true",
        "LWM2M_COMMAND_BUS_URL": "memory://",
        "LWM2M_ADMISSION": "open",
        "LWM2M_ACCEPT_NOSEC": "1",
        "LOG_LEVEL": "ERROR",
    }
    env.pop("CELERY_BROKER_URL", None)
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "lwm2m_gateway",
            "--bind",
            f"127.0.0.1:{port}",
            "--gateway-id",
            "gw-doomed",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, port
    except BaseException:
        print((tmp_path / "gateway.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


class _Loop:
    """An asyncio loop on a thread of its own, for the simulated devices."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_devices_of_a_sigkilled_gateway_go_offline_through_the_workers_sweep(
    transactional_db: None,
    broker_queue: str,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    gateway_process: tuple[subprocess.Popen[bytes], int],
) -> None:
    settings.REGISTRATION_GRACE_SECONDS = 1
    monkeypatch.setenv("REGISTRATION_GRACE_SECONDS", "1")  # the worker's
    proc, port = gateway_process
    workers = Workers(broker_queue, tmp_path)
    loop = _Loop()
    fleet = Fleet(server_uri=f"coap://127.0.0.1:{port}", trust_anchors=[])
    fleet.load_or_create(fleet_spec(DEVICES, lifetime=LIFETIME, prefix="doomed"))
    try:
        loop.call(fleet.start(), timeout=60)
        loop.call(fleet.wait_registered(60), timeout=65)
        wait_for(
            lambda: Device.objects.filter(online=True, gateway_id="gw-doomed").count() == DEVICES,
            timeout=60,
            what="the gateway process never reported the registrations",
        )
        # Live registrations, just refreshed: the sweep leaves them alone.
        assert registrations_sweep() == 0
        workers.start()

        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        # Nobody reports an expiry now; still "online" until the sweep comes by.
        assert Device.objects.filter(online=True, gateway_id="gw-doomed").count() == DEVICES

        def beat() -> None:
            registry_sweep_task.delay()

        wait_for(
            lambda: not Device.objects.filter(gateway_id="gw-doomed", online=True).exists(),
            timeout=90,
            tick=beat,
            interval=1,
            what="the workers' sweep taking the devices offline",
        )
    except BaseException:
        print(workers.logs())
        raise
    finally:
        workers.stop_all()
        loop.call(fleet.stop(deregister=False), timeout=30)
        loop.close()
    expired = list(
        DeviceEvent.objects.filter(kind="expired").values_list("device__endpoint", "gateway_id")
    )
    assert sorted(expired) == sorted((endpoint, "gw-doomed") for endpoint in fleet.devices)
    # Every expiry was the sweep's, none the dead gateway's.
    assert not DeviceEvent.objects.filter(kind="expired").exclude(data__reason=SWEPT).exists()
    assert AuditEvent.objects.filter(
        action="device.registrations_swept", actor=REGISTRY_SWEEPER
    ).exists()
    # Sweeping again changes nothing.
    assert registrations_sweep() == 0
