"""Who holds which role, and the named role sets every caller checks against.

The bottom floor of ``manifests.services``: it imports models and errors only, so every service
module, the API's permission matrix and the console's page checks can use it without a cycle.
The sets below are the one table of who may do what: the services call ``require_role`` with
them, ``api.permissions.MATRIX`` and ``console`` gate on the same names, so a gate in front of a
service can be no wider than the service behind it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q
from django.utils import timezone

from manifests.errors import PermissionDeniedError
from manifests.models import Delegation, Role, RoleAssignment

AUTHOR, QA, SECURITY = Role.AUTHOR.value, Role.QA.value, Role.SECURITY.value
OPERATOR, AUDITOR, ADMIN = Role.FLEET_OPERATOR.value, Role.AUDITOR.value, Role.ADMIN.value

# Auditor is read-only everywhere; every role may read everything except webhook settings.
READ = frozenset({AUTHOR, QA, SECURITY, OPERATOR, AUDITOR, ADMIN})
# vendor_create, device_class_create: the identities (vendor/class UUIDs, component, payload
# format) every manifest is checked against, so not the author's to define.
CATALOG_ADMINS = frozenset({ADMIN})
CATALOG_WRITE = frozenset({AUTHOR, ADMIN})  # image_upload, manifest_import
RELEASE_WRITE = frozenset({AUTHOR, ADMIN})  # release_create / release_submit
# The approving roles (``manifests.policy.APPROVING_ROLES``): release_approve refuses
# admin/auditor.
APPROVERS = frozenset({AUTHOR, QA, SECURITY, OPERATOR})
KEY_HOLDERS = frozenset({AUTHOR, QA, SECURITY, OPERATOR, ADMIN})  # own keys; sec/admin: any
KEY_OFFICERS = frozenset({SECURITY, ADMIN})  # rotate / revoke someone else's key
REVOKERS = frozenset({SECURITY, ADMIN})  # release_revoke
TRUST_POLICY_WRITERS = frozenset({SECURITY, ADMIN})  # trust_policy_draft
ENVELOPE_FREEZERS = frozenset({SECURITY, ADMIN})  # released_envelopes_freeze
ADMINS = frozenset({ADMIN})  # policy_set, role_grant / role_revoke, webhooks
DELEGATORS = frozenset({AUTHOR, QA, SECURITY, OPERATOR})  # delegation_create (own role)
DELEGATION_OFFICERS = frozenset({SECURITY, ADMIN})  # revoke someone else's delegation
DELEGATION_REVOKERS = DELEGATORS | DELEGATION_OFFICERS  # the delegator, or security / admin
OPERATORS = frozenset({OPERATOR, ADMIN})  # campaign_apply / pause / resume / abort
GATEKEEPERS = frozenset({OPERATOR, QA, SECURITY, ADMIN})  # campaign_promote (gate roles)
STOPPERS = frozenset({OPERATOR, SECURITY, ADMIN})  # emergency_stop
LIFTERS = frozenset({SECURITY, ADMIN})  # emergency_lift
WEBHOOK_READ = frozenset({ADMIN, AUDITOR})


def roles_of(user: AbstractBaseUser, *, at: dt.datetime | None = None) -> frozenset[str]:
    """The roles granted to ``user`` and not revoked as of ``at`` (superusers hold admin)."""
    at = at or timezone.now()
    held = RoleAssignment.objects.filter(user=user, granted_at__lte=at).filter(
        Q(revoked_at__isnull=True) | Q(revoked_at__gt=at)
    )
    roles = frozenset(held.values_list("role", flat=True))
    return roles | {Role.ADMIN} if getattr(user, "is_superuser", False) else roles


def role_names(roles: Iterable[str]) -> str:
    """``admin, qa``: role names for a message, whether given as ``Role`` members (whose repr
    is ``Role.ADMIN``) or as plain strings."""
    return ", ".join(sorted({str(role) for role in roles}))


def require_role(actor: Any, *roles: str, at: dt.datetime | None = None) -> AbstractBaseUser:
    """The actor must be a user holding one of ``roles`` (superusers hold admin)."""
    if not isinstance(actor, AbstractBaseUser) or not actor.is_active:
        raise PermissionDeniedError("this action needs a signed-in, active user")
    if not roles_of(actor, at=at) & set(roles):
        raise PermissionDeniedError(
            f"{actor.get_username()} needs one of the roles {role_names(roles)} for this action"
        )
    return actor


def delegated_roles(user: AbstractBaseUser, *, at: dt.datetime | None = None) -> frozenset[str]:
    """The approving roles ``user`` holds through a live (unrevoked, unexpired) delegation naming
    them, whatever its scope. An upper bound for gates that run before a release is known (the
    API's permission matrix, the console's pages); per release,
    ``manifests.services.releases.approval_capacities`` decides."""
    at = at or timezone.now()
    live = Delegation.objects.filter(role__in=APPROVERS, delegatees=user, expires_at__gt=at).filter(
        Q(revoked_at__isnull=True) | Q(revoked_at__gt=at)
    )
    return frozenset(live.values_list("role", flat=True))
