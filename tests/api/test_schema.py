"""The OpenAPI schema generates without a single warning, and the docs load nothing remote."""

from __future__ import annotations

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
