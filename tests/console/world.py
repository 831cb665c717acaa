"""The release side of a small deployment for the console tests: people in every role with
their keys, a vendor and two classes, and releases signed by the author (so simulated devices
trusting the author's key accept them). Built only through the services."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from manifests import services as release_services
from manifests import suit
from manifests.images import imgtool
from manifests.selectors import manifest_params

PASSWORD = "console-test-pass-1"
PEOPLE = [  # username, role, key algorithm (None: no key)
    ("author", "author", "ES256"),
    ("qa", "qa", "Ed25519"),
    ("sec", "security", "ES256"),
    ("ops", "fleet_operator", "ES256"),
    ("auditor", "auditor", None),
]
PAYLOAD = b"\x42" * 8192


@dataclass
class World:
    admin: Any
    users: dict[str, Any]
    keys: dict[str, Any]
    vendor: Any
    thermo: Any
    thermo_v1: Any
    releases: dict[str, Any] = field(default_factory=dict)

    @property
    def author_public_key(self) -> Any:
        return self.keys["author"].public_key()


def build_world(django_user_model: Any) -> World:
    earlier = timezone.now() - dt.timedelta(hours=1)
    admin = django_user_model.objects.create_superuser(username="admin", password=PASSWORD)
    users, keys = {}, {}
    for name, role, alg in PEOPLE:
        user = django_user_model.objects.create_user(username=name, password=PASSWORD)
        release_services.role_grant(user=user, role=role, actor=admin, now=earlier)
        if alg:
            key = suit.generate_private_key(alg)
            release_services.signing_key_register(
                owner=user,
                public_key_pem=suit.public_key_pem(key.public_key()).decode(),
                valid_from=earlier,
            )
            keys[name] = key
        users[name] = user
    vendor = release_services.vendor_create(name="Acme Sensors", domain="acme.example")
    thermo = release_services.device_class_create(vendor=vendor, name="thermo-v2")
    thermo_v1 = release_services.device_class_create(vendor=vendor, name="thermo-v1")
    return World(admin, users, keys, vendor, thermo, thermo_v1)


def make_release(
    world: World,
    *,
    name: str,
    version: str,
    sequence: int,
    counter: int,
    approvers: tuple[tuple[str, str], ...] = (("qa", "qa"), ("sec", "security")),
) -> Any:
    author = world.users["author"]
    image = release_services.image_upload(
        data=imgtool.build_image(PAYLOAD, version=version, security_counter=counter),
        uploaded_by=author,
    )
    envelope = suit.create_envelope(
        manifest_params(
            device_class=world.thermo,
            image=image,
            sequence_number=sequence,
            security_counter=counter,
            version=version,
            use_before=timezone.now() + dt.timedelta(days=30),
        ),
        keys=[world.keys["author"]],
    )
    manifest = release_services.manifest_import(envelope=envelope, created_by=author)
    release = release_services.release_create(manifest=manifest, name=name, actor=author)
    release_services.release_submit(release=release, actor=author)
    for persona, role in approvers:
        approve(world, release, persona, role)
    release.refresh_from_db()
    world.releases[name] = release
    return release


def signature(world: World, release: Any, persona: str) -> bytes:
    """A COSE_Sign1 by ``persona`` over the release's manifest digest (as `suit sign` makes)."""
    return suit.sign_manifest_digest(
        bytes(release.manifest.envelope_bytes), key=world.keys[persona]
    )


def approve(world: World, release: Any, persona: str, role: str) -> None:
    release_services.release_approve(
        release=release,
        signer=world.users[persona],
        role=role,
        cose=signature(world, release, persona),
    )
    release.refresh_from_db()


def make_devices(world: World, count: int, *, prefix: str = "dev", **fields: Any) -> list[Any]:
    """Registry rows without a gateway behind them (pages only read them)."""
    from campaigns.models import Device

    now = timezone.now()
    values = {
        "vendor": world.vendor,
        "device_class": world.thermo,
        "manufacturer": "Acme Sensors",
        "firmware_version": "1.0.0",
        "sequence_number": 1,
        "security_counter": 1,
        "online": True,
        "last_seen": now,
        "gateway_id": "gw-none",
        "clock_offset_seconds": 0.0,
        **fields,
    }
    return Device.objects.bulk_create(
        [Device(endpoint=f"{prefix}-{i:05d}", **values) for i in range(count)]
    )


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
