"""What every benchmark prints around its figures: the machine, side-by-side figures with the
reference measured in the same run, and one PASS/MISS line per goal.

Goals (performance issue): SUIT decode+verify cold / raw verify <= 1.10 (ES256 and Ed25519);
dispatch >= 50,000 decisions/s and >= 0.5x of a raw set-based reference of the same writes;
gateway >= 1.0x of libcoap's ``coap-server``. A MISS is printed, never hidden; the exit status
is non-zero on a MISS only in strict mode (``BENCH_STRICT=1`` in the environment, as ``make
bench BENCH_STRICT=1`` sets it), so a slow machine still shows its figures. A benchmark that
could not measure (a failed device, differing rows) is an error: exit status 2 in every mode.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TextIO

# The goals, one name each, shared by the benchmarks and their test.
SUIT_COLD_RATIO_MAX = 1.10
DISPATCH_DECISIONS_MIN = 50_000.0
# dispatch decisions/s against a raw set-based UPDATE ... FROM / INSERT ... SELECT of the same
# writes over the same rows, in the same run.
DISPATCH_VS_RAW_MIN = 0.5
GATEWAY_VS_LIBCOAP_MIN = 1.0

EXIT_OK, EXIT_MISS, EXIT_ERROR = 0, 1, 2


def strict_mode(environ: dict[str, str] | None = None) -> bool:
    """``BENCH_STRICT`` set to 1/true/yes (any case) asks for a non-zero exit on a MISS."""
    value = (os.environ if environ is None else environ).get("BENCH_STRICT", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def cpu_model(cpuinfo: str | None = None) -> str:
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return "unknown CPU"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"model name", "Processor", "cpu model"} and value.strip():
            return " ".join(value.split())
    return "unknown CPU"


def machine_line() -> str:
    """CPU model, cores usable by this process (of those online) and the load at start."""
    online = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else online
    cores = f"{usable} cores" if usable == online else f"{usable} of {online} cores"
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load average unknown"
    return f"machine: {cpu_model()}, {cores}, {load} at start"


def ratio_line(
    label: str, figures: Sequence[tuple[str, float]], unit: str, *, reference: str
) -> str:
    """``label  a 1.23 unit | b 4.56 unit (2.71x of <reference>)`` for figures of one run."""
    values = dict(figures)
    base = values.get(reference)
    parts = []
    for name, value in figures:
        part = f"{name} {_fmt(value)} {unit}"
        if base and name != reference:
            part += f" ({value / base:.2f}x of {reference})"
        parts.append(part)
    return f"{label:24} " + " | ".join(parts)


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


@dataclass(frozen=True)
class Verdict:
    name: str
    value: float
    op: Literal["<=", ">="]
    goal: float
    passed: bool
    detail: str = ""

    def line(self) -> str:
        tail = f" - {self.detail}" if self.detail else ""
        return (
            f"{'PASS' if self.passed else 'MISS'} {self.name} = {_fmt(self.value)} "
            f"(goal {self.op} {_fmt(self.goal)}){tail}"
        )


@dataclass
class Report:
    """Collects the verdicts and errors of one benchmark run and turns them into an exit
    status. ``strict`` defaults to the environment's ``BENCH_STRICT``."""

    strict: bool = field(default_factory=strict_mode)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    verdicts: list[Verdict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def machine(self) -> None:
        print(machine_line(), file=self.out, flush=True)

    def goal(
        self,
        name: str,
        value: float,
        *,
        at_most: float | None = None,
        at_least: float | None = None,
        detail: str = "",
    ) -> Verdict:
        """Judge ``value`` against one bound (exactly one of ``at_most`` / ``at_least``) and
        print the PASS/MISS line."""
        if (at_most is None) == (at_least is None):
            raise ValueError("give exactly one of at_most / at_least")
        if at_most is not None:
            verdict = Verdict(name, value, "<=", at_most, value <= at_most, detail)
        else:
            assert at_least is not None
            verdict = Verdict(name, value, ">=", at_least, value >= at_least, detail)
        self.verdicts.append(verdict)
        print(verdict.line(), file=self.out, flush=True)
        return verdict

    def check(self, name: str, passed: bool, detail: str) -> None:
        """A yes/no goal (e.g. a constant query count): PASS/MISS with its detail."""
        verdict = Verdict(name, float(passed), ">=", 1.0, passed, detail)
        self.verdicts.append(verdict)
        print(f"{'PASS' if passed else 'MISS'} {name}: {detail}", file=self.out, flush=True)

    def error(self, message: str) -> None:
        """The run could not measure what it claims (failed devices, differing rows...)."""
        self.errors.append(message)
        print(f"ERROR {message}", file=self.out, flush=True)

    @property
    def missed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]

    def exit_status(self) -> int:
        """The run's exit status; prints the load average at the end beside the one at start."""
        try:
            load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
        except OSError:
            load = "unknown"
        print(f"load average {load} at end", file=self.out, flush=True)
        if self.errors:
            return EXIT_ERROR
        if self.missed:
            if self.strict:
                return EXIT_MISS
            print(
                f"({len(self.missed)} goal(s) missed; exit status 0 - BENCH_STRICT=1 to fail)",
                file=self.out,
                flush=True,
            )
        return EXIT_OK
