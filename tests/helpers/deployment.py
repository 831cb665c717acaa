"""The release side of a small deployment, built only through the services: people holding
roles, with their signing keys; a vendor with two device classes (thermo-v2, thermo-v1, both
delivery "suit": the simulated devices are SUIT devices that fetch the envelope);
releases signed by the ``author`` persona (so simulated devices trusting the author's key accept
them) and approved by others; registry rows for devices without a gateway behind them.

Shared by the campaign tests (``tests/campaigns/support.py``) and the console tests
(``tests/console/world.py``), which differ only in who the people are and what they build on top.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.utils import timezone

from manifests import services as release_services
from manifests import suit
from manifests.images import imgtool
from manifests.policy import Verdict
from manifests.selectors import manifest_params
from tests.helpers import personas

GOOD_PAYLOAD = b"\x42" * 8192
# The report key of registry rows made by ``make_devices`` (one for all: the rows stand for
# devices provisioned with a key; tests that need a device's own key register one).
DEVICE_REPORT_KEY = suit.keys.generate_private_key("Ed25519")
DEVICE_REPORT_KEY_PEM = suit.keys.public_key_pem(DEVICE_REPORT_KEY).decode()
DEFAULT_APPROVERS = (("qa", "qa"), ("sec", "security"))  # (persona, role)


@dataclass
class Deployment:
    admin: Any
    users: dict[str, Any]
    keys: dict[str, Any]  # persona -> private signing key (personas without a key are absent)
    vendor: Any
    thermo: Any
    thermo_v1: Any
    releases: dict[str, Any] = field(default_factory=dict)

    @property
    def author_public_key(self) -> Any:
        return self.keys["author"].public_key()


D = TypeVar("D", bound=Deployment)


def build_deployment(
    django_user_model: Any,
    people: Iterable[tuple[str, str, str | None]],
    *,
    password: str,
    cls: type[D],
) -> D:
    """A superuser ``admin`` and one user per (username, role, key algorithm or None), each
    holding the role since an hour ago with a key valid since then; vendor and classes."""
    earlier = timezone.now() - dt.timedelta(hours=1)
    admin = personas.superuser(django_user_model, password=password)
    users, keys = {}, {}
    for name, role, alg in people:
        user = django_user_model.objects.create_user(username=name, password=password)
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
    vendor = release_services.vendor_create(name="Acme Sensors", domain="acme.example", actor=admin)
    thermo = release_services.device_class_create(
        vendor=vendor, name="thermo-v2", delivery="suit", actor=admin
    )
    thermo_v1 = release_services.device_class_create(
        vendor=vendor, name="thermo-v1", delivery="suit", actor=admin
    )
    return cls(
        admin=admin, users=users, keys=keys, vendor=vendor, thermo=thermo, thermo_v1=thermo_v1
    )


def make_release(
    deployment: Deployment,
    *,
    name: str,
    version: str,
    sequence: int,
    counter: int,
    payload: bytes = GOOD_PAYLOAD,
    use_before: dt.datetime | None = None,
    kind: str = "normal",
    approvers: Iterable[tuple[str, str]] = DEFAULT_APPROVERS,
    image: Any = None,
) -> Any:
    """A release of ``payload`` as an MCUboot image for thermo-v2, signed by the author and
    approved by ``approvers`` ((persona, role) pairs) through the release services."""
    author = deployment.users["author"]
    if image is None:
        image = release_services.image_upload(
            data=imgtool.build_image(payload, version=version, security_counter=counter),
            actor=author,
        )
    envelope = suit.create_envelope(
        manifest_params(
            device_class=deployment.thermo,
            image=image,
            sequence_number=sequence,
            security_counter=counter,
            version=version,
            use_before=use_before or timezone.now() + dt.timedelta(days=30),
        ),
        keys=[deployment.keys["author"]],
    )
    return release_from_envelope(deployment, envelope, name=name, kind=kind, approvers=approvers)


def release_from_envelope(
    deployment: Deployment,
    envelope: bytes,
    *,
    name: str,
    kind: str = "normal",
    approvers: Iterable[tuple[str, str]] = (),
) -> Any:
    """Import ``envelope`` as the author's manifest, create and submit the release, approve."""
    author = deployment.users["author"]
    manifest = release_services.manifest_import(envelope=envelope, created_by=author)
    release = release_services.release_create(manifest=manifest, name=name, kind=kind, actor=author)
    release_services.release_submit(release=release, actor=author)
    for persona, role in approvers:
        approve(deployment, release, persona, role)
    release.refresh_from_db()
    deployment.releases[name] = release
    return release


def signature(deployment: Deployment, release: Any, persona: str) -> bytes:
    """A COSE_Sign1 by ``persona`` over the release's manifest digest (as `suit sign` makes)."""
    return suit.sign_manifest_digest(
        bytes(release.manifest.envelope_bytes), key=deployment.keys[persona]
    )


def approve(deployment: Deployment, release: Any, persona: str, role: str) -> Verdict:
    _, verdict = release_services.release_approve(
        release=release,
        signer=deployment.users[persona],
        role=role,
        cose=signature(deployment, release, persona),
    )
    release.refresh_from_db()
    return verdict


def make_devices(
    deployment: Deployment,
    count: int,
    *,
    prefix: str = "dev",
    device_class: Any = None,
    **fields: Any,
) -> list[Any]:
    """Registry rows without a gateway behind them (for the engine alone, or pages to read)."""
    from campaigns.models import Device

    values = {
        "vendor": deployment.vendor,
        "device_class": device_class or deployment.thermo,
        "manufacturer": "Acme Sensors",
        "firmware_version": "1.0.0",
        "sequence_number": 1,
        "security_counter": 1,
        "online": True,
        "last_seen": timezone.now(),
        "gateway_id": "gw-none",
        "clock_offset_seconds": 0.0,
        "report_key": DEVICE_REPORT_KEY_PEM,
        **fields,
    }
    return Device.objects.bulk_create(
        [Device(endpoint=f"{prefix}-{i:05d}", **values) for i in range(count)]
    )
