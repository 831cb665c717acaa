"""The OpenAPI schema generates without a single warning, and the docs load nothing remote."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command

from api.permissions import MATRIX


def test_schema_generates_without_warnings_and_validates(tmp_path: Path) -> None:
    out = tmp_path / "schema.yaml"
    # The same as the CI step: fails on any warning or validation error.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    assert "/api/releases/{name}/approvals/" in schema["paths"]
    assert {"tokenAuth", "cookieAuth"} <= set(schema["components"]["securitySchemes"])


@pytest.mark.django_db
def test_schema_url_serves_openapi_to_a_signed_in_user(people: dict[str, Any]) -> None:
    response = people["auditor"].client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "fwupd campaign manager API"


@pytest.mark.django_db
def test_swagger_ui_uses_local_static_assets_only(people: dict[str, Any]) -> None:
    response = people["auditor"].client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    remote = re.findall(r"""(?:src|href)=["'](https?:)?//""", html)
    assert remote == [], "the docs page must not load anything from another host"
    assert "cdn" not in html.lower()


def test_matrix_rows_name_only_known_roles_and_methods() -> None:
    from manifests.models import Role

    for name, row in MATRIX.items():
        assert row, name
        for method, roles in row.items():
            assert method in {"GET", "POST", "PUT", "PATCH", "DELETE"}, (name, method)
            assert roles and roles <= set(Role.values), (name, method)


# --- the schema says what the server does --------------------------------------------------
@pytest.fixture(scope="module")
def openapi(django_db_blocker: Any) -> dict[str, Any]:
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    with django_db_blocker.unblock():
        generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(generated))


def _operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method.upper(), operation)
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


ERROR_REF = "#/components/schemas/Error"


def test_every_operation_documents_its_error_responses_with_the_error_body(
    openapi: dict[str, Any],
) -> None:
    error = openapi["components"]["schemas"]["Error"]
    assert {"code", "message"} <= set(error["required"])
    assert {"errors", "suit_code", "path"} <= set(error["properties"])
    operations = _operations(openapi)
    assert len(operations) > 60
    for path, method, operation in operations:
        responses = operation["responses"]
        parameters = operation.get("parameters", [])
        expected = {"401", "403"}
        if any(p["in"] == "path" for p in parameters):
            expected.add("404")
        if "requestBody" in operation or any(p["in"] == "query" for p in parameters):
            expected.add("400")
        if method != "GET":
            expected.add("409")
        assert expected <= set(responses), (method, path, sorted(responses))
        for code in expected:
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_REF}, (method, path, code)


def test_statuses_particular_to_one_operation_are_documented(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    assert "409" in paths["/api/releases/{name}/envelope/"]["get"]["responses"]
    assert "413" in paths["/api/images/"]["post"]["responses"]
    assert "404" in paths["/api/policies/effective/"]["get"]["responses"]


@pytest.mark.parametrize(
    ("component", "field"),
    [
        ("Key", "replaced_by"),
        ("Release", "revoked_by"),
        ("ReleaseDetail", "revoked_by"),
        ("EmergencyStop", "release"),
        ("EmergencyStop", "device_class"),
        ("EmergencyStop", "lifted_by"),
    ],
)
def test_fields_that_can_be_null_are_nullable(
    openapi: dict[str, Any], component: str, field: str
) -> None:
    assert openapi["components"]["schemas"][component]["properties"][field].get("nullable")


@pytest.mark.parametrize(
    "path", ["/api/manifests/{manifest_digest}/envelope/", "/api/releases/{name}/envelope/"]
)
def test_envelope_endpoints_document_application_cbor(openapi: dict[str, Any], path: str) -> None:
    content = openapi["paths"][path]["get"]["responses"]["200"]["content"]
    assert list(content) == ["application/cbor"]


def test_timeline_is_documented_as_the_plain_list_it_is(openapi: dict[str, Any]) -> None:
    operation = openapi["paths"]["/api/campaigns/{name}/timeline/"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["type"] == (
        "array"
    )
    assert not {"limit", "offset"} & {p["name"] for p in operation.get("parameters", [])}


@pytest.mark.parametrize("action", ["pause", "resume", "abort"])
def test_campaign_state_changes_document_json_bodies_only(
    openapi: dict[str, Any], action: str
) -> None:
    body = openapi["paths"][f"/api/campaigns/{{name}}/{action}/"]["post"]["requestBody"]
    assert list(body["content"]) == ["application/json"]


def test_pagination_and_filter_parameters_state_their_bounds(openapi: dict[str, Any]) -> None:
    parameters = {
        p["name"]: p["schema"] for p in openapi["paths"]["/api/devices/"]["get"]["parameters"]
    }
    assert parameters["limit"] == {"type": "integer", "minimum": 1, "maximum": 500}
    assert parameters["offset"]["minimum"] == 0
    assert parameters["vendor"] == {
        "type": "integer",
        "format": "int64",
        "minimum": 1,
        "maximum": 2**63 - 1,
    }
    assert parameters["online"]["type"] == "boolean"
    assert parameters["firmware_version"]["minLength"] == 1


@pytest.mark.django_db
def test_envelopes_are_served_as_application_cbor_also_when_asked_for_it(
    people: dict[str, Any], world: dict[str, Any]
) -> None:
    client = people["auditor"].client
    digest = world["manifest"].manifest_digest
    for url in (f"/api/manifests/{digest}/envelope/", "/api/releases/thermo-2.0.0/envelope/"):
        for accept in ("*/*", "application/cbor"):
            response = client.get(url, HTTP_ACCEPT=accept)
            assert response.status_code == 200, (url, accept, response.content[:200])
            assert response["Content-Type"] == "application/cbor"
    missing = client.get(f"/api/manifests/{'0' * 64}/envelope/", HTTP_ACCEPT="application/cbor")
    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/json"
    assert missing.json()["code"] == "not_found"


@pytest.mark.django_db
def test_timeline_answers_the_whole_list_and_ignores_no_documented_parameter(
    people: dict[str, Any], world: dict[str, Any]
) -> None:
    from tests.api.conftest import MINIMAL_SPEC

    ops = people["fleet_operator"].client
    ops.post("/api/campaigns/", {"document": MINIMAL_SPEC})
    ops.post("/api/campaigns/thermo-rollout/pause/", {"reason": "x"}, format="json")
    timeline = people["auditor"].client.get("/api/campaigns/thermo-rollout/timeline/").json()
    assert isinstance(timeline, list) and len(timeline) >= 2
