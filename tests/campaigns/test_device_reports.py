"""A SUIT device's success is taken only from its signed SUIT report of the attempt.

Each attack hands the server what a compromised path (or device) could: a report signed by
another key, the report of an earlier attempt, a report about another manifest, or a bare
"Update Result 1" with no report at all. None of them makes a success; each is recorded on the
rollout with its reason and in the audit log.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import device_services, engine, planning, rollouts, services
from campaigns.events import CommandResult, FwStatus
from campaigns.models import Device, Rollout, RolloutState
from campaigns.spec import FAILURE_REASONS, parse_spec
from campaigns.wording import REASON_TEXT
from manifests.suit import keys as suit_keys
from manifests.suit import report as suit_report
from tests.campaigns.support import Catalog, make_devices, signed_report, spec_text

pytestmark = pytest.mark.django_db

RETRY = "retries:\n  max: 3\n  backoff: 1m\n  on: [dispatch_failed]\n"


def _dispatched(
    catalog: Catalog, name: str, *, extra: str = "", prefix: str = "dev", **fields: object
) -> Rollout:
    now = timezone.now()
    make_devices(catalog, 1, prefix=prefix, **fields)
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text(name, extra=extra)), actor=catalog.ops, now=now
    )
    engine.campaign_reconcile(campaign.pk, now=now)
    return Rollout.objects.select_related("manifest").get(
        campaign=campaign, device__endpoint__startswith=prefix
    )


def _installed(rollout: Rollout, report_hex: str, *, ok: bool = True, **fields: object) -> Rollout:
    """The device runs the manifest's version and the gateway reports the command's end."""
    Device.objects.filter(pk=rollout.device_id).update(firmware_version=rollout.manifest.version)
    rollouts.rollouts_apply_event(
        event=CommandResult(
            command_id=str(rollout.command_id), ok=ok, suit_report=report_hex, **fields
        )
    )
    rollout.refresh_from_db()
    return rollout


def _audited(rollout: Rollout) -> list[str]:
    return list(
        AuditEvent.objects.filter(
            action="rollout.device_report", object_id=str(rollout.pk)
        ).values_list("details__verdict", flat=True)
    )


def test_a_verified_report_completes_the_update_and_is_stored(
    catalog: Catalog, django_assert_max_num_queries: Any
) -> None:
    rollout = _dispatched(catalog, "verified")
    report_hex = signed_report(rollout)
    # The event path stays a fixed number of statements: the rollout with its device, class
    # and manifest, the command's nonce, the report and its audit event, the confirmation.
    Device.objects.filter(pk=rollout.device_id).update(firmware_version=rollout.manifest.version)
    event = CommandResult(command_id=str(rollout.command_id), ok=True, suit_report=report_hex)
    with django_assert_max_num_queries(11):
        rollouts.rollouts_apply_event(event=event)
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.SUCCEEDED
    assert rollout.report_verdict == "verified"
    assert bytes(rollout.report) == bytes.fromhex(report_hex)
    assert _audited(rollout) == ["verified"]


def test_forged_report_signed_by_another_key_is_refused(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "forged")
    forger = suit_keys.generate_private_key("Ed25519")
    rollout = _installed(rollout, signed_report(rollout, key=forger))
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "report_forged")
    assert rollout.report_verdict == "report_forged"
    assert rollout.report is not None  # kept as evidence
    assert _audited(rollout) == ["report_forged"]


def test_replayed_report_of_an_earlier_attempt_is_refused(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "replayed", extra=RETRY)
    first_report = signed_report(rollout)  # what the device signed for attempt 1
    rollouts.rollouts_apply_event(
        event=CommandResult(
            command_id=str(rollout.command_id), ok=False, error_code="x", permanent=False
        )
    )
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PENDING  # retried by the policy
    engine.campaign_reconcile(rollout.campaign_id, now=timezone.now() + dt.timedelta(minutes=2))
    second = Rollout.objects.select_related("manifest").get(pk=rollout.pk)
    assert second.attempts == 2 and second.command_id != rollout.command_id
    second = _installed(second, first_report)
    assert (second.state, second.reason) == (RolloutState.FAILED, "report_replayed")
    # Each attempt's report is audited: the first ended without one.
    assert _audited(second) == ["report_missing", "report_replayed"]


def test_report_for_another_manifest_is_refused(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "other-manifest")
    other = signed_report(rollout, manifest_digest=os.urandom(32))
    rollout = _installed(rollout, other)
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "report_wrong_manifest")


def test_success_over_5_0_5_with_no_report_is_refused(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "no-report")
    Device.objects.filter(pk=rollout.device_id).update(firmware_version=rollout.manifest.version)
    # Update Result 1 observed on /5/0/5 and the new version registered: still no success.
    rollouts.rollouts_apply_event(
        event=FwStatus(endpoint=rollout.device.endpoint, state=0, result=1)
    )
    rollout.refresh_from_db()
    assert (rollout.state, rollout.fw_result) == (RolloutState.UPDATING, 1)
    rollout = _installed(rollout, "")
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "report_missing")
    assert _audited(rollout) == ["report_missing"]


def test_a_report_that_is_not_cbor_is_refused_as_malformed(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "garbage")
    rollout = _installed(rollout, "ff00")
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "report_malformed")


def test_an_oversized_report_is_refused_and_not_kept(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "oversized")
    rollout = _installed(rollout, "00" * (suit_report.MAX_REPORT_BYTES + 1))
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "report_malformed")
    assert rollout.report is None


def test_a_success_claim_whose_signed_report_says_failure_is_refused(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "says-failed")
    report_hex = signed_report(rollout, failure_code="device.image_digest_mismatch")
    rollout = _installed(rollout, report_hex)
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "report_failure")
    assert "condition-failed" in rollout.detail


def test_a_failure_with_a_genuine_report_keeps_the_devices_reason(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "honest-failure")
    report_hex = signed_report(rollout, failure_code="device.boot_failed")
    rollout = _installed(
        rollout, report_hex, ok=False, result={"phase": "failed", "result": 8}, permanent=True
    )
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "update_failed")
    assert rollout.report_verdict == "report_failure"


def test_a_failure_with_a_forged_report_fails_with_the_reports_reason(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "forged-failure")
    forger = suit_keys.generate_private_key("Ed25519")
    rollout = _installed(
        rollout,
        signed_report(rollout, key=forger, failure_code="device.boot_failed"),
        ok=False,
        result={"phase": "failed", "result": 8},
    )
    assert (rollout.state, rollout.reason) == (RolloutState.FAILED, "report_forged")


def test_a_suit_device_without_report_key_is_refused_at_dispatch(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "keyless", report_key="")
    assert (rollout.state, rollout.reason) == (RolloutState.SKIPPED, "no_report_key")
    assert rollout.command_id is None


def test_a_report_verified_for_one_attempt_does_not_carry_to_the_next(catalog: Catalog) -> None:
    """The claim of a new attempt clears the previous verdict: success needs this attempt's."""
    rollout = _dispatched(catalog, "fresh-verdict", extra=RETRY)
    Rollout.objects.filter(pk=rollout.pk).update(report_verdict="verified")
    rollouts.rollouts_apply_event(
        event=CommandResult(
            command_id=str(rollout.command_id), ok=False, error_code="x", permanent=False
        )
    )
    engine.campaign_reconcile(rollout.campaign_id, now=timezone.now() + dt.timedelta(minutes=2))
    again = Rollout.objects.get(pk=rollout.pk)
    assert again.attempts == 2 and again.report_verdict == ""


