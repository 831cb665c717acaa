"""A device class's manifest profile (docs/suit.md, "Manifest profiles"): shown and changed through
the API (admin only, audited, refused while live releases exist), and what it means for the
envelopes the class's releases may carry."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from manifests import selectors, services, suit
from manifests.errors import ManifestProfileError
from manifests.models import DeviceClass
from tests.api.conftest import image_bytes, register_key

pytestmark = pytest.mark.django_db


def test_device_class_shows_its_manifest_profile_default_extended(
    people: dict[str, Any], device_class: Any
):
    body = people["auditor"].client.get(f"/api/device-classes/{device_class.pk}/").json()
    assert body["manifest_profile"] == "extended"


def test_admin_creates_a_standard_class_and_patches_the_profile(
    people: dict[str, Any], device_class: Any
):
    admin = people["admin"].client
    created = admin.post(
        "/api/device-classes/",
        {"vendor": device_class.vendor.pk, "name": "stock-suit", "manifest_profile": "standard"},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["manifest_profile"] == "standard"
    changed = admin.patch(
        f"/api/device-classes/{device_class.pk}/", {"manifest_profile": "standard"}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["manifest_profile"] == "standard"
    assert changed.json()["delivery"] == "image"  # left alone
    events = AuditEvent.objects.filter(action="device_class.set_manifest_profile")
    assert [(e.details["before"], e.details["after"]) for e in events] == [("extended", "standard")]
    again = admin.patch(
        f"/api/device-classes/{device_class.pk}/", {"manifest_profile": "standard"}, format="json"
    )
    assert again.status_code == 200
    assert events.count() == 1  # idempotent: no change, no event


def test_unknown_profile_and_empty_patch_are_400s_and_change_nothing(
    people: dict[str, Any], device_class: Any
):
    admin = people["admin"].client
    for body in ({"manifest_profile": "suit-2"}, {}):
        response = admin.patch(f"/api/device-classes/{device_class.pk}/", body, format="json")
        assert response.status_code == 400, body
    assert DeviceClass.objects.get(pk=device_class.pk).manifest_profile == "extended"


@pytest.mark.parametrize("role", ["author", "fleet_operator", "security", "auditor"])
def test_non_admins_cannot_change_the_manifest_profile(
    people: dict[str, Any], device_class: Any, role: str
):
    response = people[role].client.patch(
        f"/api/device-classes/{device_class.pk}/", {"manifest_profile": "standard"}, format="json"
    )
    assert response.status_code == 403
    assert DeviceClass.objects.get(pk=device_class.pk).manifest_profile == "extended"


def test_profile_change_with_a_live_release_is_a_409_and_delivery_is_not_changed_either(
    people: dict[str, Any], world: dict[str, Any], device_class: Any
):
    response = people["admin"].client.patch(
        f"/api/device-classes/{device_class.pk}/",
        {"delivery_method": "push", "manifest_profile": "standard"},
        format="json",
    )
    assert response.status_code == 409
    assert response.json()["code"] == "manifest.profile_conflict"
    row = DeviceClass.objects.get(pk=device_class.pk)
    assert (row.manifest_profile, row.delivery_method) == ("extended", "auto")  # both or neither


def _envelope(device_class: Any, author: Any, image: Any, profile: str) -> bytes:
    params = selectors.manifest_params(
        device_class=device_class, image=image, sequence_number=7, security_counter=2
    )
    params = suit.ManifestParams(
        **{
            **params.__dict__,
            "profile": profile,
            "uri": "coap://fw.example/app",
            "use_before": timezone.now() + dt.timedelta(days=3),
        }
    )
    return suit.create_envelope(params, keys=[author.key])


def test_standard_class_imports_a_standard_envelope_and_refuses_an_extended_one(
    people: dict[str, Any], device_class: Any, tmp_path: Path
):
    admin, author = people["admin"], people["author"]
    services.device_class_set_manifest_profile(
        device_class=device_class, manifest_profile="standard", actor=admin.user
    )
    device_class.refresh_from_db()
    register_key(author, at=timezone.now() - dt.timedelta(hours=1))
    image = services.image_upload(data=image_bytes(tmp_path, "3.1.0", 4), actor=author.user)
    with pytest.raises(ManifestProfileError, match="'extended'"):
        services.manifest_import(
            envelope=_envelope(device_class, author, image, "extended"), created_by=author.user
        )
    standard = _envelope(device_class, author, image, "standard")
    assert suit.decode_envelope(standard).manifest.security_counter is None
    manifest = services.manifest_import(envelope=standard, created_by=author.user)
    # no counter in the manifest: the release's is the image's security-counter TLV
    assert (manifest.security_counter, manifest.version) == (4, "3.1.0")


def test_extended_class_refuses_a_standard_envelope(
    people: dict[str, Any], device_class: Any, tmp_path: Path
):
    author = people["author"]
    register_key(author, at=timezone.now() - dt.timedelta(hours=1))
    image = services.image_upload(data=image_bytes(tmp_path, "3.1.0", 4), actor=author.user)
    with pytest.raises(ManifestProfileError, match="'standard'"):
        services.manifest_import(
            envelope=_envelope(device_class, author, image, "standard"), created_by=author.user
        )


def test_admin_declares_delta_support_and_bad_settings_are_400s(
    people: dict[str, Any], device_class: Any
):
    admin = people["admin"].client
    body = admin.get(f"/api/device-classes/{device_class.pk}/").json()
    assert (body["delta_updates"], body["delta_compression"]) == (False, "heatshrink")
    changed = admin.patch(
        f"/api/device-classes/{device_class.pk}/",
        {"delta_updates": True, "delta_compression": "lzma"},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    assert (changed.json()["delta_updates"], changed.json()["delta_compression"]) == (True, "lzma")
    events = AuditEvent.objects.filter(action="device_class.set_delta")
    assert events.count() == 1
    bad = admin.patch(
        f"/api/device-classes/{device_class.pk}/", {"delta_compression": "zip"}, format="json"
    )
    assert bad.status_code == 400
    refused = people["auditor"].client.patch(
        f"/api/device-classes/{device_class.pk}/", {"delta_updates": False}, format="json"
    )
    assert refused.status_code == 403
    device_class.refresh_from_db()
    assert (device_class.delta_updates, device_class.delta_compression) == (True, "lzma")
    assert events.count() == 1
