"""Helpers shared by the campaign tests (the fixtures built on them live in ``conftest.py``).

A ``Catalog`` is the release side of a small deployment: personas with their roles and keys, a
vendor with two device classes, and an approved release ``thermo-1.1.0`` (sequence 5, security
counter 2). ``make_release`` adds more releases signed by the same author, so simulated devices
trusting the author's key accept them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import OperationalError
from django.utils import timezone

from manifests import services as release_services
from manifests import suit
from manifests.images import imgtool
from manifests.selectors import manifest_params

GOOD_PAYLOAD = b"\x42" * 8192
PERSONAS = [
    ("author", "author"),
    ("qa", "qa"),
    ("sec", "security"),
    ("sec2", "security"),
    ("ops", "fleet_operator"),
]


def retry_locked(fn: Callable[[], Any]) -> Any:
    for _ in range(50):
        try:
            return fn()
        except OperationalError:  # SQLite's shared test database locks tables briefly
            time.sleep(0.05)
    return fn()


def wait_for(
    predicate: Callable[[], bool],
    timeout: float = 60,
    tick: Callable[[], Any] | None = None,
    interval: float = 0.2,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick is not None:
            retry_locked(tick)
        if retry_locked(predicate):
            return
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout} s")


@dataclass
class Catalog:
    admin: Any
    users: dict[str, Any]
    keys: dict[str, Any]
    vendor: Any
    thermo: Any
    thermo_v1: Any
    release: Any
    releases: dict[str, Any] = field(default_factory=dict)

    @property
    def ops(self) -> Any:
        return self.users["ops"]

    @property
    def author_public_key(self) -> Any:
        return self.keys["author"].public_key()


def build_catalog(django_user_model: Any) -> Catalog:
    now = timezone.now()
    earlier = now - dt.timedelta(hours=1)
    admin = django_user_model.objects.create_superuser(username="admin", password="x-pass-1")
    users, keys = {}, {}
    for name, role in PERSONAS:
        user = django_user_model.objects.create_user(username=name, password="x-pass-1")
        key = suit.generate_private_key("ES256")
        release_services.role_grant(user=user, role=role, actor=admin, now=earlier)
        release_services.signing_key_register(
            owner=user,
            public_key_pem=suit.public_key_pem(key.public_key()).decode(),
            valid_from=earlier,
        )
        users[name], keys[name] = user, key
    vendor = release_services.vendor_create(name="Acme Sensors", domain="acme.example")
    thermo = release_services.device_class_create(vendor=vendor, name="thermo-v2")
    thermo_v1 = release_services.device_class_create(vendor=vendor, name="thermo-v1")
    catalog = Catalog(admin, users, keys, vendor, thermo, thermo_v1, release=None)
    catalog.release = make_release(
        catalog, name="thermo-1.1.0", version="1.1.0", sequence=5, counter=2
    )
    return catalog


def make_release(
    catalog: Catalog,
    *,
    name: str,
    version: str,
    sequence: int,
    counter: int,
    payload: bytes = GOOD_PAYLOAD,
    use_before: dt.datetime | None = None,
    kind: str = "normal",
    approvers: Iterable[tuple[str, str]] = (("qa", "qa"), ("sec", "security")),
    image: Any = None,
) -> Any:
    """A release of ``payload`` as an MCUboot image, signed by the author and approved by
    ``approvers`` ((persona, role) pairs) through the release services."""
    author = catalog.users["author"]
    if image is None:
        image = release_services.image_upload(
            data=imgtool.build_image(payload, version=version, security_counter=counter),
            uploaded_by=author,
        )
    envelope = suit.create_envelope(
        manifest_params(
            device_class=catalog.thermo,
            image=image,
            sequence_number=sequence,
            security_counter=counter,
            version=version,
            use_before=use_before or timezone.now() + dt.timedelta(days=30),
        ),
        keys=[catalog.keys["author"]],
    )
    return release_from_envelope(catalog, envelope, name=name, kind=kind, approvers=approvers)


def release_from_envelope(
    catalog: Catalog,
    envelope: bytes,
    *,
    name: str,
    kind: str = "normal",
    approvers: Iterable[tuple[str, str]] = (),
) -> Any:
    author = catalog.users["author"]
    manifest = release_services.manifest_import(envelope=envelope, created_by=author)
    release = release_services.release_create(manifest=manifest, name=name, kind=kind, actor=author)
    release_services.release_submit(release=release, actor=author)
    for persona, role in approvers:
        approve(catalog, release, persona, role)
    release.refresh_from_db()
    catalog.releases[name] = release
    return release


def approve(catalog: Catalog, release: Any, persona: str, role: str) -> Any:
    block = suit.sign_manifest_digest(
        bytes(release.manifest.envelope_bytes), key=catalog.keys[persona]
    )
    _, verdict = release_services.release_approve(
        release=release, signer=catalog.users[persona], role=role, cose=block
    )
    release.refresh_from_db()
    return verdict


def make_devices(
    catalog: Catalog,
    count: int,
    *,
    prefix: str = "dev",
    device_class: Any = None,
    **fields: Any,
) -> list[Any]:
    """Registry rows without a gateway behind them: for tests of the engine alone."""
    from campaigns.models import Device

    now = timezone.now()
    values = {
        "vendor": catalog.vendor,
        "device_class": device_class or catalog.thermo,
        "manufacturer": "Acme Sensors",
        "firmware_version": "1.0.0",
        "sequence_number": 1,
        "security_counter": 1,
        "online": True,
        "last_seen": now,
        "gateway_id": "gw-none",
        "clock_offset_seconds": 0.0,
    }
    values.update(fields)
    return Device.objects.bulk_create(
        [Device(endpoint=f"{prefix}-{i:05d}", **values) for i in range(count)]
    )


def spec_text(
    name: str,
    *,
    release: str = "thermo-1.1.0",
    device_class: str = "acme.example/thermo-v2",
    stages: str = "  - name: all\n    size: 100%\n",
    extra: str = "",
    target_extra: str = "",
) -> str:
    return (
        "apiVersion: fwupd/v1\nkind: Campaign\n"
        f"name: {name}\nrelease: {release}\n"
        f"target:\n  device_class: {device_class}\n{target_extra}"
        f"stages:\n{stages}{extra}"
    )


def committed(call: Callable[[], Any], done: Callable[[], bool]) -> None:
    """Run a service on the embedded (eager, SQLite) setup. Its follow-up tasks run eagerly in
    ``on_commit`` and may hit SQLite's shared-cache table lock while the gateway thread writes;
    a broker would redeliver them. So: retry the call only if it did not commit (``done`` is
    false), then send whatever commands its failed follow-ups left pending."""

    def attempt() -> None:
        try:
            call()
        except OperationalError:
            if not done():
                raise

    retry_locked(attempt)
    deliver_pending_commands()


def deliver_pending_commands() -> None:
    from campaigns.models import CommandStatus, DeviceCommand
    from workers.tasks import device_command_task

    pending = retry_locked(
        lambda: [
            str(pk)
            for pk in DeviceCommand.objects.filter(status=CommandStatus.PENDING).values_list(
                "pk", flat=True
            )
        ]
    )
    for command_id in pending:
        retry_locked(lambda c=command_id: device_command_task.run(c))
