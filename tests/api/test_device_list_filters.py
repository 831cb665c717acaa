"""The API's device list answers the console list's filters (latest update state, last seen)
with the same selectors, and refuses values outside them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from campaigns.models import Device, Rollout, RolloutState
from tests.api.conftest import MINIMAL_SPEC

pytestmark = pytest.mark.django_db


def _endpoints(response: Any) -> list[str]:
    assert response.status_code == 200, response.content[:300]
    return [d["endpoint"] for d in response.json()["results"]]


def test_update_state_is_the_latest_rollouts(people: dict[str, Any], world: dict[str, Any]):
    ops = people["fleet_operator"].client
    created = ops.post("/api/campaigns/", {"document": MINIMAL_SPEC})
    assert created.status_code == 201, created.json()
    Rollout.objects.filter(device__endpoint="thermo-02").update(
        state=RolloutState.FAILED, reason="integrity_check_failed", fw_result=5
    )
    Device.objects.create(endpoint="fresh-00", firmware_version="1.0.0")
    client = people["auditor"].client
    assert _endpoints(client.get("/api/devices/?update_state=failed")) == ["thermo-02"]
    assert _endpoints(client.get("/api/devices/?update_state=none")) == ["fresh-00"]
    pending = _endpoints(client.get("/api/devices/?update_state=pending&online=true"))
    assert "thermo-02" not in pending and "thermo-05" not in pending


def test_unseen_hours_finds_the_stale_and_the_never_seen(
    people: dict[str, Any], world: dict[str, Any]
):
    Device.objects.filter(endpoint="thermo-01").update(
        last_seen=timezone.now() - dt.timedelta(hours=50)
    )
    Device.objects.filter(endpoint="thermo-04").update(last_seen=None)
    client = people["auditor"].client
    assert _endpoints(client.get("/api/devices/?unseen_hours=48")) == ["thermo-01", "thermo-04"]
    assert _endpoints(client.get("/api/devices/?unseen_hours=72")) == ["thermo-04"]
    ordered = _endpoints(client.get("/api/devices/?ordering=-device_class,endpoint"))
    assert ordered[0] == "thermo-00"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("update_state=exploded", "update_state"),
        ("update_state=", "update_state"),
        ("unseen_hours=0", "unseen_hours"),
        ("unseen_hours=1.5", "unseen_hours"),
        ("unseen_hours=999999999", "unseen_hours"),
    ],
)
def test_bad_device_list_filters_are_refused_naming_the_parameter(
    people: dict[str, Any], world: dict[str, Any], query: str, field: str
):
    response = people["auditor"].client.get(f"/api/devices/?{query}")
    assert response.status_code == 400, response.content[:300]
    assert field in [e["path"] for e in response.json()["errors"]]


def test_online_means_a_live_registration(people: dict[str, Any], world: dict[str, Any]):
    Device.objects.filter(endpoint="thermo-03").update(
        registration_expires_at=timezone.now() - dt.timedelta(minutes=1)
    )
    client = people["auditor"].client
    assert _endpoints(client.get("/api/devices/?online=false")) == ["thermo-03", "thermo-05"]
    assert "thermo-03" not in _endpoints(client.get("/api/devices/?online=true"))
