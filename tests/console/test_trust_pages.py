"""Console pages for device trust policies: per class the statement (device-side thresholds or
server only) and which devices hold which version; security drafts, signs offline and uploads
the COSE_Sign1, and releases; others are refused and nothing changes. The rollout's report
verdict shows on the campaign and device pages."""

from __future__ import annotations

from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import AuditEvent
from campaigns.models import Device, Rollout
from manifests import device_trust, suit
from manifests import services as release_services
from manifests.models import DeviceTrustPolicy, TrustPolicySignature
from tests.console.world import make_devices


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _kid(world: Any, persona: str) -> str:
    return suit.kid_for_public_key(world.keys[persona]).hex()


def _draft(login: Any, world: Any, roles: str) -> Any:
    return login("sec").post(
        f"/device-classes/{world.thermo.pk}/trust/draft/",
        {"roles": roles, "expires_at": "2099-01-01T00:00Z", "reason": "first"},
        follow=True,
    )


def _upload(client: Any, policy: DeviceTrustPolicy, key: Any) -> Any:
    block = device_trust.sign_policy(policy.body_bytes, key)
    return client.post(
        f"/trust-policies/{policy.pk}/sign/",
        {"signature": SimpleUploadedFile("sig.cose", block)},
        follow=True,
    )


def test_security_drafts_uploads_a_signature_and_the_policy_is_released(login: Any, world: Any):
    make_devices(world, 3)
    page = login("sec").get(f"/device-classes/{world.thermo.pk}/trust/").content.decode()
    assert 'id="trust-draft-form"' in page and "Server only" in page
    drafted = _draft(login, world, f"security=1:{_kid(world, 'sec')}\nqa=1:{_kid(world, 'qa')}")
    assert drafted.status_code == 200
    policy = DeviceTrustPolicy.objects.get(device_class=world.thermo)
    assert drafted.redirect_chain[-1][0] == f"/trust-policies/{policy.pk}/"
    text = drafted.content.decode()
    assert 'id="policy-refusal"' in text and "trust_policy.unsigned" in text
    assert '<tr data-role="qa"><td>qa</td><td>1 of 1</td>' in text
    body = login("auditor").get(f"/trust-policies/{policy.pk}/body/")
    assert body.status_code == 200 and body.content == policy.body_bytes

    signed = _upload(login("sec"), policy, world.keys["sec"])
    assert any("is released" in m for m in _messages(signed)), _messages(signed)
    policy.refresh_from_db()
    assert policy.status == "released"
    document = login("auditor").get(f"/trust-policies/{policy.pk}/document/")
    assert document.content == bytes(policy.document)
    assert AuditEvent.objects.filter(action="trust_policy.released").count() == 1

    # One device confirmed holding v1: the class page tells it from the server-only rest.
    Device.objects.filter(endpoint="dev-00000").update(
        trust_policy_version=1, trust_policy_sha256=policy.sha256
    )
    page = login("auditor").get(f"/device-classes/{world.thermo.pk}/trust/").content.decode()
    assert "Device-side thresholds" in page and 'id="trust-draft-form"' not in page
    assert '<dd id="protected-on-device">1</dd>' in page
    assert '<dd id="server-only">2</dd>' in page
    assert "none known: 2; v1: 1" in page
    assert '<tr data-version="1">' in page
    device = login("auditor").get("/devices/dev-00000/").content.decode()
    assert '<dd id="trust-policy-held">v1' in device


def test_release_button_of_a_draft_short_of_its_threshold_says_why(login: Any, world: Any):
    kids = f"{_kid(world, 'sec')},{_kid(world, 'qa')}"
    _draft(login, world, f"security=2:{kids}")
    policy = DeviceTrustPolicy.objects.get(device_class=world.thermo)
    _upload(login("sec"), policy, world.keys["sec"])
    response = login("sec").post(f"/trust-policies/{policy.pk}/release/", follow=True)
    assert any("trust_policy.not_accepted" in m for m in _messages(response))
    assert DeviceTrustPolicy.objects.get(pk=policy.pk).status == "draft"
    page = login("sec").get(f"/trust-policies/{policy.pk}/").content.decode()
    assert 'id="policy-release-button"' in page and 'id="policy-sign-form"' in page


def test_a_malformed_draft_form_is_a_message_and_drafts_nothing(login: Any, world: Any):
    for roles in ("security 1 abc", f"security=1:{'ab' * 32}", ""):
        response = _draft(login, world, roles)
        assert any("[trust_policy." in m for m in _messages(response)), (roles, _messages(response))
    response = login("sec").post(
        f"/device-classes/{world.thermo.pk}/trust/draft/",
        {"roles": f"security=1:{_kid(world, 'sec')}", "expires_at": "soon"},
        follow=True,
    )
    assert any("ISO 8601" in m for m in _messages(response))
    assert not DeviceTrustPolicy.objects.exists()


def test_operator_and_auditor_cannot_draft_sign_or_release(login: Any, world: Any):
    release_services.trust_policy_draft(
        device_class=world.thermo,
        roles={"security": (1, [_kid(world, "sec")])},
        expires_at=world.thermo.created_at.replace(year=2099),
        actor=world.users["sec"],
    )
    policy = DeviceTrustPolicy.objects.get()
    ops = login("ops")
    assert (
        ops.post(
            f"/device-classes/{world.thermo.pk}/trust/draft/",
            {"roles": f"security=1:{_kid(world, 'sec')}", "expires_at": "2099-01-01T00:00Z"},
        ).status_code
        == 403
    )
    assert ops.post(f"/trust-policies/{policy.pk}/release/").status_code == 403
    auditor = login("auditor")
    block = device_trust.sign_policy(policy.body_bytes, world.keys["sec"])
    refused = auditor.post(
        f"/trust-policies/{policy.pk}/sign/", {"signature": SimpleUploadedFile("s", block)}
    )
    assert refused.status_code == 403
    # The operator holds a key, but not one that signs for the security holder.
    stolen = ops.post(
        f"/trust-policies/{policy.pk}/sign/",
        {"signature": SimpleUploadedFile("s", block)},
        follow=True,
    )
    assert any("trust_policy.bad_signature" in m for m in _messages(stolen))
    assert DeviceTrustPolicy.objects.count() == 1 and not TrustPolicySignature.objects.exists()


def test_image_profile_class_is_server_only_on_its_trust_page(login: Any, world: Any):
    world.thermo_v1.delivery = "image"
    world.thermo_v1.save(update_fields=["delivery"])
    page = login("auditor").get(f"/device-classes/{world.thermo_v1.pk}/trust/").content.decode()
    assert "Server only" in page and "image profile (MCUboot)" in page
    classes = login("auditor").get("/device-classes/").content.decode()
    assert f"/device-classes/{world.thermo_v1.pk}/trust/" in classes


def test_report_verdict_shows_on_the_campaign_and_device_pages(
    login: Any, world: Any, campaign: Any
):
    rollout = Rollout.objects.filter(campaign=campaign).select_related("device").first()
    assert rollout is not None
    Rollout.objects.filter(pk=rollout.pk).update(report_verdict="report_replayed")
    endpoint = rollout.device.endpoint
    table = (
        login("auditor")
        .get(f"/campaigns/{campaign.name}/devices/", {"q": endpoint})
        .content.decode()
    )
    assert '<td data-role="report-verdict">report_replayed</td>' in table
    device = login("auditor").get(f"/devices/{endpoint}/").content.decode()
    assert '<td data-role="report-verdict">report_replayed</td>' in device
