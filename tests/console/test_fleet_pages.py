"""The console's fleet pages through the test client: who sees the forms, who may post, and what
a refusal shows (the browser flow is ``test_fleet_browser.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import AuditEvent
from campaigns.models import Device, DeviceGroup
from tests.console.world import make_devices

pytestmark = pytest.mark.django_db


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_an_auditor_sees_tags_and_groups_but_no_forms(login: Any, world: Any) -> None:
    make_devices(world, 2)
    auditor = login("auditor")
    listing = auditor.get("/devices/").content.decode()
    assert 'id="bulk-tags"' not in listing
    assert 'id="device-tags-form"' not in auditor.get("/devices/dev-00000/").content.decode()
    groups = auditor.get("/fleet/groups/")
    assert groups.status_code == 200 and 'id="group-new"' not in groups.content.decode()
    assert auditor.get("/fleet/import/").status_code == 403
    for path, data in [
        ("/devices/dev-00000/tags/", {"tags": "x"}),
        ("/fleet/tags/", {"tag": "eu", "tags": "x"}),
        ("/fleet/groups/", {"name": "g", "kind": "static", "endpoints": "dev-00000"}),
        ("/fleet/import/", {"csv": "endpoint\nnew-1\n"}),
    ]:
        assert auditor.post(path, data).status_code == 403, path
    assert not AuditEvent.objects.filter(
        action__in=["device.tags", "device.import", "device_group.create"]
    ).exists()
    assert 'id="bulk-tags"' in login("ops").get("/devices/").content.decode()


def test_bulk_tags_by_list_and_a_refusal_as_a_message(login: Any, world: Any) -> None:
    make_devices(world, 3)
    ops = login("ops")
    response = ops.post(
        "/fleet/tags/",
        {"endpoints": "dev-00000 dev-00002", "mode": "add", "tags": "eu beta", "next": "/devices/"},
        follow=True,
    )
    assert "2 device(s) selected (2 listed), 2 changed" in _messages(response)
    assert Device.objects.get(endpoint="dev-00002").tags == ["beta", "eu"]
    response = ops.post(
        "/fleet/tags/", {"endpoints": "dev-00000", "tag": "eu", "tags": "x"}, follow=True
    )
    assert any("not both" in m for m in _messages(response))
    response = ops.post("/fleet/tags/", {"tags": "x"}, follow=True)
    assert any("to choose the devices" in m for m in _messages(response))
    response = ops.post(
        "/fleet/tags/", {"endpoints": "dev-00001", "mode": "set", "tags": "e/u"}, follow=True
    )
    assert any("fleet.tag_invalid" in m for m in _messages(response))
    assert AuditEvent.objects.filter(action="device.tags").count() == 1
    # An off-site "next" is not followed.
    response = ops.post(
        "/fleet/tags/",
        {"endpoints": "dev-00001", "tags": "x", "next": "https://evil.example/"},
    )
    assert response["Location"] == "/devices/"


def test_one_device_tags_are_replaced_from_its_page(login: Any, world: Any) -> None:
    make_devices(world, 1, tags=["old"])
    response = login("ops").post("/devices/dev-00000/tags/", {"tags": "a;b"}, follow=True)
    assert "tags saved" in _messages(response)
    assert Device.objects.get(endpoint="dev-00000").tags == ["a", "b"]
    login("ops").post("/devices/dev-00000/tags/", {"tags": ""})
    assert Device.objects.get(endpoint="dev-00000").tags == []


def test_groups_are_created_and_deleted(login: Any, world: Any) -> None:
    make_devices(world, 3, tags=["eu"])
    ops = login("ops")
    response = ops.post(
        "/fleet/groups/",
        {"name": "pilot", "kind": "static", "endpoints": "dev-00000 dev-00001"},
        follow=True,
    )
    assert "group pilot created" in _messages(response)
    ops.post("/fleet/groups/", {"name": "europe", "kind": "filter", "tag": "eu", "online": "yes"})
    page = ops.get("/fleet/groups/").content.decode()
    assert 'data-group="europe"' in page and "filter tag=eu online=True" in page
    assert [(g.name, g.kind) for g in DeviceGroup.objects.order_by("name")] == [
        ("europe", "filter"),
        ("pilot", "static"),
    ]
    response = ops.post("/fleet/groups/", {"name": "all", "kind": "filter"}, follow=True)
    assert any("fleet.group_invalid" in m or "filter" in m for m in _messages(response))
    response = ops.post("/fleet/groups/pilot/delete/", follow=True)
    assert "group pilot deleted" in _messages(response)
    response = ops.post("/fleet/groups/pilot/delete/", follow=True)
    assert any("fleet.group_unknown" in m for m in _messages(response))


def test_an_import_upload_and_a_refused_file(login: Any, world: Any) -> None:
    make_devices(world, 1)
    ops = login("ops")
    upload = SimpleUploadedFile("fleet.csv", b"endpoint,tags\nnew-1,eu\nnew-2,\n")
    response = ops.post("/fleet/import/", {"file": upload}, follow=True)
    assert "imported 2 device(s) from fleet.csv; 0 with a DTLS PSK" in _messages(response)
    refused = ops.post("/fleet/import/", {"csv": "endpoint\nnew-3\ndev-00000\n"})
    assert refused.status_code == 400
    text = refused.content.decode()
    assert 'id="import-errors"' in text and "exists already" in text
    assert "new-3" in text  # the pasted text is shown again
    assert not Device.objects.filter(endpoint="new-3").exists()
    empty = ops.post("/fleet/import/", {"csv": ""}, follow=True)
    assert any("choose a CSV file" in m for m in _messages(empty))
