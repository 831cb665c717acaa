"""The console's device list and dashboard at fleet size, on a throwaway PostgreSQL database.

Plain script: ``python benchmarks/bench_device_list.py [--devices N] [--repeats R] [--keep-db]``.
Defaults: 100,000 devices (``_campaign_world.insert_devices``: 1% each of another class,
unmapped, already current, ...), a 3-stage campaign planned over them with ``campaign_apply``,
then a third of the rollouts marked succeeded and one in twenty failed, last-seen times spread
over 16 hours and one device in ten offline.

Each page is fetched R times (default 5) through Django's test client, signed in, as a browser
would: the whole response (middleware, session, the page's frame, the list's COUNT and SELECT,
template rendering). Printed per page: median and worst wall time in milliseconds and the number
of SQL queries. Pages: the first page, a deep page (the middle and the last of the list), a deep
page in last-seen order, filtered pages (latest update state, class + offline + not seen for 6
hours, version sorted by last seen, tag), and the dashboard. No goal is asserted: the figures
are for docs/console.md ("Scale").
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _campaign_world as cw
from _report import machine_line

DB = f"{cw.DB_PREFIX}_device_list"
SPEC = """
apiVersion: fwupd/v1
kind: Campaign
name: bench-list
release: thermo-1.1.0
target:
  device_class: acme.example/thermo-v2
stages:
  - name: canary
    size: 1%
  - name: wave
    size: 25%
  - name: all
    size: rest
"""


def _log(msg: str) -> None:
    print(f"   [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _setup(storage: str) -> None:
    cw.drop_db(DB)
    cw.create_db(DB)
    env = {**os.environ, "DATABASE_URL": cw.db_url(DB)}
    subprocess.run(
        [sys.executable, str(cw.REPO / "manage.py"), "migrate", "--verbosity", "0"],
        check=True,
        env=env,
        cwd=cw.REPO,
    )
    os.environ["DATABASE_URL"] = cw.db_url(DB)
    os.environ["FIRMWARE_STORAGE_ROOT"] = storage
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Tasks the campaign queues (its first reconcile) go nowhere: what is timed is the pages.
    os.environ["CELERY_BROKER_URL"] = "memory://localhost/"
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "false"
    import django

    django.setup()


def _fleet(devices: int) -> Any:
    from django.db import connection

    from campaigns import services
    from campaigns.spec import parse_spec

    world = cw.make_world()
    t = time.perf_counter()
    cw.insert_devices(world, count=devices)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_device SET last_seen = now() - (id % 960) * interval '1 minute',"
            " online = (id % 10 <> 0),"
            " tags = CASE WHEN id % 50 = 0 THEN '[\"lab\"]'::jsonb ELSE tags END"
        )
    _log(f"{devices:,} devices in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    services.campaign_apply(spec=parse_spec(SPEC, source="bench.yaml"), actor=world.ops)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_rollout SET state = CASE WHEN id % 20 = 0 THEN 'failed'"
            " ELSE 'succeeded' END, reason = CASE WHEN id % 20 = 0 THEN"
            " 'integrity_check_failed' ELSE '' END, fw_result = CASE WHEN id % 20 = 0 THEN 5"
            " ELSE 1 END, finished_at = now() - (id % 120) * interval '1 minute'"
            " WHERE state = 'pending' AND (id % 3 = 0 OR id % 20 = 0)"
        )
        cursor.execute("ANALYZE")
    _log(f"campaign planned and a third of it finished in {time.perf_counter() - t:.1f}s")
    return world


def _pages(world: Any, devices: int) -> list[tuple[str, str]]:
    last = max(1, -(-devices // 200))
    thermo = world.thermo.pk
    return [
        ("first page", "/devices/"),
        ("middle page", f"/devices/?page={last // 2}"),
        ("last page", f"/devices/?page={last}"),
        ("deep page, last seen desc", f"/devices/?sort=-last_seen&page={last // 2}"),
        ("deep page, by class", f"/devices/?sort=class&page={last // 2}"),
        ("filter: state failed", "/devices/?state=failed"),
        ("filter: state failed, deep", "/devices/?state=failed&page=10"),
        ("filter: never in a campaign", "/devices/?state=none"),
        ("filter: class+offline+unseen 6h", f"/devices/?class={thermo}&online=no&unseen=6"),
        ("filter: version, by last seen", "/devices/?version=1.1.0&sort=-last_seen"),
        ("filter: tag lab", "/devices/?tag=lab"),
        ("filter: endpoint contains", "/devices/?q=-00042"),
        ("dashboard", "/"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as storage:
        _setup(storage)
        try:
            return _run(args)
        finally:
            from django.db import connections

            connections.close_all()
            if not args.keep_db:
                cw.drop_db(DB)


def _run(args: argparse.Namespace) -> int:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    setup_test_environment()
    world = _fleet(args.devices)
    client = Client()
    client.force_login(world.ops)
    print(machine_line())
    print(f"device list at {args.devices:,} devices ({args.repeats} fetches each)")
    print(f"{'page':34} {'median ms':>10} {'worst ms':>9} {'queries':>8}  shown")
    for label, url in _pages(world, args.devices):
        assert client.get(url).status_code == 200, url  # warm the plan cache and the session
        times = []
        for _ in range(args.repeats):
            with CaptureQueriesContext(connection) as queries:
                t = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200, url
        shown = response.context.get("span", "") if response.context else ""
        print(
            f"{label:34} {statistics.median(times):10.1f} {max(times):9.1f}"
            f" {len(queries.captured_queries):8d}  {shown}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
