"""``GET /api/device-classes/{id}/trust-policy/``: the exact signed document a class's SUIT
devices hold (every role may read it); 409 while the class has none."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from manifests import device_trust, services, suit
from tests.api.conftest import register_key

pytestmark = pytest.mark.django_db


def test_class_trust_policy_is_served_as_the_exact_released_document(
    people: dict[str, Any], device_class: Any
):
    url = f"/api/device-classes/{device_class.pk}/trust-policy/"
    missing = people["auditor"].client.get(url)
    assert missing.status_code == 409 and missing.json()["code"] == "trust_policy.state"
    security = people["security"]
    register_key(security, at=timezone.now() - dt.timedelta(hours=1))
    draft = services.trust_policy_draft(
        device_class=device_class,
        roles={"security": (1, [suit.kid_for_public_key(security.key).hex()])},
        expires_at=timezone.now() + dt.timedelta(days=30),
        actor=security.user,
    )
    services.trust_policy_sign(
        policy=draft,
        signer=security.user,
        cose=device_trust.sign_policy(draft.body_bytes, security.key),
    )
    draft.refresh_from_db()
    response = people["auditor"].client.get(url, HTTP_ACCEPT="application/cbor")
    assert response.status_code == 200
    assert response.content == bytes(draft.document)
    policy = device_trust.decode_policy(response.content)
    assert policy.version == 1 and policy.class_id == device_class.uuid
