"""Payload encryption keys through the HTTP API: a class's key-encryption key is generated,
imported from a key file's content or rotated by a security officer or an admin; answers, errors
and the audit log carry kids and facts only, never the key; a rotation of a key that is no
longer active changes nothing. MCUboot image keys (public) are set and listed the same way."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.models import AuditEvent
from manifests import payload_keys
from manifests.models import ImageEncryptionKey, PayloadEncryptionKey, PayloadKeyStatus
from manifests.services import payload_key_secret

pytestmark = pytest.mark.django_db

KEY_FIELDS = {
    "kid",
    "device_class",
    "algorithm",
    "size",
    "status",
    "created_by",
    "created_at",
    "retired_at",
}


def _stored_kek(kid: str) -> bytes:
    row = PayloadEncryptionKey.objects.get(kid=kid)
    return payload_keys.decrypt_kek(bytes(row.key_encrypted), secret=payload_key_secret())


def _assert_nowhere(key: bytes, *texts: str) -> None:
    """Neither the key's hex nor its base64 appears in any of ``texts``."""
    forms = (key.hex(), key.hex().upper(), base64.b64encode(key).decode())
    for text in texts:
        assert not any(form in text for form in forms)


def _audit_text() -> str:
    return json.dumps(list(AuditEvent.objects.values_list("details", flat=True)))


def test_security_officer_generates_a_class_key_and_sees_only_its_kid(
    people: dict[str, Any], device_class: Any
) -> None:
    response = people["security"].client.post(
        "/api/payload-keys/", {"device_class": device_class.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == KEY_FIELDS
    assert (body["device_class"], body["algorithm"], body["size"], body["status"]) == (
        device_class.pk,
        "A128KW",
        16,
        "active",
    )
    kek = _stored_kek(body["kid"])
    listed = people["auditor"].client.get(f"/api/payload-keys/?device_class={device_class.pk}")
    detail = people["qa"].client.get(f"/api/payload-keys/{body['kid']}/")
    assert [k["kid"] for k in listed.json()["results"]] == [body["kid"]]
    assert detail.json() == body
    _assert_nowhere(kek, response.content.decode(), listed.content.decode(), _audit_text())


@pytest.mark.parametrize(
    ("content", "size"),
    [
        pytest.param(lambda key: key, 16, id="raw-16"),
        pytest.param(lambda key: key.hex().encode() + b"\n", 32, id="hex-32"),
    ],
)
def test_key_imported_from_a_key_files_content_is_stored_and_never_shown(
    people: dict[str, Any], device_class: Any, content: Any, size: int
) -> None:
    key = bytes(range(7, 7 + size))
    response = people["admin"].client.post(
        "/api/payload-keys/",
        {"device_class": device_class.pk, "key_file": base64.b64encode(content(key)).decode()},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["size"] == size
    assert _stored_kek(response.json()["kid"]) == key
    _assert_nowhere(key, response.content.decode(), _audit_text())


@pytest.mark.parametrize(
    ("key_file", "path"),
    [
        pytest.param(base64.b64encode(bytes(range(20))).decode(), None, id="wrong-length"),
        pytest.param("not base64!", "key_file", id="not-base64"),
        pytest.param(base64.b64encode(b"ab" * 20).decode(), None, id="hex-of-wrong-length"),
    ],
)
def test_malformed_key_file_is_refused_without_echoing_it_and_changes_nothing(
    people: dict[str, Any], device_class: Any, key_file: str, path: str | None
) -> None:
    response = people["security"].client.post(
        "/api/payload-keys/",
        {"device_class": device_class.pk, "key_file": key_file},
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    if path is None:
        assert body["code"] == "manifest.payload_encryption"
    else:
        assert [e["path"] for e in body["errors"]] == [path]
    assert key_file not in response.content.decode()
    assert not PayloadEncryptionKey.objects.exists()
    assert not AuditEvent.objects.filter(action="payload_key.rotate").exists()


def test_rotation_retires_the_active_key_and_a_stale_rotation_changes_nothing(
    people: dict[str, Any], device_class: Any
) -> None:
    client = people["security"].client
    first = client.post("/api/payload-keys/", {"device_class": device_class.pk}, format="json")
    old = first.json()["kid"]
    rotated = client.post(f"/api/payload-keys/{old}/rotate/", {}, format="json")
    assert rotated.status_code == 201, rotated.content
    new = rotated.json()["kid"]
    assert new != old and rotated.json()["status"] == "active"
    assert PayloadEncryptionKey.objects.get(kid=old).status == PayloadKeyStatus.RETIRED
    # A second officer rotating the key they saw, now retired: 409, no third key.
    stale = people["admin"].client.post(f"/api/payload-keys/{old}/rotate/", {}, format="json")
    assert stale.status_code == 409
    assert stale.json()["code"] == "manifest.payload_key_state"
    assert PayloadEncryptionKey.objects.count() == 2
    active = client.get("/api/payload-keys/?status=active").json()["results"]
    assert [k["kid"] for k in active] == [new]


@pytest.mark.parametrize("role", ["author", "qa", "fleet_operator", "auditor"])
def test_only_security_officers_and_admins_create_or_rotate_class_keys(
    people: dict[str, Any], device_class: Any, role: str
) -> None:
    response = people[role].client.post(
        "/api/payload-keys/", {"device_class": device_class.pk}, format="json"
    )
    assert response.status_code == 403
    assert not PayloadEncryptionKey.objects.exists()


def _public_pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_image_key_is_set_listed_and_replaced(people: dict[str, Any], device_class: Any) -> None:
    client = people["security"].client
    first_pem = _public_pem(ec.generate_private_key(ec.SECP256R1()))
    first = client.post(
        "/api/image-keys/",
        {"device_class": device_class.pk, "public_key_pem": first_pem},
        format="json",
    )
    assert first.status_code == 201, first.content
    assert (first.json()["kind"], first.json()["public_key_pem"]) == (
        "ecies-p256",
        first_pem.strip(),
    )
    second = client.post(
        "/api/image-keys/",
        {
            "device_class": device_class.pk,
            "public_key_pem": _public_pem(ec.generate_private_key(ec.SECP256R1())),
        },
        format="json",
    )
    assert second.status_code == 201
    listed = people["auditor"].client.get(f"/api/image-keys/?device_class={device_class.pk}")
    assert {k["kid"]: k["status"] for k in listed.json()["results"]} == {
        first.json()["kid"]: "retired",
        second.json()["kid"]: "active",
    }


def test_private_key_given_as_an_image_key_is_refused_and_not_echoed(
    people: dict[str, Any], device_class: Any
) -> None:
    private_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    response = people["admin"].client.post(
        "/api/image-keys/",
        {"device_class": device_class.pk, "public_key_pem": private_pem},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "manifest.payload_encryption"
    body = private_pem.splitlines()[1]
    assert body not in response.content.decode() and body not in _audit_text()
    assert not ImageEncryptionKey.objects.exists()
