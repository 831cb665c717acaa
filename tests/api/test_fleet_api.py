"""Fleet management through the API: tags on one device and in bulk, saved groups (and a
campaign targeting one), and the CSV import (text/csv and multipart), all-or-nothing with a
per-row error report."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import AuditEvent
from campaigns.device_services import device_psk_lookup
from campaigns.models import Campaign, Device, DeviceGroup, Rollout
from tests.api.conftest import MINIMAL_SPEC, ApiUser

pytestmark = pytest.mark.django_db

KEY = bytes(range(16))


def tags_of(endpoint: str) -> list[str]:
    return Device.objects.get(endpoint=endpoint).tags


def test_one_device_s_tags_are_changed(people: dict[str, ApiUser], world: Any) -> None:
    ops = people["fleet_operator"].client
    response = ops.post(
        "/api/devices/thermo-00/tags/", {"add": ["beta"], "remove": ["lab"]}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json() == {"matched": 1, "changed": 1}
    assert tags_of("thermo-00") == ["beta", "eu"]
    response = ops.post("/api/devices/thermo-00/tags/", {"set": []}, format="json")
    assert response.json()["changed"] == 1 and tags_of("thermo-00") == []
    assert ops.post("/api/devices/ghost/tags/", {"add": ["x"]}, format="json").status_code == 404


def test_bulk_tags_by_filter_and_by_list(people: dict[str, ApiUser], world: Any) -> None:
    ops = people["fleet_operator"].client
    response = ops.post(
        "/api/device-tags/",
        {"filter": {"tag": "lab", "online": True}, "add": ["pilot"]},
        format="json",
    )
    assert response.json() == {"matched": 2, "changed": 2}
    event = AuditEvent.objects.get(action="device.tags")
    assert event.details["filter"] == {"tag": "lab", "online": True}
    assert event.details["count"] == 2
    response = ops.post(
        "/api/device-tags/",
        {"endpoints": ["thermo-04", "thermo-05"], "set": ["retired"]},
        format="json",
    )
    assert response.json() == {"matched": 2, "changed": 2}
    assert tags_of("thermo-05") == ["retired"]
    # And the device list filters by the new tag.
    listed = ops.get("/api/devices/", {"tag": "pilot"}).json()
    assert sorted(d["endpoint"] for d in listed["results"]) == ["thermo-00", "thermo-01"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"add": ["x"]}, "invalid"),
        ({"endpoints": ["thermo-00"], "filter": {"tag": "eu"}, "add": ["x"]}, "invalid"),
        ({"filter": {}, "add": ["x"]}, "fleet.filter_invalid"),
        ({"filter": {"state": "asleep"}, "add": ["x"]}, "invalid"),
        ({"endpoints": ["thermo-00"], "add": ["e u"]}, "fleet.tag_invalid"),
        ({"endpoints": ["thermo-00"]}, "fleet.tag_invalid"),
        ({"endpoints": ["thermo-00", "ghost"], "add": ["x"]}, "fleet.unknown_devices"),
    ],
    ids=[
        "no-selection",
        "list-and-filter",
        "empty-filter",
        "bad-state",
        "bad-tag",
        "no-change",
        "unknown-endpoint",
    ],
)
def test_a_refused_bulk_change_is_400_and_changes_nothing(
    people: dict[str, ApiUser], world: Any, body: dict, code: str
) -> None:
    response = people["fleet_operator"].client.post("/api/device-tags/", body, format="json")
    assert response.status_code == 400 and response.json()["code"] == code, response.json()
    assert tags_of("thermo-00") == ["eu", "lab"]
    assert not AuditEvent.objects.filter(action="device.tags").exists()


def test_groups_and_a_campaign_targeting_one(people: dict[str, ApiUser], world: Any) -> None:
    ops = people["fleet_operator"].client
    response = ops.post(
        "/api/device-groups/",
        {"name": "lab-pilot", "filter": {"tag": "lab"}, "description": "two"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["kind"] == "filter" and response.json()["devices"] == 2
    response = ops.post(
        "/api/device-groups/", {"name": "one", "endpoints": ["thermo-03"]}, format="json"
    )
    assert response.status_code == 201 and response.json()["devices"] == 1
    listed = people["auditor"].client.get("/api/device-groups/").json()["results"]
    assert [(g["name"], g["devices"]) for g in listed] == [("lab-pilot", 2), ("one", 1)]
    again = ops.post("/api/device-groups/", {"name": "one", "endpoints": ["x"]}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "fleet.group_exists"

    spec = MINIMAL_SPEC.replace(
        "  device_class: acme.example/thermo-v2\n",
        "  device_class: acme.example/thermo-v2\n  group: lab-pilot\n",
    )
    response = ops.post("/api/campaigns/", spec, content_type="application/yaml")
    assert response.status_code == 201, response.json()
    assert response.json()["campaign"]["target_group"] == "lab-pilot"
    assert response.json()["campaign"]["target_member_count"] == 2
    campaign = Campaign.objects.get(name="thermo-rollout")
    assert campaign.target_members == ["thermo-00", "thermo-01"]
    members = ops.get("/api/devices/", {"group": "lab-pilot"}).json()["results"]
    assert [d["endpoint"] for d in members] == ["thermo-00", "thermo-01"]
    assert ops.get("/api/devices/", {"group": "nope"}).json()["results"] == []
    assert Rollout.objects.filter(campaign=campaign).count() == 2

    assert ops.delete("/api/device-groups/lab-pilot/").status_code == 204
    assert ops.get("/api/device-groups/lab-pilot/").status_code == 404
    assert Campaign.objects.get(name="thermo-rollout").target_members == [
        "thermo-00",
        "thermo-01",
    ]


IMPORT = (
    "endpoint,class,tags,psk_identity,psk_key\n"
    f"new-1,acme.example/thermo-v2,eu;beta,new-1,{KEY.hex()}\n"
    "new-2,acme.example/thermo-v2,eu,,\n"
)


def test_import_as_a_csv_body(people: dict[str, ApiUser], world: Any) -> None:
    response = people["fleet_operator"].client.post(
        "/api/devices/import/", IMPORT, content_type="text/csv"
    )
    assert response.status_code == 201, response.json()
    assert response.json() == {"created": 2, "with_psk": 1}
    assert device_psk_lookup(identity="new-1") == KEY
    assert tags_of("new-1") == ["beta", "eu"]


def test_import_as_a_multipart_upload(people: dict[str, ApiUser], world: Any) -> None:
    upload = SimpleUploadedFile("fleet.csv", IMPORT.encode(), content_type="text/csv")
    response = people["admin"].client.post(
        "/api/devices/import/", {"file": upload}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    assert AuditEvent.objects.get(action="device.import").details["source"] == "fleet.csv"


def test_a_bad_import_answers_every_row_error_and_writes_nothing(
    people: dict[str, ApiUser], world: Any
) -> None:
    before = Device.objects.count()
    body = IMPORT + "thermo-00,,,,\nnew-3,acme.example/nope,eu,,\nnew-4,,e/u,,\n"
    response = people["fleet_operator"].client.post(
        "/api/devices/import/", body, content_type="text/csv"
    )
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "fleet.import_rejected"
    assert [(e["row"], e["column"]) for e in payload["errors"]] == [
        (4, "endpoint"),
        (5, "class"),
        (6, "tags"),
    ]
    assert payload["errors"][0]["reason"] == "a device with this endpoint exists already"
    assert Device.objects.count() == before
    assert not DeviceGroup.objects.exists()


def test_importing_is_refused_to_roles_that_cannot_provision(
    people: dict[str, ApiUser], world: Any
) -> None:
    response = people["author"].client.post("/api/devices/import/", IMPORT, content_type="text/csv")
    assert response.status_code == 403 and response.json()["code"] == "api.forbidden"
    assert not Device.objects.filter(endpoint="new-1").exists()
