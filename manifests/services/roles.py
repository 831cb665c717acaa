"""Role grants and revocations. Grants are dated and history is kept; a revocation can take
approval away from releases, so it re-evaluates them in the same transaction."""

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
        existing = RoleAssignment.objects.filter(user=user, role=role, revoked_at__isnull=True)
        if existing.exists():
            return existing.get()
        assignment = RoleAssignment.objects.create(
            user=user, role=role, granted_by=actor, granted_at=now
        )
        audit_record(
            actor=actor,
            action="role.grant",
            object_type="user",
            object_id=user.get_username(),
            details={"role": role},
            now=now,
        )
        return assignment


def role_revoke(
    *, user: AbstractBaseUser, role: str, actor: Any, now: dt.datetime | None = None
) -> None:
    now = now or timezone.now()
    with transaction.atomic():
        require_role(actor, *ADMINS, at=now)
        changed = RoleAssignment.objects.filter(
            user=user, role=role, revoked_at__isnull=True
        ).update(revoked_at=now)
        if not changed:
            raise PermissionDeniedError(f"{user.get_username()} does not hold the role {role!r}")
        audit_record(
            actor=actor,
            action="role.revoke",
            object_type="user",
            object_id=user.get_username(),
            details={"role": role},
            now=now,
        )
        releases_reevaluate(now=now, actor=actor)
