"""The floors of docs/architecture.md section 1: the release side imports nothing of the fleet
side, the fleet side nothing of the workers, the API or the console, and inside ``campaigns`` a
module imports only floors below its own, at module level (no function-local import hiding a
cycle). Checked on the source, so a violation fails here whatever the import order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# campaigns' own modules, bottom first (models and migrations stand apart: Django's).
FLOORS = {
    # pure: no Django, time as a parameter
    "errors": 0, "stages": 0, "clock": 0, "delivery": 0, "events": 0, "psk": 0, "fleet": 0,
    "spec": 1, "checks": 1, "wording": 1,
    "windows": 2, "ramp": 2,
    # reads and the registry
    "device_services": 3, "selectors": 3, "eligibility": 3, "fleet_selectors": 3,
    "device_selectors": 3, "trust_holdings": 3,
    # planning, the per-device lifecycle, fleet management (tags, groups, import)
    "planning": 4, "rollouts": 4, "fleet_services": 4,
    # state changes of campaigns, then the reconcile pass and what builds on it
    "services": 5, "trust_delivery": 5,
    "engine": 6, "rollback": 6,
    # reactions to the release side, connected at start; the admin
    "receivers": 7, "apps": 8, "admin": 8,
}  # fmt: skip
# A package never imports these (a lower floor reaching up).
ABOVE = {
    "manifests": ("campaigns", "workers", "api", "console"),
    "campaigns": ("workers", "api", "console"),
    "audit": ("manifests", "campaigns", "workers", "api", "console"),
}


def _sources(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts]


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(module, line, at module level) of every import in ``tree``."""
    top = {id(node) for node in getattr(tree, "body", [])}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(n, node.lineno, id(node) in top) for n in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names]
    return found


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_a_package_never_imports_a_floor_above_it(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _sources(package)
        for name, line, _ in _imports(ast.parse(path.read_text()))
        if name.split(".")[0] in ABOVE[package]
    ]
    assert not bad, bad


def test_every_campaigns_module_has_a_floor() -> None:
    modules = {p.stem for p in (ROOT / "campaigns").glob("*.py")} - {"__init__"}
    assert modules == set(FLOORS)


@pytest.mark.parametrize("module", sorted(FLOORS))
def test_a_campaigns_module_imports_only_floors_below_it_at_module_level(module: str) -> None:
    tree = ast.parse((ROOT / "campaigns" / f"{module}.py").read_text())
    bad = []
    for name, line, top in _imports(tree):
        parts = name.split(".")
        if parts[0] != "campaigns" or len(parts) < 2 or parts[1] not in FLOORS:
            continue
        other = parts[1]
        if other == module:
            continue
        if FLOORS[other] >= FLOORS[module]:
            bad.append(f"line {line}: {other} (floor {FLOORS[other]})")
        elif not top and module != "apps":  # AppConfig.ready connects receivers at start
            bad.append(f"line {line}: {other} imported inside a function")
    assert not bad, f"{module} (floor {FLOORS[module]}): {bad}"
