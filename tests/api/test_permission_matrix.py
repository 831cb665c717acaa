"""THE permission test: every API endpoint x every role (plus a roleless user and anonymous) x
every method, against the one table in api/permissions.py.

Allowed means the role matrix let the request through: any answer but 401/403 (the request is
deliberately empty or names a missing object, so it stops at validation or lookup: 400/404/415,
or succeeds for reads). Refused means 403 with code ``api.forbidden`` for a signed-in user and
401 for anonymous. A method an endpoint does not implement answers 405 to every signed-in user.

Three more roleless callers: the delegatee of a live ``qa`` delegation (allowed exactly where the
row is ``DELEGABLE`` and lists ``qa``), and the delegatees of a revoked and of an expired one
(refused everywhere, like a user without any role).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from api.permissions import DELEGABLE, MATRIX
from manifests import services
from tests.api.conftest import ROLES, ApiUser, client_for

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Path parameters that match each route's regex but name nothing that exists.
MISSING = {
    "pk": "999999",
    "seq": "999999",
    "name": "no-such-thing",
    "endpoint": "no-such-device",
    "sha256": "0" * 64,
    "manifest_digest": "0" * 64,
    "kid": "ab" * 32,
}


def api_routes() -> dict[str, list[str]]:
    """URL name -> its path parameters, for every route under /api/."""
    routes: dict[str, list[str]] = {}

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            here = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, here)
            elif isinstance(p, URLPattern) and here.startswith(("api/", "^api/")) and p.name:
                routes[p.name] = sorted(p.pattern.regex.groupindex)

    walk(get_resolver().url_patterns, "")
    return routes


ROUTES = api_routes()
DELEGATED_ROLE = "qa"  # what the live delegation below hands to its delegatee


@pytest.fixture
def delegatees(people: dict[str, ApiUser], django_user_model: Any) -> dict[str, Any]:
    """Roleless users named by a live, a revoked and an expired delegation of qa."""
    qa = people[DELEGATED_ROLE].user
    now = timezone.now()
    clients = {}
    for kind in ("delegatee", "revoked-delegatee", "expired-delegatee"):
        user = django_user_model.objects.create_user(username=kind, password=None)
        then = now - dt.timedelta(minutes=30) if kind == "expired-delegatee" else now
        delegation = services.delegation_create(
            delegator=qa,
            role=DELEGATED_ROLE,
            delegatees=[user],
            threshold=1,
            expires_at=then + dt.timedelta(minutes=20 if kind == "expired-delegatee" else 600),
            now=then,
        )
        if kind == "revoked-delegatee":
            services.delegation_revoke(delegation=delegation, reason="gone", actor=qa)
        clients[kind] = client_for(user)
    return clients


def test_the_delegable_rows_are_in_the_matrix() -> None:
    assert DELEGABLE and all(method in MATRIX[name] for name, method in DELEGABLE)


def test_every_api_route_is_in_the_matrix_and_nothing_else() -> None:
    assert set(ROUTES) == set(MATRIX)


@pytest.mark.django_db
@pytest.mark.parametrize("url_name", sorted(ROUTES))
def test_role_matrix(
    url_name: str, people: dict[str, Any], delegatees: dict[str, Any], anon: Any
) -> None:
    path = reverse(url_name, kwargs={k: MISSING[k] for k in ROUTES[url_name] if k != "format"})
    row = MATRIX[url_name]
    wrong: list[str] = []
    for method in METHODS:
        callers = [(role, people[role].client) for role in (*ROLES, "none")]
        callers += [*delegatees.items(), ("anon", anon)]
        for who, client in callers:
            response = getattr(client, method.lower())(path, {}, format="json")
            code = response.status_code
            body_code = _error_code(response)
            if who == "anon":
                ok = code == 401
                want = "401"
            elif method not in row:
                ok = code == 405
                want = "405"
            elif who in row[method] or (
                who == "delegatee"
                and (url_name, method) in DELEGABLE
                and DELEGATED_ROLE in row[method]
            ):
                ok = code not in (401, 403, 405) and code < 500
                want = "allowed"
            else:
                ok = code == 403 and body_code == "api.forbidden"
                want = "403 api.forbidden"
            if not ok:
                wrong.append(f"{method} {path} as {who}: want {want}, got {code} {body_code}")
    assert not wrong, "\n".join(wrong)


def _error_code(response: Any) -> str | None:
    """The error code, whatever the renderer: JSON, or the schema view's YAML. The docs page
    renders errors as DRF's plain HTML error page, which carries only the status."""
    if response.streaming:
        return None
    content_type = response.get("Content-Type", "").split(";")[0]
    if content_type == "application/json":
        return response.json().get("code")
    if content_type == "text/html" and response.status_code == 403:
        return "api.forbidden"  # only RoleMatrixPermission refuses the docs page
    return "api.forbidden" if b"api.forbidden" in response.content else None


FLEET_WRITES = {
    ("device-import", "POST"),
    ("device-tags", "POST"),
    ("devicetag-list", "POST"),
    ("devicegroup-list", "POST"),
    ("devicegroup-detail", "DELETE"),
}


def test_who_may_provision_a_device_may_tag_import_and_keep_groups() -> None:
    """The fleet rows follow ``device_provision``'s check (fleet operator or admin)."""
    from manifests.services.access import OPERATORS, READ

    assert {(n, m) for n, m in FLEET_WRITES if MATRIX[n][m] == OPERATORS} == FLEET_WRITES
    assert MATRIX["devicegroup-list"]["GET"] == READ == MATRIX["devicegroup-detail"]["GET"]
