"""The registry records the device trust policy a device holds only from the device's own word:
its Object 5 success for the trust-policy command and, for a SUIT class, a SUIT report signed by
its registered key naming the policy document's SHA-256 and the command's nonce. Each attack
hands the server what a compromised path could; none records a policy on the device. The plan
counts device-side threshold checks per device from that record."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import planning
from campaigns.events import CommandResult
from campaigns.models import Device, DeviceCommand
from campaigns.spec import parse_spec
from campaigns.trust_delivery import trust_policy_apply_event, trust_policy_deliver
from manifests import device_trust, suit
from manifests import services as release_services
from manifests.models import DeviceTrustPolicy
from manifests.suit import keys as suit_keys
from manifests.suit import report as suit_report
from tests.campaigns.support import Catalog, make_devices, spec_text
from tests.helpers.deployment import DEVICE_REPORT_KEY

pytestmark = pytest.mark.django_db


def _released(catalog: Catalog, *, signers: tuple[str, ...] = ("sec",)) -> DeviceTrustPolicy:
    kids = [suit.kid_for_public_key(catalog.keys[p]).hex() for p in ("sec", "sec2")]
    draft = release_services.trust_policy_draft(
        device_class=catalog.thermo,
        roles={"security": (1, kids)},
        expires_at=timezone.now() + dt.timedelta(days=30),
        actor=catalog.users["sec"],
    )
    for persona in signers:
        block = device_trust.sign_policy(draft.body_bytes, catalog.keys[persona])
        release_services.trust_policy_sign(policy=draft, signer=catalog.users[persona], cose=block)
    draft.refresh_from_db()
    assert draft.sha256
    return draft


def _report(
    command: DeviceCommand,
    *,
    key: Any = DEVICE_REPORT_KEY,
    digest: bytes | None = None,
    nonce: bytes | None = None,
    failure_code: str | None = None,
) -> str:
    content = suit_report.SUITReport(
        manifest_digest=digest or bytes.fromhex(command.args["manifest_digest"]),
        nonce=nonce or bytes.fromhex(command.args["report_nonce"]),
        failure=None if failure_code is None else suit_report.failure_for(failure_code),
    )
    return suit_report.sign_report(content, key).hex()


def _answer(command: DeviceCommand, report_hex: str, *, ok: bool = True, **fields: Any) -> Device:
    trust_policy_apply_event(
        event=CommandResult(command_id=str(command.pk), ok=ok, suit_report=report_hex, **fields)
    )
    return Device.objects.get(pk=command.device_id)


def _verdicts(device: Device) -> list[str]:
    return list(
        AuditEvent.objects.filter(
            action__startswith="device.trust_policy_", object_id=str(device.pk)
        ).values_list("details__verdict", flat=True)
    )


def _delivered(catalog: Catalog, count: int = 1) -> tuple[DeviceTrustPolicy, list[DeviceCommand]]:
    make_devices(catalog, count)
    policy = _released(catalog)
    trust_policy_deliver(policy=policy, actor=catalog.ops)
    return policy, list(DeviceCommand.objects.order_by("pk"))


def test_a_verified_report_records_the_policy_held_by_the_device(catalog: Catalog) -> None:
    policy, (command,) = _delivered(catalog)
    assert len(command.args["report_nonce"]) == 32  # a SUIT class: the install is reported
    device = _answer(command, _report(command))
    assert (device.trust_policy_version, device.trust_policy_sha256) == (1, policy.sha256)
    assert device.trust_policy_confirmed_at is not None
    assert _verdicts(device) == ["held"]
    # The same command reported again changes nothing.
    assert _answer(command, _report(command)).trust_policy_confirmed_at == (
        device.trust_policy_confirmed_at
    )
    assert _verdicts(device) == ["held"]
    # Delivered again: the device known to hold it gets no second command.
    assert trust_policy_deliver(policy=policy, actor=catalog.ops).sent == 0


def test_policy_success_without_a_report_is_refused(catalog: Catalog) -> None:
    _, (command,) = _delivered(catalog)
    device = _answer(command, "")
    assert device.trust_policy_version is None
    assert _verdicts(device) == ["report_missing"]


def test_forged_policy_report_is_refused(catalog: Catalog) -> None:
    _, (command,) = _delivered(catalog)
    forger = suit_keys.generate_private_key("Ed25519")
    device = _answer(command, _report(command, key=forger))
    assert device.trust_policy_version is None
    assert _verdicts(device) == ["report_forged"]


def test_policy_report_naming_another_document_is_refused(catalog: Catalog) -> None:
    _, (command,) = _delivered(catalog)
    device = _answer(command, _report(command, digest=hashlib.sha256(b"other").digest()))
    assert device.trust_policy_version is None
    assert _verdicts(device) == ["report_wrong_manifest"]


def test_replayed_policy_report_of_another_command_is_refused(catalog: Catalog) -> None:
    _, (command,) = _delivered(catalog)
    device = _answer(command, _report(command, nonce=b"\x01" * 16))
    assert device.trust_policy_version is None
    assert _verdicts(device) == ["report_replayed"]


def test_a_policy_the_device_refuses_is_recorded_with_its_reason(catalog: Catalog) -> None:
    _, (command,) = _delivered(catalog)
    device = _answer(
        command,
        _report(command, failure_code="device.trust_policy_signature"),
        ok=False,
        error_code="lwm2m.fw_update_failed",
        error="update failed with result 5",
        result={"result": 5},
    )
    assert device.trust_policy_version is None
    assert _verdicts(device) == ["refused"]
    event = AuditEvent.objects.get(action="device.trust_policy_refused")
    assert "result 5" in event.details["detail"]


def test_policy_rollback_on_the_record_is_refused(catalog: Catalog) -> None:
    """A confirmed older version never replaces the newer one the registry records."""
    policy, (command,) = _delivered(catalog)
    Device.objects.filter(pk=command.device_id).update(
        trust_policy_version=policy.version + 1, trust_policy_sha256="ab" * 32
    )
    device = _answer(command, _report(command))
    assert device.trust_policy_version == policy.version + 1
    assert device.trust_policy_sha256 == "ab" * 32
    event = AuditEvent.objects.get(action="device.trust_policy_held")
    assert event.details["recorded"] is False


def test_plan_counts_only_devices_known_to_hold_the_policy_as_device_protected(
    catalog: Catalog,
) -> None:
    policy, commands = _delivered(catalog, 4)
    text = spec_text("enforcement")
    plan = planning.campaign_plan(spec=parse_spec(text)).as_dict()["threshold_enforcement"]
    assert (plan["device"], plan["server_only"]) == (0, 4)
    for command in commands[:3]:
        _answer(command, _report(command))
    plan = planning.campaign_plan(spec=parse_spec(text)).as_dict()["threshold_enforcement"]
    assert (plan["device"], plan["server_only"]) == (3, 1)
    assert policy.version == 1
