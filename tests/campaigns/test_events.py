"""The device-event contract: every event survives its JSON form, and anything outside the
contract is refused with a specific error before it reaches a service."""

from __future__ import annotations

import json
from typing import Any

import pytest

from campaigns import events

SAMPLES: list[events.DeviceEvent] = [
    events.Registered(
        endpoint="dev-1",
        gateway_id="gw",
        at=1.5,
        registration_id="r1",
        lifetime=60,
        binding="UQ",
        lwm2m_version="1.1",
        queue_mode=True,
        objects=("/3/0", "/5/0"),
    ),
    events.Updated(endpoint="dev-1", registration_id="r1", lifetime=120),
    events.Deregistered(endpoint="dev-1", registration_id="r1"),
    events.Expired(endpoint="dev-1", registration_id="r1"),
    events.DeviceInfo(
        endpoint="dev-1",
        manufacturer="acme",
        firmware_version="1.0.0",
        device_time=1_700_000_000.0,
        protocols=(0, 1),
        delivery_method=2,
    ),
    events.FwStatus(endpoint="dev-1", state=2, result=0),
    events.FwInstalled(endpoint="dev-1", manifest_digest="ab" * 32),
    events.CommandResult(
        command_id="c1",
        ok=False,
        result={"phase": "failed", "result": 6},
        error_code="lwm2m.fw_update_failed",
        error="refused",
        permanent=True,
    ),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_every_event_round_trips_through_its_json_form(event: events.DeviceEvent) -> None:
    wire = json.loads(json.dumps(event.to_dict()))
    assert wire["type"] == event.type
    assert events.event_from_dict(wire) == event


def test_every_event_class_is_in_the_dispatch_tables() -> None:
    from campaigns import device_services, rollouts

    assert set(events.EVENT_TYPES.values()) == set(device_services._REGISTRY_APPLY)
    assert set(rollouts._ROLLOUT_APPLY) <= set(events.EVENT_TYPES.values())


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ([], events.EventError, "JSON object"),
        ({"type": "nope"}, events.UnknownEventError, "unknown device event type 'nope'"),
        ({}, events.UnknownEventError, "unknown device event type None"),
        ({"type": "fw_status", "state": 1}, events.EventError, "without 'result'"),
        ({"type": "fw_status", "state": "1", "result": 0}, events.EventError, "'state'"),
        ({"type": "fw_status", "state": True, "result": 0}, events.EventError, "'state'"),
        (
            {"type": "command_result", "command_id": "c", "ok": "yes"},
            events.EventError,
            "'ok' must be true or false",
        ),
        (
            {"type": "device_info", "protocols": [0, "x"]},
            events.EventError,
            "'protocols' must be an integer",
        ),
        (
            {"type": "registered", "registration_id": "r", "lifetime": 5, "objects": "/3/0"},
            events.EventError,
            "'objects' must be a list",
        ),
    ],
    ids=[
        "not-an-object",
        "unknown-type",
        "no-type",
        "missing-field",
        "string-for-int",
        "bool-for-int",
        "string-for-bool",
        "bad-list-item",
        "string-for-list",
    ],
)
def test_an_event_outside_the_contract_is_refused(
    data: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        events.event_from_dict(data)


def test_a_command_result_reports_the_update_result_only_when_the_device_gave_one() -> None:
    assert events.CommandResult(command_id="c", ok=False, result={"result": 6}).update_result == 6
    assert (
        events.CommandResult(command_id="c", ok=False, result={"result": True}).update_result
        is None
    )
    assert events.CommandResult(command_id="c", ok=False).update_result is None
