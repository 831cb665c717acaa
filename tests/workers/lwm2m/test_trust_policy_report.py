"""A trust-policy install through the gateway, reported by the simulated SUIT device's signed
report, verified by the server.

The server side is the real one, on the test database: a class's v1 and v2 policies released
by ``trust_policy_sign``, ``trust_policy_deliver`` storing the command with its report nonce,
``device_command_send`` building the message for the gateway, and the gateway's command result
applied as the event task applies it (registry, rollouts, trust-policy record). The gateway and
the simulated device run on loopback in between, with an in-memory firmware source.

The database is touched only outside the event loop, in the test's own thread. A gateway that
read or wrote the database from its threads while the test's transaction is open would wait on
the audit chain's advisory lock (``audit.services._lock_chain``, held by that transaction since
its first audited change until the test ends) and on rows it cannot see: it never returns, and
stopping it waits for it forever. That is how an earlier version of this test hung.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import device_services
from campaigns.events import event_from_dict
from campaigns.models import CommandStatus, Device, DeviceCommand
from campaigns.rollouts import rollouts_apply_event
from campaigns.trust_delivery import HELD, trust_policy_apply_event, trust_policy_deliver
from manifests import device_trust, services, suit
from manifests.models import DeliveryProfile, DeviceTrustPolicy, TrustPolicyStatus
from manifests.suit import keys as suit_keys
from manifests.suit import report as suit_report
from tests.workers.lwm2m.conftest import (
    CLASS_NAME,
    DictFirmware,
    Harness,
    eventually,
    run_with_fleet,
)

pytestmark = pytest.mark.django_db

ENDPOINT = "sim-00000"
GATEWAY = "gw-policy"


def _released(device_class: Any, security: Any, key: Any, *, days: int) -> DeviceTrustPolicy:
    draft = services.trust_policy_draft(
        device_class=device_class,
        roles={"security": (1, [suit.kid_for_public_key(key).hex()])},
        expires_at=timezone.now() + dt.timedelta(days=days),
        actor=security,
    )
    services.trust_policy_sign(
        policy=draft, signer=security, cose=device_trust.sign_policy(draft.body_bytes, key)
    )
    draft.refresh_from_db()
    assert draft.status == TrustPolicyStatus.RELEASED
    return draft


@pytest.fixture
def world(vendor: Any, catalog_admin: Any, approver_security: Any, operator: Any) -> dict:
    earlier = timezone.now() - dt.timedelta(hours=1)
    services.role_grant(
        user=approver_security.user, role="security", actor=catalog_admin, now=earlier
    )
    services.role_grant(user=operator.user, role="fleet_operator", actor=catalog_admin, now=earlier)
    services.signing_key_register(
        owner=approver_security.user,
        public_key_pem=approver_security.public_pem,
        valid_from=earlier,
    )
    # acme.example/thermo-v2: the class id the simulated fleet is built for.
    thermo = services.device_class_create(
        vendor=vendor, name=CLASS_NAME, delivery=DeliveryProfile.SUIT, actor=catalog_admin
    )
    key = approver_security.private_key
    v1 = _released(thermo, approver_security.user, key, days=30)
    v2 = _released(thermo, approver_security.user, key, days=60)
    Device.objects.create(
        endpoint=ENDPOINT,
        vendor=vendor,
        device_class=thermo,
        firmware_version="1.0.0",
        online=True,
        gateway_id=GATEWAY,
        trust_policy_version=1,
        trust_policy_sha256=v1.sha256,
    )
    return {"class": thermo, "v1": v1, "v2": v2, "operator": operator.user}


def _install_through_the_gateway(world: dict) -> tuple[dict[str, Any], DeviceCommand, str]:
    """Deliver v2 with the server's own command and message; returns the gateway's command
    result event, the command, and the device's public report key (its provisioning)."""
    v1, v2 = world["v1"], world["v2"]
    assert trust_policy_deliver(policy=v2, actor=world["operator"]).sent == 1
    command = DeviceCommand.objects.get(args__delivery="trust-policy")
    assert len(bytes.fromhex(command.args["report_nonce"])) == 16
    sent: list[dict[str, Any]] = []
    outcome = device_services.device_command_send(
        command_id=str(command.pk), publish=lambda _gw, message: sent.append(message)
    )
    assert outcome == "sent" and len(sent) == 1
    firmware = DictFirmware(policies={v2.sha256: bytes(v2.document)})
    found: dict[str, Any] = {}

    async def scenario(h: Harness) -> None:
        h.gateway.bus.publish(h.gateway.config.gateway_id, sent[0])
        await eventually(lambda: bool(h.sink.of("command_result")), timeout=20)
        found["event"] = h.sink.of("command_result")[0]
        device = h.fleet.devices[ENDPOINT]
        found["held"] = device.state.trust_policy
        found["report_key"] = h.fleet.report_keys()[ENDPOINT]

    run_with_fleet(
        scenario,
        count=1,
        anchors=[suit.generate_private_key("ES256").public_key()],
        firmware=firmware,
        timeout=40,
        spec_kwargs={"trust_policy": bytes(v1.document).hex()},
    )
    assert found["held"] == bytes(v2.document).hex()  # the device took v2 by its own rule
    return found["event"], command, found["report_key"]


def _apply(event: dict[str, Any]) -> None:
    """As ``workers.tasks`` applies a gateway event."""
    parsed = event_from_dict(event)
    device_services.device_event_apply(event=parsed)
    rollouts_apply_event(event=parsed)
    trust_policy_apply_event(event=parsed)


def test_the_simulators_signed_report_of_a_policy_install_is_verified_by_the_server(world):
    event, command, report_key = _install_through_the_gateway(world)
    v2 = world["v2"]
    assert event["ok"] is True and event["command_id"] == str(command.pk)
    # The report the gateway read from /26241/0/1 names the policy document and the nonce.
    report = suit_report.open_report(
        bytes.fromhex(event["suit_report"]),
        public_key=suit_keys.load_public_key_pem(report_key.encode()),
    )
    assert report.success
    assert report.manifest_digest == hashlib.sha256(bytes(v2.document)).digest()
    assert report.nonce.hex() == command.args["report_nonce"]

    Device.objects.filter(endpoint=ENDPOINT).update(report_key=report_key)
    _apply(event)
    device = Device.objects.get(endpoint=ENDPOINT)
    assert (device.trust_policy_version, device.trust_policy_sha256) == (2, v2.sha256)
    assert device.trust_policy_confirmed_at is not None
    command.refresh_from_db()
    assert command.status == CommandStatus.SUCCEEDED
    assert command.result["trust_policy"] == HELD
    held = AuditEvent.objects.get(action="device.trust_policy_held")
    assert held.details["verdict"] == HELD and held.details["version"] == 2
    assert held.details["report_sha256"] == suit_report.report_digest(
        bytes.fromhex(event["suit_report"])
    )


def test_a_policy_install_report_under_another_key_than_the_registered_one_is_not_held(world):
    event, command, _ = _install_through_the_gateway(world)
    impostor = suit_keys.generate_private_key("Ed25519")
    Device.objects.filter(endpoint=ENDPOINT).update(
        report_key=suit_keys.public_key_pem(impostor).decode()
    )
    _apply(event)
    device = Device.objects.get(endpoint=ENDPOINT)
    assert (device.trust_policy_version, device.trust_policy_sha256) == (1, world["v1"].sha256)
    command.refresh_from_db()
    assert command.result["trust_policy"] == "report_forged"
    refused = AuditEvent.objects.get(action="device.trust_policy_refused")
    assert refused.details["verdict"] == "report_forged"
