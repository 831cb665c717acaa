"""The benchmarks' shared report: machine line, side-by-side figures, PASS/MISS and strict mode.

``make bench`` must show every figure on a slow machine (a MISS exits 0) and fail on a MISS only
when asked (``BENCH_STRICT=1``); a run that could not measure fails in every mode.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import _report

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
processor\t: 1
model name\t: AMD EPYC 7B13
"""


def _report_for(strict: bool) -> tuple[_report.Report, io.StringIO]:
    out = io.StringIO()
    return _report.Report(strict=strict, out=out), out


def test_goals_are_the_performance_issues() -> None:
    assert _report.SUIT_COLD_RATIO_MAX == 1.10
    assert _report.DISPATCH_DECISIONS_MIN == 50_000
    assert _report.GATEWAY_VS_LIBCOAP_MIN == 1.0


@pytest.mark.parametrize(
    ("value", "passed"), [(1.099, True), (1.10, True), (1.101, False), (1.54, False)]
)
def test_at_most_goal_passes_up_to_and_including_the_bound(value: float, passed: bool) -> None:
    report, out = _report_for(strict=True)
    verdict = report.goal("ES256 cold/raw", value, at_most=1.10)
    assert verdict.passed is passed
    assert out.getvalue().startswith("PASS " if passed else "MISS ")
    assert "(goal <= 1.100)" in out.getvalue()


@pytest.mark.parametrize(
    ("value", "passed"), [(49_999.0, False), (50_000.0, True), (3_713.0, False), (61_000.0, True)]
)
def test_at_least_goal_passes_from_the_bound_up(value: float, passed: bool) -> None:
    report, out = _report_for(strict=True)
    assert report.goal("dispatch", value, at_least=50_000).passed is passed
    assert out.getvalue().startswith("PASS " if passed else "MISS ")


def test_a_goal_needs_exactly_one_bound() -> None:
    report, _ = _report_for(strict=False)
    with pytest.raises(ValueError, match="exactly one"):
        report.goal("x", 1.0)
    with pytest.raises(ValueError, match="exactly one"):
        report.goal("x", 1.0, at_most=2.0, at_least=0.5)
    assert report.verdicts == []


def test_a_miss_exits_zero_unless_strict() -> None:
    lenient, out = _report_for(strict=False)
    lenient.goal("gateway / libcoap", 0.31, at_least=1.0)
    lenient.goal("gateway / aiocoap", 1.1, at_least=0.8)
    assert lenient.exit_status() == _report.EXIT_OK
    assert "1 goal(s) missed; exit status 0 - BENCH_STRICT=1 to fail" in out.getvalue()

    strict, _ = _report_for(strict=True)
    strict.goal("gateway / libcoap", 0.31, at_least=1.0)
    strict.goal("gateway / aiocoap", 1.1, at_least=0.8)
    assert strict.exit_status() == _report.EXIT_MISS


def test_every_goal_met_exits_zero_in_strict_mode() -> None:
    report, _ = _report_for(strict=True)
    report.goal("a", 1.0, at_most=1.1)
    report.check("queries constant", True, "[11]")
    assert report.exit_status() == _report.EXIT_OK


def test_the_load_at_the_end_is_printed_beside_the_one_at_start() -> None:
    report, out = _report_for(strict=False)
    report.exit_status()
    assert re.fullmatch(r"load average [\d.]+ [\d.]+ [\d.]+ at end\n", out.getvalue())


def test_a_failed_check_is_a_miss() -> None:
    report, out = _report_for(strict=True)
    report.check("queries per dispatch pass", False, "[11, 12]")
    assert out.getvalue() == "MISS queries per dispatch pass: [11, 12]\n"
    assert report.exit_status() == _report.EXIT_MISS


@pytest.mark.parametrize("strict", [False, True])
def test_an_error_fails_in_every_mode(strict: bool) -> None:
    report, out = _report_for(strict=strict)
    report.goal("a", 1.0, at_most=1.1)
    report.error("3 downloads failed")
    assert "ERROR 3 downloads failed" in out.getvalue()
    assert report.exit_status() == _report.EXIT_ERROR


@pytest.mark.parametrize(
    ("value", "strict"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("", False),
        ("no", False),
    ],
)
def test_strict_mode_reads_bench_strict(value: str, strict: bool) -> None:
    assert _report.strict_mode({"BENCH_STRICT": value}) is strict
    assert _report.strict_mode({}) is False


def test_machine_line_names_the_cpu_cores_and_load() -> None:
    assert _report.cpu_model(CPUINFO) == "AMD EPYC 7B13"
    assert _report.cpu_model("processor\t: 0\n") == "unknown CPU"
    line = _report.machine_line()
    assert line.startswith("machine: ")
    assert " cores, load average " in line
    assert line.endswith(" at start")


def test_ratio_line_sets_each_figure_beside_the_reference_of_the_same_run() -> None:
    line = _report.ratio_line(
        "bytes/s",
        [("libcoap", 8.0), ("bare", 2.0), ("gateway", 4.0)],
        "MB/s",
        reference="libcoap",
    )
    assert "libcoap 8.000 MB/s | bare 2.000 MB/s (0.25x of libcoap) | " in line
    assert line.endswith("gateway 4.000 MB/s (0.50x of libcoap)")


@pytest.mark.parametrize(
    ("body", "strict", "status"),
    [
        ("r.goal('x', 2.0, at_most=1.1)", "0", 0),
        ("r.goal('x', 2.0, at_most=1.1)", "1", 1),
        ("r.goal('x', 1.0, at_most=1.1)", "1", 0),
        ("r.error('no figure')", "0", 2),
    ],
)
def test_make_bench_fails_on_a_miss_only_with_bench_strict(
    tmp_path: Path, body: str, strict: str, status: int
) -> None:
    """The Makefile's bench target, on a benchmark directory holding one fake benchmark: every
    script runs, and the target's status follows the scripts' (strict mode passed through)."""
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "bench_fake.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO_ROOT / 'benchmarks')!r})\n"
        "from _report import Report\n"
        "r = Report()\n"
        f"{body}\n"
        "raise SystemExit(r.exit_status())\n"
    )
    (bench_dir / "bench_other.py").write_text("print('other ran')\n")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "requirements.txt").touch()
    (tmp_path / "Makefile").write_text((REPO_ROOT / "Makefile").read_text())
    # The stamp is newer than requirements.txt: make does not reinstall anything.
    (tmp_path / ".venv" / ".installed").touch()
    result = subprocess.run(
        ["make", "-s", "bench", f"BENCH_STRICT={strict}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "pip install" not in result.stdout + result.stderr
    assert "other ran" in result.stdout, result.stdout + result.stderr
    assert (result.returncode != 0) == (status != 0), result.stdout + result.stderr
