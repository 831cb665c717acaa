"""The planning benchmark's reference SQL produces exactly the planner's rows.

The benchmark's ratio only means something when the raw ``INSERT ... SELECT`` it is compared
against writes the same rollouts as ``campaign_apply``; this runs its planning section at a
small size (PostgreSQL, as the benchmark itself needs) and reads its row comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks" / "bench_campaigns.py"


def _postgres_reachable() -> bool:
    import psycopg

    sys.path.insert(0, str(BENCH.parent))
    try:
        import _campaign_world as cw

        with psycopg.connect(cw.ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False
    finally:
        sys.path.remove(str(BENCH.parent))


def test_plan_reference_sql_writes_the_planners_rows_including_pending_clock_skew() -> None:
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail("the benchmark needs PostgreSQL (BENCH_POSTGRES_URL), which CI starts")
        pytest.skip("no PostgreSQL at BENCH_POSTGRES_URL")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["BENCH_DB_PREFIX"] = f"fwupd_bench_test{os.getpid()}"  # throwaway databases of its own
    result = subprocess.run(
        [sys.executable, str(BENCH), "--sections", "plan", "--devices", "2000"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout
    # The planner writes clock-skewed devices as pending with the reason (transient refusal):
    # the sample fleet has some, so the comparison covers that row kind.
    assert "'pending:clock_skew'" in out, out + result.stderr
    assert "(device, stage, bucket, state, reason): True" in out, out + result.stderr
    assert "ROWS DIFFER" not in out
