"""Every operation of the live OpenAPI schema, fuzzed by Schemathesis in-process (WSGI, no
network) as an admin, who may write, and as the read-only auditor: no server error, and every
answer (status code, content type, body) is one the schema documents.

Each operation is its own test in its own transaction (pytest-django's ``db``), so what the
admin's examples write (a revoked role, an emergency stop, a deleted webhook) is rolled back
before the next operation starts from the same world. Every example is sent as both roles, and
where the path names an object, once more for an object that exists (generated ids name
nothing). The examples are bounded and derandomised (the same cases on every run): the run is a
schema conformance check, not an open-ended fuzz.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import webhooks
from campaigns import fleet_services
from campaigns import services as campaign_services
from campaigns.fleet import DeviceFilter
from campaigns.spec import parse_spec
from manifests import services, suit
from tests.api.conftest import MINIMAL_SPEC

# Examples per operation after Schemathesis's own boundary cases (coverage phase).
MAX_EXAMPLES = 4
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _live_schema() -> Any:
    """The schema /api/schema/ serves (generated the same way, without a request)."""
    generated = SchemaGenerator().get_schema(request=None, public=True)
    document = json.loads(OpenApiJsonRenderer().render(generated))
    loaded = schemathesis.openapi.from_dict(document, config=SchemathesisConfig())
    loaded.app = get_wsgi_application()
    return loaded


schema = _live_schema()


@pytest.fixture
def fuller_world(world: dict[str, Any], people: dict[str, Any]) -> dict[str, Any]:
    """The API world plus rows whose optional fields are set and unset: a rotated key, a
    lifted global stop and an active class stop, a campaign with rollouts and a timeline, an
    inactive webhook."""
    admin, security = people["admin"].user, people["security"].user
    old = services.signing_key_register(
        owner=people["qa"].user,
        public_key_pem=suit.public_key_pem(
            suit.generate_private_key("ES256").public_key()
        ).decode(),
        valid_from=timezone.now() - dt.timedelta(hours=1),
    )
    services.key_rotate(
        key=old,
        new_public_key_pem=suit.public_key_pem(
            suit.generate_private_key("Ed25519").public_key()
        ).decode(),
        actor=people["qa"].user,
    )
    stop = campaign_services.emergency_stop(actor=security, reason="drill")
    campaign_services.emergency_lift(stop=stop, actor=security)
    campaign_services.emergency_stop(
        actor=admin, reason="class hold", device_class=world["release"].manifest.device_class
    )
    campaign_services.campaign_apply(
        spec=parse_spec(MINIMAL_SPEC, source="test"), actor=people["fleet_operator"].user
    )
    webhooks.webhook_create(
        actor=admin, url="https://hooks.example.com/fwupd", name="off", active=False
    )
    world["trust_policy"] = services.trust_policy_draft(
        device_class=world["release"].manifest.device_class,
        roles={"security": (1, [suit.kid_for_public_key(people["security"].key).hex()])},
        expires_at=timezone.now() + dt.timedelta(days=30),
        actor=security,
    )
    return world


@pytest.fixture
def tokens(fuller_world: Any, people: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Headers per role; the auditor goes first in each example, so it also reads the world
    before that example's admin writes."""
    out = {}
    for role in ("auditor", "admin"):
        token, _ = Token.objects.get_or_create(user=people[role].user)
        out[role] = {"Authorization": f"Token {token.key}"}
    return out


@pytest.fixture
def real_ids(fuller_world: dict[str, Any], people: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """(collection, path parameter) -> an object that exists: generated values nearly always
    name nothing (404), so each example is also sent for a real object."""
    from api.models import Webhook
    from campaigns.models import EmergencyStop, Rollout
    from manifests.models import RoleAssignment, SigningKey

    release, manifest = fuller_world["release"], fuller_world["manifest"]
    return {
        ("vendors", "id"): manifest.vendor_id,
        ("device-classes", "id"): manifest.device_class_id,
        ("images", "sha256"): fuller_world["image"].sha256,
        ("manifests", "manifest_digest"): manifest.manifest_digest,
        ("releases", "name"): release.name,
        ("keys", "kid"): SigningKey.objects.filter(owner=people["security"].user).first().kid,
        ("roles", "id"): RoleAssignment.objects.filter(user=people["qa"].user).first().pk,
        ("devices", "endpoint"): fuller_world["devices"][0].endpoint,
        ("campaigns", "name"): "thermo-rollout",
        ("rollouts", "id"): Rollout.objects.order_by("pk").first().pk,
        ("emergency-stops", "id"): EmergencyStop.objects.filter(lifted_at=None).first().pk,
        ("audit-events", "seq"): 1,
        ("trust-policies", "id"): fuller_world["trust_policy"].pk,
        ("webhooks", "id"): Webhook.objects.first().pk,
        ("device-groups", "name"): fleet_services.device_group_create(
            actor=people["admin"].user, name="pilot", device_filter=DeviceFilter(tag="eu")
        ).name,
    }


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Any:
    """The WSGI handler closes the database connection at the end of each request when it is
    inside a transaction (Django's ``close_old_connections``); the test's own transaction would
    go with it on PostgreSQL. Django's test client unhooks it the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _no_outbound_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Webhooks the admin's examples create would be delivered (tasks run in-process) to
    whatever URL was generated: refuse every target, so nothing leaves the machine."""

    def refuse(host: str, port: int, **_: Any) -> list[str]:
        raise webhooks.WebhookDeliveryError("no outbound requests in tests", permanent=True)

    monkeypatch.setattr(webhooks, "resolve_target", refuse)


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    # Fixtures are per test (operation), not per example: the examples of one operation share
    # its world, as a client's successive requests would.
    suppress_health_check=list(HealthCheck),
)
def test_api_operation_conforms_to_schema(
    case: Any, tokens: dict[str, dict[str, str]], real_ids: dict[tuple[str, str], Any]
) -> None:
    collection = case.operation.path.split("/")[2]
    real = {
        name: real_ids[(collection, name)]
        for name in case.path_parameters or {}
        if (collection, name) in real_ids
    }
    _call_as_each_role(case, tokens)
    if real:
        case.path_parameters = {**case.path_parameters, **real}
        _call_as_each_role(case, tokens)


def _call_as_each_role(case: Any, tokens: dict[str, dict[str, str]]) -> None:
    for role, headers in tokens.items():
        try:
            case.call_and_validate(headers=headers, checks=CHECKS)
        except Exception as exc:
            exc.add_note(f"(as {role}, path parameters {case.path_parameters})")
            raise
