"""The API's permission matrix: ONE table, endpoint (URL name) x method -> roles allowed.

Enforced on every endpoint by ``RoleMatrixPermission`` (the project-wide default permission
class) before the view runs; the services' own role checks stay authoritative behind it, so the
table can only narrow what a service would allow, never widen it. Anything not in the table is
refused (fail closed); a method the view does not implement answers 405. Anonymous requests get
401, signed-in users without a listed role 403 with code ``api.forbidden``.

A few rows (``DELEGABLE``) also admit a user who holds a listed role only through a live
delegation naming them (``manifests.services.access.delegated_roles``): the service accepts
such a signer, so the table must not be stricter than it; the service still decides per release
(the delegation's scope, the release's policy, separation of duties).
``tests/api/test_permission_matrix.py`` walks the whole table and checks every URL is in it.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from api.errors import RoleForbidden
from manifests.services.access import (
    ADMINS,
    APPROVERS,
    CATALOG_ADMINS,
    CATALOG_WRITE,
    DELEGATION_REVOKERS,
    DELEGATORS,
    GATEKEEPERS,
    KEY_HOLDERS,
    KEY_OFFICERS,
    LIFTERS,
    OPERATORS,
    READ,
    RELEASE_WRITE,
    REVOKERS,
    STOPPERS,
    TRUST_POLICY_WRITERS,
    WEBHOOK_READ,
    delegated_roles,
    roles_of,
)

# The rows name the role sets of ``manifests.services.access``, the sets the services themselves
# check (and the console gates on): what each one is for is said where it is defined.
MATRIX: dict[str, dict[str, frozenset[str]]] = {
    # index, schema, docs, who am I
    "api-root": {"GET": READ},
    "schema": {"GET": READ},
    "swagger-ui": {"GET": READ},
    "me": {"GET": READ},
    # catalog
    "vendor-list": {"GET": READ, "POST": CATALOG_ADMINS},
    "vendor-detail": {"GET": READ},
    "deviceclass-list": {"GET": READ, "POST": CATALOG_ADMINS},
    "deviceclass-detail": {"GET": READ, "PATCH": CATALOG_ADMINS},
    "deviceclass-trust-policy": {"GET": READ},
    "deviceclass-trust-holdings": {"GET": READ},
    "image-list": {"GET": READ, "POST": CATALOG_WRITE},
    "image-detail": {"GET": READ},
    "manifest-list": {"GET": READ, "POST": CATALOG_WRITE},
    "manifest-detail": {"GET": READ},
    "manifest-envelope": {"GET": READ},
    # releases and approvals
    "release-list": {"GET": READ, "POST": RELEASE_WRITE},
    "release-detail": {"GET": READ},
    "release-submit": {"POST": RELEASE_WRITE},
    "release-approvals": {"POST": APPROVERS},
    "release-revoke": {"POST": REVOKERS},
    "release-envelope": {"GET": READ},
    # keys, policies, roles, delegations
    "key-list": {"GET": READ, "POST": KEY_HOLDERS},
    "key-detail": {"GET": READ},
    "key-rotate": {"POST": KEY_HOLDERS},
    "key-revoke": {"POST": KEY_HOLDERS},
    "payloadkey-list": {"GET": READ, "POST": KEY_OFFICERS},
    "payloadkey-detail": {"GET": READ},
    "payloadkey-rotate": {"POST": KEY_OFFICERS},
    "imagekey-list": {"GET": READ, "POST": KEY_OFFICERS},
    "imagekey-detail": {"GET": READ},
    "policy-list": {"GET": READ, "POST": ADMINS},
    "policy-detail": {"GET": READ},
    "policy-effective": {"GET": READ},
    # device trust policies: security drafts and releases; a signature is uploaded by whoever
    # holds the key (the service checks the key is the signer's)
    "trustpolicy-list": {"GET": READ, "POST": TRUST_POLICY_WRITERS},
    "trustpolicy-detail": {"GET": READ},
    "trustpolicy-body": {"GET": READ},
    "trustpolicy-document": {"GET": READ},
    "trustpolicy-signatures": {"POST": KEY_HOLDERS},
    "trustpolicy-release": {"POST": TRUST_POLICY_WRITERS},
    "role-list": {"GET": READ, "POST": ADMINS},
    "role-detail": {"GET": READ, "DELETE": ADMINS},
    "delegation-list": {"GET": READ, "POST": DELEGATORS},
    "delegation-detail": {"GET": READ},
    "delegation-revoke": {"POST": DELEGATION_REVOKERS},
    # fleet
    "device-list": {"GET": READ},
    "device-detail": {"GET": READ},
    # fleet management: whoever may provision a device (device_provision) tags and imports
    "device-import": {"POST": OPERATORS},
    "device-tags": {"POST": OPERATORS},
    "devicetag-list": {"POST": OPERATORS},
    "devicegroup-list": {"GET": READ, "POST": OPERATORS},
    "devicegroup-detail": {"GET": READ, "DELETE": OPERATORS},
    "campaign-list": {"GET": READ, "POST": OPERATORS},
    "campaign-detail": {"GET": READ, "PUT": OPERATORS},
    "campaignplan-list": {"POST": READ},  # a preview: validates and counts, writes nothing
    "campaign-status": {"GET": READ},
    "campaign-timeline": {"GET": READ},
    "campaign-revisions": {"GET": READ},
    "rollout-list": {"GET": READ},
    "rollout-detail": {"GET": READ},
    "campaign-pause": {"POST": OPERATORS},
    "campaign-resume": {"POST": OPERATORS},
    "campaign-abort": {"POST": OPERATORS},
    "campaign-promote": {"POST": GATEKEEPERS},
    "emergencystop-list": {"GET": READ, "POST": STOPPERS},
    "emergencystop-detail": {"GET": READ},
    "emergencystop-lift": {"POST": LIFTERS},
    "rollback-prepare": {"POST": READ},  # computes parameters, writes nothing
    "rollback-launch": {"POST": OPERATORS},
    # audit
    "auditevent-list": {"GET": READ},
    "auditevent-detail": {"GET": READ},
    "auditevent-export": {"GET": READ},
    "auditevent-verify": {"GET": READ},
    # webhooks
    "webhook-list": {"GET": WEBHOOK_READ, "POST": ADMINS},
    "webhook-detail": {
        "GET": WEBHOOK_READ,
        "PUT": ADMINS,
        "PATCH": ADMINS,
        "DELETE": ADMINS,
    },
    "webhookdelivery-list": {"GET": WEBHOOK_READ},
    "webhookdelivery-detail": {"GET": WEBHOOK_READ},
    "webhookdelivery-resend": {"POST": ADMINS},
}

# (URL name, method) where a role held through a live delegation counts as holding it:
# release_approve accepts a delegatee's signature in the delegated role.
DELEGABLE: frozenset[tuple[str, str]] = frozenset({("release-approvals", "POST")})

# Read-only methods share GET's row.
_ALIASES = {"HEAD": "GET", "OPTIONS": "GET"}


def allowed_roles(url_name: str | None, method: str) -> frozenset[str]:
    method = _ALIASES.get(method.upper(), method.upper())
    return MATRIX.get(url_name or "", {}).get(method, frozenset())


def is_delegable(url_name: str | None, method: str) -> bool:
    return (url_name or "", _ALIASES.get(method.upper(), method.upper())) in DELEGABLE


def request_roles(request: Request) -> frozenset[str]:
    """``roles_of`` once per request (views reuse it)."""
    cached = getattr(request, "_fwupd_roles", None)
    if cached is None:
        cached = roles_of(request.user)
        request._fwupd_roles = cached  # type: ignore[attr-defined]
    return cached


class RoleMatrixPermission(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False  # DRF turns this into 401 (NotAuthenticated) with WWW-Authenticate
        method = request.method or "GET"
        if method.lower() not in view.http_method_names or not hasattr(view, method.lower()):
            return True  # not implemented here: the view answers 405
        match = getattr(request, "resolver_match", None)
        url_name = match.url_name if match else None
        needed = allowed_roles(url_name, method)
        if not needed:
            raise RoleForbidden(f"{method} {request.path} is not open to any role")
        held = request_roles(request)
        if held & needed:
            return True
        if is_delegable(url_name, method):
            if delegated_roles(user) & needed:
                return True
            raise RoleForbidden(
                f"{user.get_username()} holds {sorted(held) or 'no role'} and no live "
                f"delegation of one; {method} here needs one of {sorted(needed)}, held or "
                "delegated"
            )
        raise RoleForbidden(
            f"{user.get_username()} holds {sorted(held) or 'no role'}; "
            f"{method} here needs one of {sorted(needed)}"
        )
