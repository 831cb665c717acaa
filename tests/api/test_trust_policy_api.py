"""Device trust policies over the API: security drafts a policy, the body is signed offline and
the COSE_Sign1 uploaded (as release approvals are), the draft is released when the class's
devices would accept it; per class, which devices check thresholds themselves. Every refusal
is a 4xx with the service's code, and changes nothing."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from campaigns.models import Device
from manifests import device_trust, services, suit
from manifests.models import DeliveryProfile, DeviceTrustPolicy, TrustPolicySignature
from tests.api.conftest import MINIMAL_SPEC, ApiUser, register_key

pytestmark = pytest.mark.django_db

URL = "/api/trust-policies/"


def _kid(person: ApiUser) -> str:
    return suit.kid_for_public_key(person.key).hex()


@pytest.fixture
def signers(people: dict[str, ApiUser]) -> dict[str, ApiUser]:
    earlier = timezone.now() - dt.timedelta(hours=1)
    for role in ("security", "admin", "qa"):
        register_key(people[role], at=earlier)
    return people


def _draft_body(device_class: Any, *roles: tuple[str, int, list[str]], days: int = 30) -> dict:
    return {
        "device_class": device_class.pk,
        "roles": {role: {"threshold": t, "kids": kids} for role, t, kids in roles},
        "expires_at": (timezone.now() + dt.timedelta(days=days)).isoformat(),
        "reason": "first policy",
    }


def _sign(person: ApiUser, policy_id: int) -> bytes:
    body = person.client.get(f"{URL}{policy_id}/body/", HTTP_ACCEPT="application/cbor")
    assert body.status_code == 200
    return device_trust.sign_policy(body.content, person.key)


def test_security_drafts_signs_offline_and_the_policy_is_released(
    signers: dict[str, ApiUser], device_class: Any
):
    security, qa = signers["security"], signers["qa"]
    created = security.client.post(
        URL,
        _draft_body(device_class, ("security", 1, [_kid(security)]), ("qa", 1, [_kid(qa).upper()])),
        format="json",
    )
    assert created.status_code == 201, created.json()
    data = created.json()
    assert data["version"] == 1 and data["status"] == "draft" and data["signature_count"] == 0
    assert data["roles"] == {
        "security": {"threshold": 1, "kids": [_kid(security)]},
        "qa": {"threshold": 1, "kids": [_kid(qa)]},
    }
    assert "trust_policy.unsigned" in data["refusal"]
    row = DeviceTrustPolicy.objects.get(pk=data["id"])
    assert (
        _sign(security, row.pk)
        and bytes(row.body)
        == security.client.get(f"{URL}{row.pk}/body/", HTTP_ACCEPT="application/cbor").content
    )
    missing = signers["auditor"].client.get(f"{URL}{row.pk}/document/")
    assert missing.status_code == 409 and missing.json()["code"] == "trust_policy.state"

    uploaded = security.client.post(
        f"{URL}{row.pk}/signatures/",
        {"signature": base64.b64encode(_sign(security, row.pk)).decode()},
        format="json",
    )
    assert uploaded.status_code == 201, uploaded.json()
    result = uploaded.json()
    assert result["released"] is True
    assert result["policy"]["status"] == "released" and result["policy"]["refusal"] is None
    assert result["policy"]["signatures"][0]["signer"] == security.user.username
    row.refresh_from_db()
    document = signers["auditor"].client.get(
        f"{URL}{row.pk}/document/", HTTP_ACCEPT="application/cbor"
    )
    assert document.status_code == 200 and document.content == bytes(row.document)
    assert device_trust.decode_policy(document.content).version == 1

    listed = signers["auditor"].client.get(URL, {"device_class": device_class.pk})
    assert [p["version"] for p in listed.json()["results"]] == [1]
    assert listed.json()["results"][0]["signature_count"] == 1
    assert signers["auditor"].client.get(URL, {"status": "draft"}).json()["count"] == 0
    assert AuditEvent.objects.filter(action="trust_policy.released").count() == 1


def test_a_raw_cose_body_is_accepted_as_a_signature(signers: dict[str, ApiUser], device_class: Any):
    security = signers["security"]
    draft = security.client.post(
        URL, _draft_body(device_class, ("security", 1, [_kid(security)])), format="json"
    ).json()
    raw = security.client.post(
        f"{URL}{draft['id']}/signatures/",
        _sign(security, draft["id"]),
        content_type="application/octet-stream",
    )
    assert raw.status_code == 201 and raw.json()["released"] is True


@pytest.mark.parametrize("role", ["author", "qa", "fleet_operator", "auditor", "none"])
def test_drafting_by_a_role_other_than_security_or_admin_is_forbidden(
    signers: dict[str, ApiUser], device_class: Any, role: str
):
    body = _draft_body(device_class, ("security", 1, [_kid(signers["security"])]))
    refused = signers[role].client.post(URL, body, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "api.forbidden"
    assert not DeviceTrustPolicy.objects.exists()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (
            lambda b, k: b["roles"].update({"security": {"threshold": 1, "kids": ["ab" * 32]}}),
            "trust_policy.invalid",
        ),
        (lambda b, k: b.update(expires_at="2000-01-01T00:00:00Z"), "trust_policy.invalid"),
        (lambda b, k: b["roles"]["security"].update(threshold=2), "trust_policy.invalid"),
        (lambda b, k: b["roles"].update({"root": {"threshold": 1, "kids": [k]}}), "invalid"),
        (lambda b, k: b["roles"]["security"].update(kids=["not-hex"]), "invalid"),
        (lambda b, k: b["roles"]["security"].update(threshold=0), "invalid"),
        (lambda b, k: b.update(device_class=2**62), "invalid"),
    ],
    ids=[
        "unknown_kid",
        "past_expiry",
        "threshold_above_keys",
        "unknown_role",
        "bad_kid",
        "zero_threshold",
        "unknown_class",
    ],
)
def test_a_malformed_draft_is_refused_and_nothing_is_drafted(
    signers: dict[str, ApiUser], device_class: Any, change: Any, code: str
):
    security = signers["security"]
    body = _draft_body(device_class, ("security", 1, [_kid(security)]))
    change(body, _kid(security))
    refused = security.client.post(URL, body, format="json")
    assert refused.status_code == 400, refused.json()
    assert refused.json()["code"] == code
    assert not DeviceTrustPolicy.objects.exists()


def test_a_signature_forged_for_another_policy_is_refused_and_not_stored(
    signers: dict[str, ApiUser], device_class: Any
):
    security = signers["security"]
    first = security.client.post(
        URL, _draft_body(device_class, ("security", 1, [_kid(security)])), format="json"
    ).json()
    other = security.client.post(
        URL, _draft_body(device_class, ("security", 1, [_kid(security)]), days=60), format="json"
    ).json()
    forged = security.client.post(
        f"{URL}{other['id']}/signatures/",
        {"signature": base64.b64encode(_sign(security, first["id"])).decode()},
        format="json",
    )
    assert forged.status_code == 400 and forged.json()["code"] == "trust_policy.bad_signature"
    not_base64 = security.client.post(
        f"{URL}{other['id']}/signatures/", {"signature": "%%%"}, format="json"
    )
    assert not_base64.status_code == 400 and not_base64.json()["code"] == "invalid"
    assert not TrustPolicySignature.objects.exists()


def test_a_signature_with_someone_elses_key_is_refused(
    signers: dict[str, ApiUser], device_class: Any
):
    security, qa = signers["security"], signers["qa"]
    draft = security.client.post(
        URL, _draft_body(device_class, ("security", 1, [_kid(security)])), format="json"
    ).json()
    stolen = qa.client.post(
        f"{URL}{draft['id']}/signatures/",
        {"signature": base64.b64encode(_sign(security, draft["id"])).decode()},
        format="json",
    )
    assert stolen.status_code == 400 and stolen.json()["code"] == "trust_policy.bad_signature"
    assert not TrustPolicySignature.objects.exists()


def test_release_of_a_draft_short_of_its_threshold_says_why_and_changes_nothing(
    signers: dict[str, ApiUser], device_class: Any
):
    security, admin = signers["security"], signers["admin"]
    draft = security.client.post(
        URL,
        _draft_body(device_class, ("security", 2, [_kid(security), _kid(admin)])),
        format="json",
    ).json()
    one = security.client.post(
        f"{URL}{draft['id']}/signatures/",
        {"signature": base64.b64encode(_sign(security, draft["id"])).decode()},
        format="json",
    )
    assert one.status_code == 201 and one.json()["released"] is False
    assert "device.trust_policy_signature" in one.json()["policy"]["refusal"]
    events = AuditEvent.objects.count()
    early = security.client.post(f"{URL}{draft['id']}/release/")
    assert early.status_code == 409 and early.json()["code"] == "trust_policy.not_accepted"
    assert "2 of its security keys" in early.json()["message"]
    assert AuditEvent.objects.count() == events
    assert DeviceTrustPolicy.objects.get(pk=draft["id"]).status == "draft"
    assert signers["qa"].client.post(f"{URL}{draft['id']}/release/").status_code == 403

    two = admin.client.post(
        f"{URL}{draft['id']}/signatures/",
        {"signature": base64.b64encode(_sign(admin, draft["id"])).decode()},
        format="json",
    )
    assert two.json()["released"] is True
    again = security.client.post(f"{URL}{draft['id']}/release/")
    assert again.status_code == 200 and again.json()["status"] == "released"
    assert AuditEvent.objects.filter(action="trust_policy.released").count() == 1
    late = security.client.post(
        f"{URL}{draft['id']}/signatures/",
        {"signature": base64.b64encode(_sign(security, draft["id"])).decode()},
        format="json",
    )
    assert late.status_code == 409 and late.json()["code"] == "trust_policy.state"


def test_an_unknown_policy_id_is_404(signers: dict[str, ApiUser]):
    for path in ("99999/", "x1/", f"{2**64}/", "99999/body/"):
        assert signers["auditor"].client.get(f"{URL}{path}").status_code == 404


def _released_policy(security: ApiUser, device_class: Any) -> DeviceTrustPolicy:
    draft = services.trust_policy_draft(
        device_class=device_class,
        roles={"security": (1, [_kid(security)])},
        expires_at=timezone.now() + dt.timedelta(days=30),
        actor=security.user,
    )
    services.trust_policy_sign(
        policy=draft,
        signer=security.user,
        cose=device_trust.sign_policy(draft.body_bytes, security.key),
    )
    draft.refresh_from_db()
    return draft


def _devices(device_class: Any, count: int) -> list[Device]:
    return [
        Device.objects.create(
            endpoint=f"{device_class.name}-{i:02d}",
            vendor=device_class.vendor,
            device_class=device_class,
            firmware_version="1.0.0",
        )
        for i in range(count)
    ]


def test_holdings_of_an_image_profile_class_are_server_only(
    signers: dict[str, ApiUser], device_class: Any
):
    _devices(device_class, 3)
    data = (
        signers["auditor"]
        .client.get(f"/api/device-classes/{device_class.pk}/trust-holdings/")
        .json()
    )
    assert data["device_side_thresholds"] is False and data["delivery"] == "image"
    assert data["statement"].startswith("server only: image profile (MCUboot)")
    assert (data["devices"], data["protected_on_device"], data["server_only"]) == (3, 0, 3)
    assert {h["protection"] for h in data["holders"]} == {"server_only"}


def test_holdings_of_a_suit_class_tell_device_side_from_server_only_devices(
    signers: dict[str, ApiUser], vendor: Any, catalog_admin: Any, django_assert_max_num_queries: Any
):
    suit_class = services.device_class_create(
        vendor=vendor, name="valve-s", delivery=DeliveryProfile.SUIT, actor=catalog_admin
    )
    devices = _devices(suit_class, 5)
    url = f"/api/device-classes/{suit_class.pk}/trust-holdings/"
    before = signers["auditor"].client.get(url).json()
    assert before["device_side_thresholds"] is False and before["current_version"] is None
    assert before["statement"].startswith("server only: no released device trust policy")

    policy = _released_policy(signers["security"], suit_class)
    Device.objects.filter(pk__in=[d.pk for d in devices[:2]]).update(
        trust_policy_version=1, trust_policy_sha256=policy.sha256
    )
    signers["auditor"].client.get(url)  # the token and roles are read once per client
    # A fixed number of queries whatever the class's size: auth, roles, the class, its current
    # policy, one GROUP BY, one page of devices.
    with django_assert_max_num_queries(7):
        page = signers["auditor"].client.get(url, {"limit": 2, "offset": 1}).json()
    assert page["device_side_thresholds"] is True
    assert page["statement"].startswith("device-side thresholds: device trust policy v1")
    assert (page["current_version"], page["current_sha256"]) == (1, policy.sha256)
    assert (page["devices"], page["protected_on_device"], page["server_only"]) == (5, 2, 3)
    assert page["by_version"] == [{"version": None, "devices": 3}, {"version": 1, "devices": 2}]
    assert [(h["endpoint"], h["protection"]) for h in page["holders"]] == [
        ("valve-s-01", "device"),
        ("valve-s-02", "server_only"),
    ]
    assert page["next_offset"] == 3
    bad = signers["auditor"].client.get(url, {"limit": 0})
    assert bad.status_code == 400


def test_a_rollouts_report_verdict_is_its_own_field(world: dict[str, Any], people: Any):
    from campaigns.models import Rollout

    applied = people["fleet_operator"].client.post(
        "/api/campaigns/", {"document": MINIMAL_SPEC}, format="json"
    )
    assert applied.status_code == 201, applied.json()
    rollouts = people["auditor"].client.get("/api/rollouts/").json()["results"]
    assert rollouts and all(r["report_verdict"] == "" for r in rollouts)
    Rollout.objects.filter(pk=rollouts[0]["id"]).update(report_verdict="report_forged")
    shown = people["auditor"].client.get(f"/api/rollouts/{rollouts[0]['id']}/").json()
    assert shown["report_verdict"] == "report_forged"
    endpoint = shown["device"]
    device = people["auditor"].client.get(f"/api/devices/{endpoint}/").json()
    assert [r["report_verdict"] for r in device["rollouts"] if r["id"] == shown["id"]] == [
        "report_forged"
    ]
    assert "trust_policy_version" in device
