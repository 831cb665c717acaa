"""Faults that lose nothing, with more devices: the chaos scenario of
``tests/campaigns/test_chaos_e2e.py`` (two gateway processes, two Celery workers, a Redis and a
PostgreSQL proxy of its own; a gateway, a worker and Redis SIGKILLed, PostgreSQL refusing
connections, all during the campaign) with ``BENCH_CHAOS_DEVICES`` devices per gateway (250 by
default), run by pytest in a database of its own. Prints what it survived, the outcome, and the
wall time; a campaign that did not complete with every device succeeded is a MISS, a scenario
that broke an invariant (a device updated twice, a command lost, counts unequal to the rows,
the audit chain broken) an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _report import Report

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "fwupd_bench")
PER_GATEWAY = int(os.environ.get("BENCH_CHAOS_DEVICES", "250"))
TEST = "tests/campaigns/test_chaos_e2e.py::test_chaos_scenario_with_more_devices"


def main() -> int:
    report = Report()
    report.machine()
    base, _, _ = ADMIN_URL.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "chaos.json"
        env = {
            **os.environ,
            # pytest-django makes test_<name> beside it, and drops it afterwards.
            "DATABASE_URL": f"{base}/{DB_PREFIX}_chaos",
            "FWUPD_CHAOS_DEVICES_PER_GATEWAY": str(PER_GATEWAY),
            "FWUPD_CHAOS_REPORT": str(out),
            "FWUPD_VAR_DIR": str(Path(tmp) / "var"),
        }
        env.pop("CELERY_BROKER_URL", None)  # the scenario runs its own Redis
        run = subprocess.run(
            [
                sys.executable, "-m", "pytest", TEST, "-m", "bench", "-q", "-x",
                "-p", "no:randomly", "--create-db", "-p", "no:cacheprovider",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )  # fmt: skip
        if not out.exists():
            print(run.stdout[-6000:], run.stderr[-2000:])
            report.error("the chaos scenario did not finish (an invariant broke or it stalled)")
            return report.exit_status()
        result = json.loads(out.read_text())
    print(f"devices                  {result['devices']} (two gateways, two Celery workers)")
    for fault in result["survived"]:
        print(f"survived                 {fault}")
    print(f"outcome                  {result['outcome']} (campaign {result['status']})")
    print(
        f"commands                 {result['commands']} fw_update, of which {result['waits']} "
        "ended as device_unreachable and were sent again"
    )
    print(f"boots                    {result['boots']} (one per updated device, none twice)")
    print(f"wall time                {result['seconds']:.1f} s (registration to last rollout)")
    succeeded = result["outcome"].get("succeeded", 0)
    report.goal(
        "devices succeeded through the faults",
        succeeded,
        at_least=result["devices"],
        detail="every device updated exactly once, no command lost, audit chain verified",
    )
    if run.returncode != 0:
        print(run.stdout[-3000:])
    return report.exit_status()


if __name__ == "__main__":
    sys.exit(main())
