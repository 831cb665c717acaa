"""``manifests.services`` is layered by concern: a module imports only modules on a floor below
its own, at module level. A cycle, or a function-local import that hides one, fails here before
it fails at import time in some other order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from manifests.policy import APPROVING_ROLES
from manifests.services import access

SERVICES = Path(__file__).resolve().parents[2] / "manifests" / "services"
PACKAGE = "manifests.services"
# The floors, bottom first (docs/architecture.md section 1 and the package docstring).
FLOORS = {
    "access": 0,
    "facts": 1,
    "releases": 2,
    "catalog": 2,
    "trust": 2,
    "roles": 3,
    "policies": 3,
    "delegations": 3,
    "keys": 3,
    "encryption": 3,
    "deltas": 3,
}


def _service_imports(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in names if n.startswith(f"{PACKAGE}.")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(f"{PACKAGE}.")]
    return [name.split(".")[2] for name in found if name.split(".")[2] in FLOORS]


def test_every_service_module_has_a_floor() -> None:
    modules = {p.stem for p in SERVICES.glob("*.py")} - {"__init__"}
    assert modules == set(FLOORS)


@pytest.mark.parametrize("module", sorted(FLOORS))
def test_a_service_module_imports_only_floors_below_it(module: str) -> None:
    tree = ast.parse((SERVICES / f"{module}.py").read_text())
    above = sorted(
        {m for m in _service_imports(tree) if m != module and FLOORS[m] >= FLOORS[module]}
    )
    assert not above, f"{module} (floor {FLOORS[module]}) imports {above}"


@pytest.mark.parametrize("module", sorted(FLOORS))
def test_a_service_module_has_no_function_local_imports(module: str) -> None:
    tree = ast.parse((SERVICES / f"{module}.py").read_text())
    local = [
        f"line {inner.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
        if isinstance(inner, ast.Import | ast.ImportFrom)
    ]
    assert not local, f"{module}: imports inside functions at {local}"


def test_the_access_floor_imports_no_other_service_module() -> None:
    tree = ast.parse((SERVICES / "access.py").read_text())
    assert _service_imports(tree) == []


def test_the_approvers_set_is_the_evaluators_approving_roles() -> None:
    assert frozenset(APPROVING_ROLES) == access.APPROVERS