def test_the_nonce_is_fresh_per_attempt_and_long_enough(catalog: Catalog) -> None:
    rollout = _dispatched(catalog, "nonce")
    args = rollout.device.commands.get(pk=rollout.command_id).args
    assert len(bytes.fromhex(args["report_nonce"])) == suit_report.MIN_NONCE_BYTES
    other = _dispatched(catalog, "nonce-2", prefix="other")
    assert (
        other.device.commands.get(pk=other.command_id).args["report_nonce"]
        != (args["report_nonce"])
    )


def test_the_plan_shows_suit_devices_without_report_key_as_excluded(catalog: Catalog) -> None:
    make_devices(catalog, 2, prefix="keyed")
    make_devices(catalog, 1, prefix="keyless", report_key="")
    plan = planning.campaign_plan(spec=parse_spec(spec_text("preview")))
    assert plan.cohort == 2
    assert plan.excluded == {"no_report_key": 1}


def test_a_report_key_removed_after_planning_stops_the_dispatch(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 1)
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("key-removed")), actor=catalog.ops, now=now
    )
    assert Rollout.objects.get(campaign=campaign).state == RolloutState.PENDING
    Device.objects.update(report_key="")
    engine.campaign_reconcile(campaign.pk, now=now)
    rollout = Rollout.objects.get(campaign=campaign)
    assert (rollout.state, rollout.reason) == (RolloutState.SKIPPED, "no_report_key")
    assert rollout.command_id is None


def test_a_fleet_registers_its_report_keys_at_once_and_one_bad_key_registers_none(
    catalog: Catalog,
) -> None:
    keys = {
        f"fleet-{i}": suit_keys.public_key_pem(suit_keys.generate_private_key("Ed25519")).decode()
        for i in range(3)
    }
    with pytest.raises(device_services.ReportKeyError):
        device_services.device_report_keys_register(
            keys={**keys, "fleet-bad": "not a key"}, actor="simulator"
        )
    assert not Device.objects.filter(endpoint__startswith="fleet-").exists()
    assert device_services.device_report_keys_register(keys=keys, actor="simulator") == 3
    assert (
        dict(
            Device.objects.filter(endpoint__startswith="fleet-").values_list(
                "endpoint", "report_key"
            )
        )
        == keys
    )
    assert device_services.device_report_keys_register(keys=keys, actor="simulator") == 0
    assert AuditEvent.objects.get(action="device.report_keys").details == {"count": 3}


def test_every_report_verdict_is_a_failure_reason_with_words() -> None:
    for reason in (*rollouts.REPORT_REASONS, "no_report_key"):
        assert reason in REASON_TEXT, reason
    assert set(FAILURE_REASONS) >= rollouts.REPORT_REASONS
