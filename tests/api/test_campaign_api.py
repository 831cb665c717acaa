"""The fleet side through the HTTP API: devices, campaigns from spec documents, actions,
emergency stop, rollback preparation and the audit log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from audit.models import AuditEvent
from campaigns.models import Campaign, CampaignStatus, EmergencyStop
from tests.api.conftest import MINIMAL_SPEC

pytestmark = pytest.mark.django_db


def test_device_filters(people: dict[str, Any], world: dict[str, Any], device_class: Any) -> None:
    client = people["auditor"].client
    assert client.get("/api/devices/").json()["count"] == 6
    assert client.get("/api/devices/?online=false").json()["count"] == 1
    assert client.get("/api/devices/?tag=lab").json()["count"] == 2
    assert client.get(f"/api/devices/?device_class={device_class.pk}").json()["count"] == 6
    assert client.get("/api/devices/?firmware_version=9.9.9").json()["count"] == 0
    assert client.get("/api/devices/?fw_state=0&limit=2").json()["results"][1]["endpoint"] == (
        "thermo-01"
    )
    detail = client.get("/api/devices/thermo-03/").json()
    assert detail["device_class_name"] == "acme.example/thermo-v2" and detail["rollouts"] == []


def test_plan_then_apply_yaml_then_actions(people: dict[str, Any], world: dict[str, Any]) -> None:
    ops = people["fleet_operator"]
    plan = people["qa"].client.post("/api/campaign-plans/", {"document": MINIMAL_SPEC})
    assert plan.status_code == 200, plan.json()
    assert plan.json()["cohort"] == 6 and plan.json()["release_blocked"] is None
    # These devices never reported a Current Time: eligible, under the server's check alone.
    assert plan.json()["server_time_only"] == {"unknown": 6}
    assert not Campaign.objects.exists()  # a preview writes nothing

    response = ops.client.generic(
        "POST", "/api/campaigns/", MINIMAL_SPEC, content_type="application/yaml"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["outcome"] == "created" and body["campaign"]["status"] == "running"
    assert [s["name"] for s in body["status"]["stages"]] == ["canary", "all"]

    # the same spec again changes nothing; a changed one is a revision
    again = ops.client.post("/api/campaigns/", {"document": MINIMAL_SPEC}, format="json")
    assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
    revised = MINIMAL_SPEC.replace("size: 50%", "size: 34%")
    response = ops.client.put(
        "/api/campaigns/thermo-rollout/", {"document": revised}, format="json"
    )
    assert response.status_code == 200 and response.json()["outcome"] == "revised"
    revisions = ops.client.get("/api/campaigns/thermo-rollout/revisions/").json()
    assert [r["revision"] for r in revisions] == [1, 2]
    mismatch = ops.client.put(
        "/api/campaigns/thermo-rollout/",
        {"document": revised.replace("name: thermo-rollout", "name: other")},
        format="json",
    )
    assert mismatch.status_code == 400 and mismatch.json()["errors"][0]["path"] == "name"

    status = people["auditor"].client.get("/api/campaigns/thermo-rollout/status/").json()
    assert status["status"] == "running" and status["release"] == "thermo-2.0.0"
    rollouts = people["auditor"].client.get("/api/rollouts/?campaign=thermo-rollout").json()
    assert rollouts["count"] == 6

    paused = ops.client.post(
        "/api/campaigns/thermo-rollout/pause/", {"reason": "lunch"}, format="json"
    )
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    twice = ops.client.post("/api/campaigns/thermo-rollout/pause/", {}, format="json")
    assert twice.status_code == 409 and twice.json()["code"] == "campaign.state"
    resumed = ops.client.post("/api/campaigns/thermo-rollout/resume/", {}, format="json")
    assert resumed.json()["status"] == "running"
    promoted = ops.client.post("/api/campaigns/thermo-rollout/promote/", {}, format="json")
    assert promoted.status_code == 200
    aborted = ops.client.post(
        "/api/campaigns/thermo-rollout/abort/", {"reason": "changed plans"}, format="json"
    )
    assert aborted.json()["status"] == "aborted"
    timeline = people["auditor"].client.get("/api/campaigns/thermo-rollout/timeline/").json()
    actions = [e["action"] for e in timeline]
    for expected in ("campaign.create", "campaign.revise", "campaign.pause", "campaign.abort"):
        assert expected in actions
    listing = people["auditor"].client.get("/api/campaigns/?status=aborted").json()
    assert listing["count"] == 1


def test_spec_errors_list_every_problem_with_its_path(
    people: dict[str, Any], world: dict[str, Any]
) -> None:
    bad = {"apiVersion": "fwupd/v1", "kind": "Campaign", "name": "x", "stages": []}
    response = people["fleet_operator"].client.post("/api/campaigns/", {"spec": bad}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "campaign.spec_invalid"
    assert body["errors"] == [
        {"path": "release", "reason": "required key is missing"},
        {"path": "stages", "reason": "must have at least 1 item(s)"},
        {"path": "target", "reason": "required key is missing"},
    ]
    assert body["message"] == "api: 3 problems"
    unknown = MINIMAL_SPEC.replace("release: thermo-2.0.0", "release: nope")
    response = people["fleet_operator"].client.post(
        "/api/campaign-plans/", {"document": unknown}, format="json"
    )
    assert response.status_code == 400 and response.json()["code"] == "campaign.unknown_release"
    both = people["fleet_operator"].client.post(
        "/api/campaign-plans/", {"document": MINIMAL_SPEC, "spec": {}}, format="json"
    )
    assert both.status_code == 400 and both.json()["code"] == "invalid"


def test_emergency_stop_and_lift(people: dict[str, Any], world: dict[str, Any]) -> None:
    ops, sec = people["fleet_operator"], people["security"]
    response = ops.client.post(
        "/api/emergency-stops/", {"reason": "bricking", "release": "thermo-2.0.0"}, format="json"
    )
    assert response.status_code == 201, response.json()
    stop = response.json()
    assert stop["scope"] == "release" and stop["active"] is True
    # the operator may stop but not lift
    assert ops.client.post(f"/api/emergency-stops/{stop['id']}/lift/").status_code == 403
    lifted = sec.client.post(f"/api/emergency-stops/{stop['id']}/lift/")
    assert lifted.status_code == 200 and lifted.json()["active"] is False
    again = sec.client.post(f"/api/emergency-stops/{stop['id']}/lift/")
    assert again.status_code == 409 and again.json()["code"] == "campaign.emergency_stop"
    assert EmergencyStop.objects.get().lifted_by == sec.user
    active = people["auditor"].client.get("/api/emergency-stops/?active=true").json()
    assert active["count"] == 0


def test_rollback_prepare_refuses_without_an_earlier_release(
    people: dict[str, Any], world: dict[str, Any]
) -> None:
    response = people["author"].client.post(
        "/api/rollback/prepare/", {"from_release": "thermo-2.0.0"}, format="json"
    )
    assert response.status_code == 409 and response.json()["code"] == "campaign.state"
    missing = people["author"].client.post(
        "/api/rollback/prepare/", {"from_release": "nope"}, format="json"
    )
    assert missing.status_code == 400 and missing.json()["errors"][0]["path"] == "from_release"


def test_audit_filter_export_and_verify(people: dict[str, Any], world: dict[str, Any]) -> None:
    client = people["auditor"].client
    approvals = client.get("/api/audit-events/?action=release.approve").json()
    assert approvals["count"] == 2
    assert {e["actor"] for e in approvals["results"]} == {"qa", "sec"}
    by_actor = client.get("/api/audit-events/?actor=author&action_prefix=release.").json()
    assert {e["action"] for e in by_actor["results"]} == {"release.create", "release.submit"}
    by_object = client.get(
        "/api/audit-events/?object_type=release&object_id=thermo-2.0.0&limit=1"
    ).json()
    assert by_object["count"] >= 4 and len(by_object["results"]) == 1
    first = client.get("/api/audit-events/1/").json()
    assert first["seq"] == 1

    response = client.get("/api/audit-events/export/?action_prefix=release.")
    assert response["Content-Type"] == "application/jsonl"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [r["seq"] for r in lines] == sorted(r["seq"] for r in lines)
    assert all(r["action"].startswith("release.") for r in lines)
    assert set(lines[0]) == {
        "seq",
        "actor",
        "action",
        "object_type",
        "object_id",
        "details",
        "created_at",
        "prev_hash",
        "hash",
    }

    verdict = client.get("/api/audit-events/verify/").json()
    assert verdict["ok"] is True and verdict["checked"] == AuditEvent.objects.count()


def test_campaign_status_value_is_stable_for_the_console(
    people: dict[str, Any], world: dict[str, Any]
) -> None:
    people["fleet_operator"].client.post(
        "/api/campaigns/", {"document": MINIMAL_SPEC}, format="json"
    )
    assert Campaign.objects.get().status == CampaignStatus.RUNNING
    status = people["qa"].client.get("/api/campaigns/thermo-rollout/status/").json()
    assert status["server_time_only"] == {}  # devices dispatched without a device clock
    stage = status["stages"][0]
    assert set(stage) == {
        "name",
        "index",
        "status",
        "current",
        "planned",
        "tally",
        "reasons",
        "methods",
        "payloads",
        "gate_approved_by",
    }


def test_a_campaign_named_plan_is_an_ordinary_campaign(
    people: dict[str, Any], world: dict[str, Any]
) -> None:
    ops = people["fleet_operator"]
    spec = MINIMAL_SPEC.replace("name: thermo-rollout", "name: plan")
    created = ops.client.post("/api/campaigns/", {"document": spec}, format="json")
    assert created.status_code == 201, created.json()
    detail = ops.client.get("/api/campaigns/plan/")
    assert detail.status_code == 200 and detail.json()["name"] == "plan"
    assert ops.client.get("/api/campaigns/plan/status/").status_code == 200
    # The preview lives in its own collection and still writes nothing.
    preview = ops.client.post("/api/campaign-plans/", {"document": spec}, format="json")
    assert preview.status_code == 200 and Campaign.objects.count() == 1
