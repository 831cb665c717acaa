"""Campaign fixtures: the release side (``catalog``), and a ``world`` with an embedded gateway
and a simulated fleet on loopback whose events run through the Celery tasks (eagerly)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import OperationalError, connection

from campaigns.models import Device
from manifests import suit
from tests.campaigns.support import Catalog, build_catalog, wait_for
from workers.embedded import EmbeddedFleet
from workers.lwm2m.simulator import FleetSpec

DEVICES = 24
WRONG_CLASS = 2


@pytest.fixture
def catalog(db: None, django_user_model: Any) -> Catalog:
    return build_catalog(django_user_model)


def start_fleet(
    catalog: Catalog,
    *,
    count: int = DEVICES,
    wrong_class: int = WRONG_CLASS,
    version: str = "1.0.0",
    sequence_number: int = 1,
    security_counter: int = 1,
    gateway_id: str = "gw-embedded",
    fw_poll_seconds: float = 0.3,
) -> EmbeddedFleet:
    """Start a gateway and ``count`` thermo-v2 devices (+ ``wrong_class`` thermo-v1 ones) and
    wait until the registry shows them all online with their firmware version."""
    common = {
        "manufacturer": "Acme Sensors",
        "vendor_id": str(catalog.vendor.uuid),
        "version": version,
        "sequence_number": sequence_number,
        "security_counter": security_counter,
    }
    embedded = EmbeddedFleet(
        trust_anchors=[catalog.author_public_key],
        gateway_id=gateway_id,
        fw_poll_seconds=fw_poll_seconds,
    )
    embedded.add(
        FleetSpec(count=count, model="thermo-v2", class_id=str(catalog.thermo.uuid), **common)
    )
    if wrong_class:
        embedded.add(
            FleetSpec(
                count=wrong_class,
                model="thermo-v1",
                prefix="old",
                class_id=str(suit.class_id(catalog.vendor.uuid, "thermo-v1")),
                **common,
            )
        )
    embedded.start()
    try:
        registered = Device.objects.filter(online=True, firmware_version=version)
        wait_for(
            lambda: registered.count() == count + wrong_class,
            # A bound on a stall, not a pace: on a loaded machine a few hundred registrations
            # and their information reads take minutes (about 0.5 s per device under a load
            # of 8 per core), and they still all get in.
            timeout=60,
            cap=max(600.0, 2.0 * (count + wrong_class)),
            progress=registered.count,
            what="fleet registered",
        )
    except BaseException:
        embedded.stop()
        raise
    return embedded


def _retry_sqlite_locks(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    """SQLite's shared-cache test database refuses a statement at once ("table is locked")
    while the gateway's threads write; such a statement did not run, so run it again."""
    for _ in range(100):
        try:
            return execute(sql, params, many, context)
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.02)
    return execute(sql, params, many, context)


@pytest.fixture
def fleet_factory(
    transactional_db: None, eager_celery: None
) -> Iterator[Callable[..., EmbeddedFleet]]:
    started: list[EmbeddedFleet] = []
    sqlite = connection.vendor == "sqlite"
    if sqlite:
        connection.execute_wrappers.append(_retry_sqlite_locks)

    def factory(catalog: Catalog, **kwargs: Any) -> EmbeddedFleet:
        embedded = start_fleet(catalog, **kwargs)
        started.append(embedded)
        return embedded

    try:
        yield factory
    finally:
        for embedded in started:
            embedded.stop()
        if sqlite:
            connection.execute_wrappers.remove(_retry_sqlite_locks)


@pytest.fixture
def world(
    transactional_db: None,
    eager_celery: None,
    fleet_factory: Callable[..., EmbeddedFleet],
    catalog: Catalog,
) -> dict[str, Any]:
    embedded = fleet_factory(catalog)
    return {
        "embedded": embedded,
        "ops": catalog.ops,
        "release": catalog.release,
        "thermo": catalog.thermo,
        "catalog": catalog,
    }
