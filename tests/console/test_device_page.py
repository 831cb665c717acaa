"""A device's page: every campaign that took it in, each attempt (a retry is a new one), the
outcome in words, and the gateway's events as sentences, newest first."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from tests.console.world import make_devices

SPEC = """apiVersion: fwupd/v1
kind: Campaign
name: thermo-retry
release: thermo-1.1.0
target:
  device_class: acme.example/thermo-v2
stages:
  - name: all
    size: rest
timeouts:
  device: 2m
retries:
  max: 1
  backoff: 1s
  on: [connection_lost]
"""


def _fail(rollout: Any, *, result: int, now: dt.datetime) -> None:
    """The gateway reports the rollout's command failed with the device's Update Result."""
    from campaigns import events
    from campaigns.device_services import device_command_complete
    from campaigns.rollouts import rollouts_apply_event

    outcome = {"phase": "downloading", "result": result}
    device_command_complete(
        command_id=str(rollout.command_id),
        ok=False,
        result=outcome,
        error_code="lwm2m.fw_update_failed",
        error="the device reported a failure",
        at=now,
    )
    rollouts_apply_event(
        event=events.CommandResult(
            endpoint=rollout.device.endpoint,
            command_id=str(rollout.command_id),
            ok=False,
            result=outcome,
            error_code="lwm2m.fw_update_failed",
        ),
        now=now,
    )


def test_device_page_lists_each_attempt_and_says_how_it_ended(
    login: Any, world: Any, django_assert_max_num_queries: Any
) -> None:
    from campaigns import device_services, engine, services
    from campaigns.models import Rollout, RolloutState
    from campaigns.spec import parse_spec

    (device,) = make_devices(world, 1, prefix="solo")
    device_services.device_register(
        endpoint=device.endpoint, gateway_id="gw-none", registration_id="r1", lifetime=3600
    )
    campaign, _ = services.campaign_apply(
        spec=parse_spec(SPEC, source="test"), actor=world.users["ops"]
    )
    now = timezone.now()
    engine.campaign_reconcile(campaign.pk, now=now)
    rollout = Rollout.objects.select_related("device").get(campaign=campaign)
    assert rollout.state == RolloutState.QUEUED
    _fail(rollout, result=4, now=now)  # connection lost: retried
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PENDING
    later = now + dt.timedelta(seconds=5)
    engine.campaign_reconcile(campaign.pk, now=later)
    rollout.refresh_from_db()
    assert rollout.attempts == 2
    _fail(rollout, result=5, now=later)  # integrity check failure: final
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.FAILED

    client = login("auditor")
    with django_assert_max_num_queries(20):
        response = client.get(f"/devices/{device.endpoint}/")
    (item,) = response.context["history"]
    assert item["text"] == "Update failed: integrity check failure"
    assert [a["text"] for a in item["attempt_rows"]] == [
        "Attempt failed: connection lost during download (during downloading)",
        "Attempt failed: integrity check failure (during downloading)",
    ]
    texts = [e["text"] for e in response.context["events"]]
    assert texts[0] == "Command fw_update failed: integrity check failure"
    assert texts[1] == "Command fw_update failed: connection lost during download"
    assert texts[-1] == "Registered (registration r1)"
    page = response.content.decode()
    assert "Update failed: integrity check failure" in page
    assert "attempt 2" in page
    assert item["payload"] == "" and 'data-role="payload"' not in page  # full images only
    # A rollout whose delta failed says so (tests/campaigns/test_deltas.py makes one for real).
    Rollout.objects.filter(pk=rollout.pk).update(payload="fallback")
    page = client.get(f"/devices/{device.endpoint}/").content.decode()
    assert 'data-role="payload">[full image after a failed delta]' in page


def test_a_device_never_in_a_campaign_says_so(login: Any, world: Any) -> None:
    (device,) = make_devices(world, 1, prefix="idle")
    response = login("auditor").get(f"/devices/{device.endpoint}/")
    assert response.context["history"] == []
    assert "never in a campaign" in response.content.decode()
    assert response.context["fw_result_text"] == "not reported"
