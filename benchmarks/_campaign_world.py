"""Shared set-up for ``bench_campaigns.py``: a throwaway PostgreSQL database per section, an
approved release, and fleets of devices generated in SQL (``INSERT ... SELECT generate_series``).

Only imported by the benchmark (and its child processes); nothing here is product code.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests.suit import keys as suit_keys

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
# Database names start with this prefix (BENCH_DB_PREFIX), so two checkouts can run at once.
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "fwupd_bench")
TEMPLATE_DB = f"{DB_PREFIX}_tmpl"
# The image-profile class of the mixed fleet (raw MCUboot images, no SUIT envelope): its devices
# are of the vendor but not of the campaigns' class, so the planner skips them.
IMAGE_CLASS = "thermo-v3"


def db_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def drop_db(name: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_db(name: str) -> None:
    _admin(f'CREATE DATABASE "{name}"')


def create_template() -> None:
    """A migrated database the sections clone (``CREATE DATABASE ... TEMPLATE``): one migrate."""
    drop_db(TEMPLATE_DB)
    _admin(f'CREATE DATABASE "{TEMPLATE_DB}"')
    env = {**os.environ, "DATABASE_URL": db_url(TEMPLATE_DB)}
    subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "migrate", "--verbosity", "0"],
        check=True,
        env=env,
        cwd=REPO,
    )


def clone_db(name: str) -> None:
    drop_db(name)
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')


@dataclass
class World:
    ops: Any
    vendor: Any
    thermo: Any
    thermo_v1: Any
    thermo_v3: Any
    release: Any
    author_key: Any
    image_size: int


def make_world(*, image_payload: int = 8192, now: dt.datetime | None = None) -> World:
    """Users with roles and keys, a vendor with three classes (thermo-v3 of the image delivery
    profile), an approved release (sequence 5, version 1.1.0, security counter 2) of thermo-v2;
    as the end-to-end test builds it."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from manifests import services as release_services
    from manifests import suit
    from manifests.images import imgtool
    from manifests.selectors import manifest_params

    now = now or timezone.now()
    earlier = now - dt.timedelta(hours=1)
    users = get_user_model()
    admin = users.objects.create_superuser(username="admin", password="x-pass-1")  # noqa: S106
    people = {}
    for name, role in [
        ("author", "author"),
        ("qa", "qa"),
        ("sec", "security"),
        ("ops", "fleet_operator"),
    ]:
        user = users.objects.create_user(username=name, password="x-pass-1")  # noqa: S106
        key = suit.generate_private_key("ES256")
        release_services.role_grant(user=user, role=role, actor=admin, now=earlier)
        release_services.signing_key_register(
            owner=user,
            public_key_pem=suit.public_key_pem(key.public_key()).decode(),
            valid_from=earlier,
        )
        people[name] = (user, key)
    vendor = release_services.vendor_create(name="Acme Sensors", domain="acme.example", actor=admin)
    thermo = release_services.device_class_create(
        vendor=vendor, name="thermo-v2", delivery="suit", actor=admin
    )
    thermo_v1 = release_services.device_class_create(
        vendor=vendor, name="thermo-v1", delivery="suit", actor=admin
    )
    thermo_v3 = release_services.device_class_create(
        vendor=vendor, name=IMAGE_CLASS, delivery="image", actor=admin
    )
    image = release_services.image_upload(
        data=imgtool.build_image(b"\x42" * image_payload, version="1.1.0", security_counter=2),
        actor=people["author"][0],
    )
    envelope = suit.create_envelope(
        manifest_params(
            device_class=thermo,
            image=image,
            sequence_number=5,
            security_counter=2,
            use_before=now + dt.timedelta(days=30),
        ),
        keys=[people["author"][1]],
    )
    manifest = release_services.manifest_import(envelope=envelope, created_by=people["author"][0])
    release = release_services.release_create(
        manifest=manifest, name="thermo-1.1.0", actor=people["author"][0]
    )
    release_services.release_submit(release=release, actor=people["author"][0])
    for name, role in [("qa", "qa"), ("sec", "security")]:
        block = suit.sign_manifest_digest(envelope, key=people[name][1])
        release_services.release_approve(
            release=release, signer=people[name][0], role=role, cose=block
        )
    return World(
        ops=people["ops"][0],
        vendor=vendor,
        thermo=thermo,
        thermo_v1=thermo_v1,
        thermo_v3=thermo_v3,
        release=release,
        author_key=people["author"][1],
        image_size=image.size,
    )


# One report key for every generated device (only its presence matters to dispatch).
BENCH_REPORT_KEY_PEM = suit_keys.public_key_pem(suit_keys.generate_private_key("Ed25519")).decode()


def insert_devices(
    world: World,
    *,
    count: int,
    prefix: str = "dev",
    mix: bool = True,
    tags: list[str] | None = None,
    start: int = 0,
) -> None:
    """``count`` devices in one ``INSERT ... SELECT generate_series``. With ``mix``, 1% each are
    of the other class, unmapped, on a newer security counter, already current, with a clock
    off by two hours, and of the image-profile class; the rest are eligible (clock offsets
    within a second, as the gateway measures them, so no two devices need share one)."""
    import json

    from django.db import connection

    thermo, v1, v3, vendor = (
        world.thermo.pk,
        world.thermo_v1.pk,
        world.thermo_v3.pk,
        world.vendor.pk,
    )
    m = "i %% 100" if mix else "-1"
    # {m} is one of two constants, not input.
    sql = f"""
        INSERT INTO campaigns_device (
            endpoint, vendor_id, device_class_id, manufacturer, model, serial, firmware_version,
            sequence_number, security_counter, fw_protocols, clock_offset_seconds, online,
            last_seen, registration_id, lifetime, binding, lwm2m_version, queue_mode,
            gateway_id, lwm2m_objects, tags, created_at, updated_at, registration_address,
            registration_identity, registration_root_path, report_key)
        SELECT
            %(prefix)s || '-' || lpad(i::text, 7, '0'),
            CASE WHEN {m} = 4 THEN NULL ELSE %(vendor)s END,
            CASE WHEN {m} = 0 THEN %(v1)s WHEN {m} = 4 THEN NULL WHEN {m} = 5 THEN %(v3)s
                 ELSE %(thermo)s END,
            'Acme Sensors', CASE WHEN {m} = 5 THEN %(v3name)s ELSE 'thermo-v2' END,
            'SN' || i::text,
            CASE WHEN {m} = 2 THEN '1.1.0' ELSE '1.0.0' END,
            CASE WHEN {m} = 2 THEN 5 ELSE 1 END,
            CASE WHEN {m} = 1 THEN 9 ELSE 1 END,
            '[0]'::jsonb,
            CASE WHEN {m} = 3 THEN 7200 + (i %% 977) ELSE ((i %% 1999) - 999) / 1000.0 END,
            true, now(), 'r' || i::text, 300, 'U', '1.1', false, 'gw-bench',
            '["/3/0", "/5/0"]'::jsonb, %(tags)s::jsonb, now(), now(), '', '', '',
            %(report_key)s
        FROM generate_series(%(start)s, %(stop)s) AS i
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "prefix": prefix,
                "vendor": vendor,
                "v1": v1,
                "v3": v3,
                "v3name": IMAGE_CLASS,
                "thermo": thermo,
                "tags": json.dumps(tags or []),
                # The rows stand for provisioned devices: each SUIT device has a report key.
                "report_key": BENCH_REPORT_KEY_PEM,
                "start": start,
                "stop": start + count - 1,
            },
        )
        cursor.execute("ANALYZE campaigns_device")


def rusage_maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
