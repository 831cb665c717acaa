"""Console fixtures: a deployment built through the services (``tests/console/world.py``), with
a pending release that lacks only QA's approval and a running campaign over registry rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from tests.console.world import PASSWORD, World, build_world, make_devices, make_release, spec_text


@pytest.fixture(scope="session", autouse=True)
def _end_leftover_sessions(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Sessions the live server's and the gateways' stopped threads left open on this worker's
    test database would make dropping it fail: end them once, after the last test (this
    fixture depends on the database's set-up, so it is torn down before the drop)."""
    yield
    with django_db_blocker.unblock():
        if connection.vendor != "postgresql":
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
def world(db: None, django_user_model: Any) -> World:
    w = build_world(django_user_model)
    make_release(w, name="thermo-1.1.0", version="1.1.0", sequence=5, counter=2)
    # Pending: author (manifest signature) and security have signed; QA is missing.
    make_release(
        w,
        name="thermo-1.2.0",
        version="1.2.0",
        sequence=6,
        counter=2,
        approvers=(("sec", "security"),),
    )
    return w


@pytest.fixture
def campaign(world: World) -> Any:
    from campaigns import services
    from campaigns.spec import parse_spec

    make_devices(world, 20)
    made, _ = services.campaign_apply(
        spec=parse_spec(spec_text("thermo-rollout"), source="test"), actor=world.users["ops"]
    )
    return made


@pytest.fixture
def login(world: World) -> Any:
    """``login("ops")`` -> a test client signed in as that persona (through the login form)."""

    def signed_in(username: str) -> Client:
        client = Client()
        response = client.post("/login/", {"username": username, "password": PASSWORD})
        assert response.status_code == 302, response.content[:500]
        return client

    return signed_in


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives Debian's chromium through Playwright (tests/console)"
    )
