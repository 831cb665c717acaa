"""API fixtures: one signed-in persona per role (token auth, as automation uses it), a
roleless user, and a small world with an approved release and a fleet to roll it out to."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from campaigns.models import Device
from manifests import services, suit
from tests.helpers import personas
from tests.helpers.imgtool import build_mcuboot_image

ROLES = ("author", "qa", "security", "fleet_operator", "auditor", "admin")


@dataclass
class ApiUser:
    user: Any
    client: APIClient
    key: Any  # private signing key (registered for approving roles)

    @property
    def public_pem(self) -> str:
        return suit.public_key_pem(self.key.public_key()).decode()


def client_for(user: Any | None) -> APIClient:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def people(db: None, django_user_model: Any) -> dict[str, ApiUser]:
    """``people[role]`` holds exactly that role; ``people["none"]`` holds none."""
    earlier = timezone.now() - dt.timedelta(hours=1)
    # No passwords: token auth needs none, and hashing dominates the matrix test's time.
    root = personas.superuser(django_user_model)
    out: dict[str, ApiUser] = {}
    for role in (*ROLES, "none"):
        if role == "admin":
            user = root  # superusers hold admin
        else:
            username = personas.USERNAME_BY_ROLE[None if role == "none" else role]
            user = django_user_model.objects.create_user(username=username, password=None)
        if role not in ("none", "admin"):
            services.role_grant(user=user, role=role, actor=root, now=earlier)
        key = suit.generate_private_key("ES256")
        out[role] = ApiUser(user=user, client=client_for(user), key=key)
    return out


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


def register_key(person: ApiUser, *, at: dt.datetime) -> None:
    services.signing_key_register(
        owner=person.user, public_key_pem=person.public_pem, valid_from=at
    )


def make_envelope(
    device_class: Any,
    author: ApiUser,
    image: Any,
    *,
    sequence: int,
    version: str,
    counter: int = 2,
    key: Any = None,
) -> bytes:
    params = suit.ManifestParams(
        vendor_id=device_class.vendor.uuid,
        class_id=device_class.uuid,
        sequence_number=sequence,
        version=version,
        security_counter=counter,
        image_digest=bytes.fromhex(image.sha256),
        image_size=image.size,
        uri="coap://fw.example/app",
        use_before=timezone.now() + dt.timedelta(days=30),
        component_id=device_class.component_id_bytes,
        payload_format="mcuboot",
    )
    return suit.create_envelope(params, keys=[key or author.key])


_IMAGES: dict[tuple[str, int], bytes] = {}


def image_bytes(tmp_path: Path, version: str, counter: int = 2) -> bytes:
    """An unsigned MCUboot image (hash TLV only: the same bytes every time), built once per
    version and counter: imgtool runs as a subprocess, the bulk of a world's set-up time."""
    key = (version, counter)
    if key not in _IMAGES:
        _IMAGES[key] = build_mcuboot_image(
            tmp_path, payload=version.encode() * 512, version=version, security_counter=counter
        )
    return _IMAGES[key]


@pytest.fixture
def world(people: dict[str, ApiUser], device_class: Any, tmp_path: Path) -> dict[str, Any]:
    """An approved release thermo-2.0.0 of acme.example/thermo-v2 and six devices on 1.0.0."""
    earlier = timezone.now() - dt.timedelta(hours=1)
    for role in ("author", "qa", "security", "fleet_operator"):
        register_key(people[role], at=earlier)
    author = people["author"]
    image = services.image_upload(data=image_bytes(tmp_path, "2.0.0"), actor=author.user)
    envelope = make_envelope(device_class, author, image, sequence=5, version="2.0.0")
    manifest = services.manifest_import(envelope=envelope, created_by=author.user)
    release = services.release_create(manifest=manifest, name="thermo-2.0.0", actor=author.user)
    services.release_submit(release=release, actor=author.user)
    for role in ("qa", "security"):
        block = suit.sign_manifest_digest(manifest.envelope_bytes, key=people[role].key)
        services.release_approve(release=release, signer=people[role].user, role=role, cose=block)
    devices = []
    for i in range(6):
        devices.append(
            Device.objects.create(
                endpoint=f"thermo-{i:02d}",
                vendor=device_class.vendor,
                device_class=device_class,
                firmware_version="1.0.0",
                sequence_number=1,
                security_counter=1,
                online=i != 5,
                last_seen=timezone.now(),
                fw_state=0,
                tags=["eu", "lab"] if i < 2 else ["eu"],
            )
        )
    release.refresh_from_db()
    return {"release": release, "manifest": manifest, "image": image, "devices": devices}


MINIMAL_SPEC = """\
apiVersion: fwupd/v1
kind: Campaign
name: thermo-rollout
release: thermo-2.0.0
target:
  device_class: acme.example/thermo-v2
stages:
  - name: canary
    size: 50%
  - name: all
    size: rest
"""
