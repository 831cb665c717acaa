"""The release side through the HTTP API: catalog, upload, import, approve, revoke, keys,
policies, roles, delegations; refusals come back as JSON with the services' codes."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from manifests import suit
from manifests.models import Release, ReleaseStatus, RoleAssignment, SigningKey, Vendor
from tests.api.conftest import image_bytes, make_envelope, register_key

pytestmark = pytest.mark.django_db


def test_anonymous_gets_401_json_with_a_code(anon: Any) -> None:
    response = anon.get("/api/releases/")
    assert response.status_code == 401
    assert response.json()["code"] == "auth.not_authenticated"
    assert response["WWW-Authenticate"].startswith("Token")


def test_bad_token_is_401(anon: Any) -> None:
    anon.credentials(HTTP_AUTHORIZATION="Token nope")
    response = anon.get("/api/releases/")
    assert response.status_code == 401 and response.json()["code"] == "auth.failed"


def test_session_auth_works_for_the_browser(people: dict[str, Any]) -> None:
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(people["qa"].user)
    assert client.get("/api/me/").json() == {"username": "qa", "roles": ["qa"]}
    # Writes from a session need the CSRF token, as any Django form does.
    assert client.post("/api/keys/", {}, format="json").status_code == 403


def test_unknown_object_is_404_json(people: dict[str, Any]) -> None:
    response = people["qa"].client.get("/api/releases/nope/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found" and response.json()["message"]


def test_validation_errors_list_path_and_reason(people: dict[str, Any]) -> None:
    response = people["admin"].client.post("/api/vendors/", {"name": "x"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert {"path": "domain", "reason": "This field is required.", "code": "required"} in body[
        "errors"
    ]


def test_catalog_create_list_and_duplicate_conflict(people: dict[str, Any]) -> None:
    # Vendors and classes are an admin's to register; an author is refused before any write.
    refused = people["author"].client.post(
        "/api/vendors/", {"name": "Acme", "domain": "acme.example"}
    )
    assert refused.status_code == 403 and refused.json()["code"] == "api.forbidden"
    assert not Vendor.objects.exists()
    client = people["admin"].client
    response = client.post("/api/vendors/", {"name": "Acme", "domain": "Acme.Example."})
    assert response.status_code == 201, response.json()
    vendor = response.json()
    assert vendor["domain"] == "acme.example" and vendor["uuid"]
    again = client.post("/api/vendors/", {"name": "Acme", "domain": "acme.example"})
    assert again.status_code == 409 and again.json()["code"] == "manifest.vendor_exists"
    response = client.post(
        "/api/device-classes/", {"vendor": vendor["id"], "name": "thermo-v2"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["component_id"] == ["00"]
    listing = client.get("/api/device-classes/?vendor_domain=acme.example").json()
    assert listing["count"] == 1 and listing["results"][0]["name"] == "thermo-v2"
    assert AuditEvent.objects.filter(action="vendor.create", actor="admin").exists()


def test_release_lifecycle_over_http(
    people: dict[str, Any], device_class: Any, tmp_path: Path
) -> None:
    earlier = timezone.now() - dt.timedelta(hours=1)
    for role in ("author", "qa", "security"):
        register_key(people[role], at=earlier)
    author, qa, sec = people["author"], people["qa"], people["security"]

    # image: multipart upload, parsed and stored
    data = image_bytes(tmp_path, "2.1.0")
    response = author.client.post(
        "/api/images/", {"file": _upload("app.bin", data)}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    image = response.json()
    assert image["version"] == "2.1.0" and image["kind"] == "mcuboot"

    # manifest: raw envelope bytes
    from manifests.models import FirmwareImage

    envelope = make_envelope(
        device_class,
        author,
        FirmwareImage.objects.get(sha256=image["sha256"]),
        sequence=7,
        version="2.1.0",
    )
    response = author.client.generic(
        "POST", "/api/manifests/", envelope, content_type="application/octet-stream"
    )
    assert response.status_code == 201, response.json()
    digest = response.json()["manifest_digest"]
    assert response.json()["decoded"]["sequence_number"] == 7
    detail = qa.client.get(f"/api/manifests/{digest}/").json()
    assert detail["decoded"]["version"] == "2.1.0"
    raw = qa.client.get(f"/api/manifests/{digest}/envelope/")
    assert raw.content == envelope  # the exact bytes, never re-serialised
    dup = author.client.generic(
        "POST", "/api/manifests/", envelope, content_type="application/octet-stream"
    )
    assert dup.status_code == 409 and dup.json()["code"] == "manifest.duplicate"

    # release: create + submit
    response = author.client.post(
        "/api/releases/",
        {"manifest": digest[:12], "name": "thermo-2.1.0", "submit": True},
        format="json",
    )
    assert response.status_code == 201, response.json()
    tally = response.json()["approval"]
    assert response.json()["status"] == "pending"
    assert tally["tally"]["author"]["missing"] == 0
    assert tally["tally"]["qa"]["missing"] == 1 and tally["tally"]["security"]["missing"] == 1

    # approvals: raw COSE as octet-stream (role in the query) and base64 in JSON
    manifest_bytes = envelope
    cose = suit.sign_manifest_digest(manifest_bytes, key=qa.key)
    response = qa.client.generic(
        "POST",
        "/api/releases/thermo-2.1.0/approvals/?role=qa",
        cose,
        content_type="application/octet-stream",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["approved"] is False
    credited = response.json()["release"]["approval"]["tally"]["qa"]["credited"][0]
    assert credited["person"] == "qa"
    assert credited["signatures"][0]["kid"] == SigningKey.objects.get(owner=qa.user).kid

    # the author cannot approve in another role
    own = suit.sign_manifest_digest(manifest_bytes, key=author.key)
    response = author.client.post(
        "/api/releases/thermo-2.1.0/approvals/",
        {"role": "security", "signature": base64.b64encode(own).decode()},
        format="json",
    )
    assert response.status_code == 403 and response.json()["code"] == "approval.self_approval"

    # a forged signature (security's key id, qa's signature bytes) is refused
    response = sec.client.post(
        "/api/releases/thermo-2.1.0/approvals/",
        {"role": "security", "signature": base64.b64encode(b"\x84garbage").decode()},
        format="json",
    )
    assert response.status_code == 400 and response.json()["code"] == "approval.bad_signature"

    # the release envelope is refused until approved
    response = qa.client.get("/api/releases/thermo-2.1.0/envelope/")
    assert response.status_code == 409 and response.json()["code"] == "approval.release_state"

    cose = suit.sign_manifest_digest(manifest_bytes, key=sec.key)
    response = sec.client.post(
        "/api/releases/thermo-2.1.0/approvals/",
        {"role": "security", "signature": base64.b64encode(cose).decode()},
        format="json",
    )
    assert response.status_code == 201 and response.json()["approved"] is True
    again = sec.client.post(
        "/api/releases/thermo-2.1.0/approvals/",
        {"role": "security", "signature": base64.b64encode(cose).decode()},
        format="json",
    )
    assert again.status_code == 409 and again.json()["code"] == "approval.duplicate"
    detail = people["auditor"].client.get("/api/releases/thermo-2.1.0/").json()
    assert detail["status"] == "approved" and detail["approval"]["approved_now"] is True
    assert detail["approval"]["summary"].startswith("APPROVED")

    released = people["auditor"].client.get("/api/releases/thermo-2.1.0/envelope/")
    assert released.status_code == 200
    assert len(suit.decode_envelope(released.content).signatures) == 3

    listing = people["auditor"].client.get("/api/releases/?status=approved").json()
    assert [r["name"] for r in listing["results"]] == ["thermo-2.1.0"]

    # revoke: security only; a reason is required
    response = sec.client.post("/api/releases/thermo-2.1.0/revoke/", {}, format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["path"] == "reason"
    response = sec.client.post(
        "/api/releases/thermo-2.1.0/revoke/", {"reason": "boot loop"}, format="json"
    )
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    assert Release.objects.get(name="thermo-2.1.0").status == ReleaseStatus.REVOKED
    response = sec.client.post(
        "/api/releases/thermo-2.1.0/revoke/", {"reason": "again"}, format="json"
    )
    assert response.status_code == 409 and response.json()["code"] == "approval.release_state"


def test_invalid_envelope_reports_the_codec_code(people: dict[str, Any]) -> None:
    response = people["author"].client.generic(
        "POST", "/api/manifests/", b"\xd8\x6b\xff", content_type="application/octet-stream"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "manifest.invalid" and body["suit_code"].startswith("suit.")
    hex_garbage = people["author"].client.generic(
        "POST", "/api/manifests/", b"zz", content_type="application/octet-stream"
    )
    assert hex_garbage.status_code == 400 and hex_garbage.json()["code"] == "suit.input"


def test_keys_register_rotate_revoke(people: dict[str, Any]) -> None:
    qa = people["qa"]
    response = qa.client.post(
        "/api/keys/", {"public_key_pem": qa.public_pem, "name": "laptop"}, format="json"
    )
    assert response.status_code == 201, response.json()
    kid = response.json()["kid"]
    assert response.json()["owner"] == "qa"
    # registering for someone else needs admin
    other = suit.public_key_pem(suit.generate_private_key("Ed25519").public_key()).decode()
    response = qa.client.post(
        "/api/keys/", {"public_key_pem": other, "owner": "sec"}, format="json"
    )
    assert response.status_code == 403 and response.json()["code"] == "approval.permission_denied"
    bad = qa.client.post("/api/keys/", {"public_key_pem": "not a key"}, format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "manifest.invalid_key"

    new_pem = suit.public_key_pem(suit.generate_private_key("ES256").public_key()).decode()
    response = qa.client.post(
        f"/api/keys/{kid}/rotate/", {"new_public_key_pem": new_pem, "overlap_seconds": 60}
    )
    assert response.status_code == 200, response.json()
    new_kid = response.json()["kid"]
    assert qa.client.get(f"/api/keys/{kid}/").json()["status"] == "rotated"
    # someone else's key: only security/admin may revoke it
    response = people["author"].client.post(f"/api/keys/{new_kid}/revoke/", {"reason": "x"})
    assert response.status_code == 403
    response = people["security"].client.post(
        f"/api/keys/{new_kid}/revoke/", {"reason": "laptop stolen"}
    )
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    listing = people["auditor"].client.get("/api/keys/?owner=qa&status=revoked").json()
    assert [k["kid"] for k in listing["results"]] == [new_kid]


def test_policy_set_and_effective(people: dict[str, Any], device_class: Any) -> None:
    admin = people["admin"]
    response = admin.client.get(f"/api/policies/effective/?device_class={device_class.pk}")
    assert response.json()["source"] == "built-in"
    response = admin.client.post(
        "/api/policies/",
        {"device_class": device_class.pk, "kind": "normal", "rules": {"author": 1, "qa": 2}},
        format="json",
    )
    assert response.status_code == 200, response.json()
    effective = admin.client.get(
        f"/api/policies/effective/?device_class={device_class.pk}&kind=normal"
    ).json()
    assert effective == {
        "device_class": device_class.pk,
        "kind": "normal",
        "rules": {"author": 1, "qa": 2},
        "source": "device class",
    }
    bad = admin.client.post(
        "/api/policies/", {"kind": "normal", "rules": {"wizard": 1}}, format="json"
    )
    assert bad.status_code == 400 and bad.json()["code"] == "approval.bad_policy"


def test_roles_grant_and_revoke(people: dict[str, Any]) -> None:
    admin = people["admin"]
    response = admin.client.post("/api/roles/", {"user": "outsider", "role": "qa"}, format="json")
    assert response.status_code == 201, response.json()
    assignment = response.json()["id"]
    assert people["none"].client.get("/api/me/").json()["roles"] == ["qa"]
    assert admin.client.delete(f"/api/roles/{assignment}/").status_code == 204
    assert RoleAssignment.objects.get(pk=assignment).revoked_at is not None
    again = admin.client.delete(f"/api/roles/{assignment}/")
    assert again.status_code == 403 and again.json()["code"] == "approval.permission_denied"
    active = admin.client.get("/api/roles/?user=outsider&active=true").json()
    assert active["count"] == 0


def test_delegation_create_and_revoke(people: dict[str, Any], device_class: Any) -> None:
    sec = people["security"]
    expires = (timezone.now() + dt.timedelta(days=3)).isoformat()
    response = sec.client.post(
        "/api/delegations/",
        {
            "role": "security",
            "delegatees": ["qa", "ops"],
            "threshold": 2,
            "expires_at": expires,
            "scope_device_classes": [device_class.pk],
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    delegation = response.json()
    assert delegation["delegator"] == "sec"
    assert sorted(delegation["delegatees"]) == ["ops", "qa"]
    # qa cannot delegate the security role they do not hold
    response = people["qa"].client.post(
        "/api/delegations/",
        {"role": "security", "delegatees": ["author"], "expires_at": expires},
        format="json",
    )
    assert response.status_code == 403
    response = sec.client.post(
        f"/api/delegations/{delegation['id']}/revoke/", {"reason": "done"}, format="json"
    )
    assert response.status_code == 200 and response.json()["revoked_at"]


def _upload(name: str, data: bytes) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="application/octet-stream")
