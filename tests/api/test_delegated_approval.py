"""A delegatee who holds no role approves through the API: the permission matrix admits a role
held through a live delegation on the approve endpoint (as ``release_approve`` accepts one), and
refuses, with ``api.forbidden``, a delegatee whose delegation was revoked or has expired and a
roleless user nobody delegated to. Behind the matrix the service still decides per release."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from manifests import services, suit
from manifests.models import Approval, Delegation, Release, ReleaseStatus
from tests.api.conftest import ApiUser, client_for, image_bytes, make_envelope, register_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending(people: dict[str, ApiUser], device_class: Any, tmp_path: Path) -> Release:
    """thermo-3.0.0, submitted: the author's signature counts; qa and security are missing."""
    earlier = timezone.now() - dt.timedelta(hours=1)
    for role in ("author", "qa", "security"):
        register_key(people[role], at=earlier)
    author = people["author"]
    image = services.image_upload(data=image_bytes(tmp_path, "3.0.0"), actor=author.user)
    envelope = make_envelope(device_class, author, image, sequence=9, version="3.0.0")
    manifest = services.manifest_import(envelope=envelope, created_by=author.user)
    release = services.release_create(manifest=manifest, name="thermo-3.0.0", actor=author.user)
    services.release_submit(release=release, actor=author.user)
    return release


def _roleless(django_user_model: Any, username: str) -> ApiUser:
    """A user without any role, with a signing key an admin registered for them."""
    user = django_user_model.objects.create_user(username=username, password=None)
    person = ApiUser(user=user, client=client_for(user), key=suit.generate_private_key("ES256"))
    register_key(person, at=timezone.now() - dt.timedelta(hours=1))
    return person


def _delegate(people: dict[str, ApiUser], role: str, to: ApiUser, **kwargs: Any) -> Delegation:
    kwargs.setdefault("expires_at", timezone.now() + dt.timedelta(days=1))
    return services.delegation_create(
        delegator=people[role].user, role=role, delegatees=[to.user], threshold=1, **kwargs
    )


def _approve(person: ApiUser, release: Release, role: str) -> Any:
    block = suit.sign_manifest_digest(bytes(release.manifest.envelope_bytes), key=person.key)
    return person.client.post(
        f"/api/releases/{release.name}/approvals/",
        {"role": role, "signature": base64.b64encode(block).decode()},
        format="json",
    )


def test_a_roleless_delegatee_approves_through_the_api(
    people: dict[str, ApiUser], pending: Release, django_user_model: Any
) -> None:
    dana = _roleless(django_user_model, "dana")
    delegation = _delegate(people, "security", dana)
    response = _approve(dana, pending, "security")
    assert response.status_code == 201, response.json()
    assert response.json()["approved"] is False  # qa is still missing
    security = response.json()["release"]["approval"]["tally"]["security"]
    # The delegation counts once, for its delegator; the signature is dana's.
    assert security["credited"] == [
        {
            "person": "sec",
            "via": f"delegation:{delegation.pk}",
            "signatures": [
                {
                    "signer": "dana",
                    "kid": dana.user.signing_keys.get().kid,
                    "at": security["credited"][0]["signatures"][0]["at"],
                }
            ],
        }
    ]
    assert _approve(people["qa"], pending, "qa").json()["approved"] is True
    assert Release.objects.get(pk=pending.pk).status == ReleaseStatus.APPROVED


def test_the_delegatee_of_a_revoked_delegation_is_refused_403(
    people: dict[str, ApiUser], pending: Release, django_user_model: Any
) -> None:
    dana = _roleless(django_user_model, "dana")
    delegation = _delegate(people, "security", dana)
    services.delegation_revoke(delegation=delegation, reason="left", actor=people["security"].user)
    response = _approve(dana, pending, "security")
    assert response.status_code == 403
    assert response.json()["code"] == "api.forbidden"
    assert "no live delegation" in response.json()["message"]
    assert not Approval.objects.filter(signer=dana.user).exists()


def test_the_delegatee_of_an_expired_delegation_is_refused_403(
    people: dict[str, ApiUser], pending: Release, django_user_model: Any
) -> None:
    dana = _roleless(django_user_model, "dana")
    then = timezone.now() - dt.timedelta(minutes=30)
    _delegate(people, "security", dana, now=then, expires_at=then + dt.timedelta(minutes=20))
    response = _approve(dana, pending, "security")
    assert response.status_code == 403 and response.json()["code"] == "api.forbidden"
    assert not Approval.objects.filter(signer=dana.user).exists()


def test_a_roleless_user_nobody_delegated_to_is_refused_403(
    people: dict[str, ApiUser], pending: Release, django_user_model: Any
) -> None:
    eve = _roleless(django_user_model, "eve")
    _delegate(people, "security", people["qa"])  # a live delegation, to someone else
    response = _approve(eve, pending, "security")
    assert response.status_code == 403 and response.json()["code"] == "api.forbidden"
    assert not Approval.objects.filter(signer=eve.user).exists()


def test_past_the_matrix_the_service_still_decides_role_and_scope(
    people: dict[str, ApiUser], pending: Release, django_user_model: Any, vendor: Any
) -> None:
    dana = _roleless(django_user_model, "dana")
    other = services.device_class_create(
        vendor=vendor, name="thermo-v1", actor=people["admin"].user
    )
    _delegate(people, "qa", dana, scope_device_classes=[other])
    _delegate(people, "security", dana, scope_device_classes=[pending.manifest.device_class])
    # Out of the qa delegation's scope: the matrix lets dana through, the service refuses.
    response = _approve(dana, pending, "qa")
    assert response.status_code == 403 and response.json()["code"] == "approval.not_authorized"
    # A role nobody delegated to dana.
    response = _approve(dana, pending, "fleet_operator")
    assert response.status_code == 403 and response.json()["code"] == "approval.not_authorized"
    assert not Approval.objects.filter(signer=dana.user).exists()
    # In scope: accepted.
    assert _approve(dana, pending, "security").status_code == 201


def test_a_delegated_author_still_cannot_approve_their_own_release(
    people: dict[str, ApiUser], pending: Release
) -> None:
    _delegate(people, "qa", people["author"])
    response = _approve(people["author"], pending, "qa")
    assert response.status_code == 403 and response.json()["code"] == "approval.self_approval"


def test_a_sub_delegatee_under_a_revoked_delegation_is_refused(
    people: dict[str, ApiUser], pending: Release, django_user_model: Any
) -> None:
    """The link naming erin is live, the one above it is revoked: the policy would ignore her
    signature, so the service refuses it rather than store a signature that counts for nothing."""
    dana = _roleless(django_user_model, "dana")
    erin = _roleless(django_user_model, "erin")
    parent = _delegate(people, "security", dana)
    services.delegation_create(
        delegator=dana.user,
        role="security",
        delegatees=[erin.user],
        threshold=1,
        parent=parent,
        expires_at=timezone.now() + dt.timedelta(hours=12),
    )
    services.delegation_revoke(delegation=parent, reason="left", actor=people["security"].user)
    before = Approval.objects.count()
    response = _approve(erin, pending, "security")
    assert response.status_code == 403, response.json()
    assert response.json()["code"] == "approval.not_authorized"
    assert "would not count" in response.json()["message"]
    assert Approval.objects.count() == before
