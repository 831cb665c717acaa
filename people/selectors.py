"""Reads for the people pages and commands."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Prefetch, Q
from django.utils import timezone

from manifests.models import RoleAssignment
from manifests.services.access import ADMIN


@dataclass(frozen=True)
class UserRow:
    username: str
    roles: tuple[str, ...]
    active: bool
    last_login: dt.datetime | None
    # "sso", "local", "sso+local", or "none" (no password and no linked identity)
    sign_in: str


def user_rows(*, now: dt.datetime | None = None) -> list[UserRow]:
    """Every account with its live roles and how it signs in; three queries whatever the count."""
    now = now or timezone.now()
    live = RoleAssignment.objects.filter(granted_at__lte=now).filter(
        Q(revoked_at__isnull=True) | Q(revoked_at__gt=now)
    )
    users = (
        get_user_model()
        .objects.order_by("username")
        .prefetch_related(
            Prefetch("role_assignments", queryset=live, to_attr="live_roles"),
            "external_identities",
        )
    )
    rows = []
    for user in users:
        roles = {assignment.role for assignment in user.live_roles}
        if user.is_superuser:
            roles.add(ADMIN)
        ways = []
        if user.external_identities.all():
            ways.append("sso")
        if user.has_usable_password():
            ways.append("local")
        rows.append(
            UserRow(
                username=user.get_username(),
                roles=tuple(sorted(roles)),
                active=user.is_active,
                last_login=user.last_login,
                sign_in="+".join(ways) or "none",
            )
        )
    return rows
