"""The release side of a small deployment for the console tests (``tests/helpers/deployment.py``):
people in every role with their keys (the auditor has none), a vendor and two classes, and
releases signed by the author (so simulated devices trusting the author's key accept them).
Built only through the services."""

from __future__ import annotations

from typing import Any

from tests.helpers import personas
from tests.helpers.deployment import (
    Deployment,
    approve,
    build_deployment,
    make_devices,
    make_release,
    signature,
)

__all__ = [
    "PASSWORD",
    "World",
    "approve",
    "build_world",
    "make_devices",
    "make_release",
    "signature",
    "spec_text",
]

PASSWORD = "console-test-pass-1"
PEOPLE = personas.people("author", "qa", "sec", "ops", "auditor")


class World(Deployment):
    """The console tests' deployment (``world.releases`` by name)."""


def build_world(django_user_model: Any) -> World:
    return build_deployment(django_user_model, PEOPLE, password=PASSWORD, cls=World)


def spec_text(name: str, *, release: str = "thermo-1.1.0", stages: str | None = None) -> str:
    stages = stages or "  - name: canary\n    size: 25%\n    gate: fleet_operator\n" + (
        "  - name: all\n    size: rest\n"
    )
    return (
        "apiVersion: fwupd/v1\nkind: Campaign\n"
        f"name: {name}\nrelease: {release}\n"
        "target:\n  device_class: acme.example/thermo-v2\n"
        f"stages:\n{stages}timeouts:\n  device: 2m\n"
    )
