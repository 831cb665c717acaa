"""Role grants and revocations. Grants are dated and history is kept; a revocation can take
approval away from releases, so it re-evaluates them in the same transaction.

``role_grant`` / ``role_revoke`` are what people do (an admin acts). ``role_assign`` /
``role_unassign`` are the same writes for a source that is not a person: the identity
provider's group mapping at each single sign-on, or the first account of an empty server. They
check no actor, so only services that have decided who may act call them, inside their own
transaction; the audit event names the source (``details``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from manifests.errors import PermissionDeniedError
from manifests.models import Role, RoleAssignment
from manifests.services.access import ADMINS, require_role
from manifests.services.releases import releases_reevaluate


def role_grant(
    *, user: AbstractBaseUser, role: str, actor: Any, now: dt.datetime | None = None
) -> RoleAssignment:
    now = now or timezone.now()
    if role not in Role.values:
        raise PermissionDeniedError(f"unknown role {role!r}; roles are {Role.values}")
    with transaction.atomic():
        require_role(actor, *ADMINS, at=now)
        return role_assign(user=user, role=role, actor=actor, now=now)


def role_assign(
    *,
    user: AbstractBaseUser,
    role: str,
    actor: AbstractBaseUser | str,
    now: dt.datetime,
    details: dict[str, Any] | None = None,
) -> RoleAssignment:
    """Grant ``role`` unless held (idempotent); the caller has checked who may do it."""
    if role not in Role.values:
        raise PermissionDeniedError(f"unknown role {role!r}; roles are {Role.values}")
    with transaction.atomic():
        existing = RoleAssignment.objects.filter(user=user, role=role, revoked_at__isnull=True)
        if existing.exists():
            return existing.get()
        assignment = RoleAssignment.objects.create(
            user=user,
            role=role,
            granted_by=actor if isinstance(actor, AbstractBaseUser) else None,
            granted_at=now,
        )
        audit_record(
            actor=actor,
            action="role.grant",
            object_type="user",
            object_id=user.get_username(),
            details={"role": role, **(details or {})},
            now=now,
        )
        return assignment


def role_revoke(
    *, user: AbstractBaseUser, role: str, actor: Any, now: dt.datetime | None = None
) -> None:
    now = now or timezone.now()
    with transaction.atomic():
        require_role(actor, *ADMINS, at=now)
        if not role_unassign(user=user, role=role, actor=actor, now=now):
            raise PermissionDeniedError(f"{user.get_username()} does not hold the role {role!r}")


def role_unassign(
    *,
    user: AbstractBaseUser,
    role: str,
    actor: AbstractBaseUser | str,
    now: dt.datetime,
    details: dict[str, Any] | None = None,
) -> bool:
    """End ``role`` if held and re-evaluate releases; False (nothing written) if not held."""
    with transaction.atomic():
        changed = RoleAssignment.objects.filter(
            user=user, role=role, revoked_at__isnull=True
        ).update(revoked_at=now)
        if not changed:
            return False
        audit_record(
            actor=actor,
            action="role.revoke",
            object_type="user",
            object_id=user.get_username(),
            details={"role": role, **(details or {})},
            now=now,
        )
        releases_reevaluate(now=now, actor=actor)
        return True
