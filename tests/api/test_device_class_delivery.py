"""The device-class API shows and changes the delivery profile (admin only, through
``device_class_set_delivery``: audited, refusals change nothing)."""

from __future__ import annotations

from typing import Any

import pytest

from audit.models import AuditEvent
from manifests.models import DeviceClass
from tests.api.conftest import MINIMAL_SPEC

pytestmark = pytest.mark.django_db


def test_device_class_shows_its_delivery_profile_and_method(
    people: dict[str, Any], device_class: Any
):
    body = people["auditor"].client.get(f"/api/device-classes/{device_class.pk}/").json()
    assert (body["delivery"], body["delivery_method"]) == ("image", "auto")


def test_admin_creates_a_suit_class_and_patches_its_delivery(
    people: dict[str, Any], device_class: Any
):
    admin = people["admin"].client
    created = admin.post(
        "/api/device-classes/",
        {"vendor": device_class.vendor.pk, "name": "suit-dev", "delivery": "suit"},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["delivery"] == "suit"
    changed = admin.patch(
        f"/api/device-classes/{device_class.pk}/",
        {"delivery": "suit-integrated", "delivery_method": "push"},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    assert (changed.json()["delivery"], changed.json()["delivery_method"]) == (
        "suit-integrated",
        "push",
    )
    assert AuditEvent.objects.filter(action="device_class.set_delivery").count() == 1


@pytest.mark.parametrize("role", ["author", "fleet_operator", "security", "auditor"])
def test_non_admins_cannot_change_delivery(people: dict[str, Any], device_class: Any, role: str):
    response = people[role].client.patch(
        f"/api/device-classes/{device_class.pk}/", {"delivery": "suit"}, format="json"
    )
    assert response.status_code == 403
    assert DeviceClass.objects.get(pk=device_class.pk).delivery == "image"


def test_unknown_delivery_is_a_400_and_changes_nothing(people: dict[str, Any], device_class: Any):
    response = people["admin"].client.patch(
        f"/api/device-classes/{device_class.pk}/", {"delivery": "ftp"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert DeviceClass.objects.get(pk=device_class.pk).delivery == "image"


def test_switch_a_live_release_could_not_follow_is_a_409(
    people: dict[str, Any], world: dict[str, Any], device_class: Any
):
    # world's release names coap://fw.example/app: fine for image, not for suit
    response = people["admin"].client.patch(
        f"/api/device-classes/{device_class.pk}/", {"delivery": "suit"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["code"] == "manifest.delivery_conflict"
    assert DeviceClass.objects.get(pk=device_class.pk).delivery == "image"


def test_plan_and_status_show_the_profile_and_methods_per_stage(
    people: dict[str, Any], world: dict[str, Any]
):
    from campaigns.models import Device

    Device.objects.filter(endpoint="thermo-01").update(fw_delivery_method=1)  # push only
    Device.objects.filter(endpoint="thermo-02").update(fw_delivery_method=0, fw_protocols=[4])
    plan = people["qa"].client.post("/api/campaign-plans/", {"document": MINIMAL_SPEC}).json()
    assert (plan["delivery"], plan["delivery_method"]) == ("image", "auto")
    assert plan["excluded"]["no_supported_delivery"] == 1
    assert sum(s["methods"]["push"] for s in plan["stages"]) == 1
    for stage in plan["stages"]:
        assert stage["methods"]["pull"] + stage["methods"]["push"] == stage["devices"]
    created = people["fleet_operator"].client.generic(
        "POST", "/api/campaigns/", MINIMAL_SPEC, content_type="application/yaml"
    )
    assert created.status_code == 201, created.content
    status = people["auditor"].client.get("/api/campaigns/thermo-rollout/status/").json()
    assert status["delivery"] == "image"
    assert all(stage["methods"] == {"pull": 0, "push": 0} for stage in status["stages"])
