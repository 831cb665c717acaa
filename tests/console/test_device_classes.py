"""The console shows each class's delivery profile and lets an admin change it (through
``device_class_set_delivery``: audited; others are refused and nothing changes)."""

from __future__ import annotations

from typing import Any

from audit.models import AuditEvent
from campaigns.models import Device
from manifests import services as release_services
from manifests.models import DeviceClass
from tests.console.world import make_devices, spec_text


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_classes_page_shows_delivery_and_only_admins_get_the_form(login: Any, world: Any):
    page = login("auditor").get("/device-classes/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'data-class="acme.example/thermo-v2"' in text
    assert '<td data-role="delivery">suit</td>' in text
    assert "device-classes/" in text and '<select name="delivery">' not in text
    assert '<select name="delivery">' in login("admin").get("/device-classes/").content.decode()


def test_admin_changes_a_class_delivery_from_the_console(login: Any, world: Any):
    response = login("admin").post(
        f"/device-classes/{world.thermo_v1.pk}/delivery/",
        {"delivery": "image", "delivery_method": "push"},
        follow=True,
    )
    assert response.status_code == 200
    assert any("delivery image (method push)" in m for m in _messages(response))
    row = DeviceClass.objects.get(pk=world.thermo_v1.pk)
    assert (row.delivery, row.delivery_method) == ("image", "push")
    assert AuditEvent.objects.filter(action="device_class.set_delivery").count() == 1


def test_operator_cannot_change_a_class_delivery(login: Any, world: Any):
    response = login("ops").post(
        f"/device-classes/{world.thermo_v1.pk}/delivery/", {"delivery": "image"}
    )
    assert response.status_code == 403
    assert DeviceClass.objects.get(pk=world.thermo_v1.pk).delivery == "suit"


def test_bad_delivery_from_the_console_is_a_message_and_changes_nothing(login: Any, world: Any):
    response = login("admin").post(
        f"/device-classes/{world.thermo_v1.pk}/delivery/", {"delivery": "ftp"}, follow=True
    )
    assert any("manifest.delivery_profile" in m for m in _messages(response))
    assert DeviceClass.objects.get(pk=world.thermo_v1.pk).delivery == "suit"


def test_admin_changes_a_class_manifest_profile_from_the_console(login: Any, world: Any):
    page = login("admin").get("/device-classes/").content.decode()
    assert '<td data-role="manifest-profile">extended</td>' in page
    assert '<select name="manifest_profile">' in page
    response = login("admin").post(
        f"/device-classes/{world.thermo_v1.pk}/delivery/",
        {"delivery": "suit", "delivery_method": "auto", "manifest_profile": "standard"},
        follow=True,
    )
    assert response.status_code == 200
    assert any("manifest profile standard" in m for m in _messages(response)), _messages(response)
    assert DeviceClass.objects.get(pk=world.thermo_v1.pk).manifest_profile == "standard"
    assert AuditEvent.objects.filter(action="device_class.set_manifest_profile").count() == 1


def test_plan_preview_and_campaign_page_show_delivery_per_stage(login: Any, world: Any):
    make_devices(world, 4)
    Device.objects.filter(endpoint="dev-00000").update(fw_delivery_method=1)
    client = login("ops")
    plan = client.post("/campaigns/+new/", {"spec": spec_text("deliv"), "action": "plan"})
    assert b'id="plan-delivery">delivery suit (method auto)' in plan.content
    assert plan.context["plan"]["stages"][0]["methods"]["pull"] >= 0
    # No delta support declared: the plan says so per stage (tests/campaigns/test_deltas.py
    # counts real offers).
    assert 'data-role="delta">0 device(s), 0 bytes saved' in plan.content.decode()
    client.post("/campaigns/+new/", {"spec": spec_text("deliv"), "action": "apply"})
    page = client.get("/campaigns/deliv/").content.decode()
    assert '<span id="delivery">suit</span>' in page
    assert "delivery suit: pull 0, push 0" in page


def test_classes_page_says_which_classes_check_approval_thresholds_on_the_device(
    login: Any, world: Any
):
    release_services.device_class_set_delivery(
        device_class=world.thermo_v1, delivery="image", actor=world.admin
    )
    text = login("auditor").get("/device-classes/").content.decode()
    rows = text.split('data-class="')
    v1 = next(r for r in rows if r.startswith("acme.example/thermo-v1"))
    v2 = next(r for r in rows if r.startswith("acme.example/thermo-v2"))
    assert "server only" in v1 and "MCUboot" in v1
    assert "server only" in v2 and "no released device trust policy" in v2
