"""Delegations: a role holder lets a group approve in their place, ``threshold`` of them
together counting as the delegator's one approval, within a scope and until an expiry; chains of
at most ``MAX_DELEGATION_DEPTH`` links, each within its parent. Revoking one re-evaluates the
releases in the same transaction (a revoked link voids everything under it)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from manifests.errors import DelegationError
from manifests.models import Delegation, DeviceClass
from manifests.policy import MAX_DELEGATION_DEPTH, Scope
from manifests.services.access import DELEGATION_OFFICERS, require_role
from manifests.services.facts import scope_of
from manifests.services.releases import releases_reevaluate


def delegation_create(
    *,
    delegator: AbstractBaseUser,
    role: str,
    delegatees: Sequence[AbstractBaseUser],
    threshold: int,
    expires_at: dt.datetime,
    scope_device_classes: Sequence[DeviceClass] | None = None,
    scope_groups: Sequence[str] | None = None,
    parent: Delegation | None = None,
    now: dt.datetime | None = None,
) -> Delegation:
    now = now or timezone.now()
    people = {u.pk for u in delegatees}
    if not people:
        raise DelegationError("a delegation needs at least one delegatee")
    if delegator.pk in people:
        raise DelegationError("a person cannot delegate to themselves")
    if not 1 <= threshold <= len(people):
        raise DelegationError(f"threshold must be between 1 and {len(people)} (the delegatees)")
    if expires_at <= now:
        raise DelegationError("a delegation must expire in the future")
    if role not in ("qa", "security", "fleet_operator", "author"):
        raise DelegationError(f"role {role!r} cannot be delegated")
    scope = Scope(
        device_classes=None
        if scope_device_classes is None
        else frozenset(c.pk for c in scope_device_classes),
        groups=None if scope_groups is None else frozenset(scope_groups),
    )
    with transaction.atomic():
        if parent is None:
            require_role(delegator, role, at=now)
        else:
            parent = Delegation.objects.select_for_update().get(pk=parent.pk)
            depth, link = 1, parent
            while link is not None:
                depth += 1
                link = link.parent
            if depth > MAX_DELEGATION_DEPTH:
                raise DelegationError(
                    f"delegation chains are limited to {MAX_DELEGATION_DEPTH} links"
                )
            if parent.role != role:
                raise DelegationError("a sub-delegation keeps its parent's role")
            if not parent.delegatees.filter(pk=delegator.pk).exists():
                raise DelegationError("only a delegatee of the parent can sub-delegate")
            if not (parent.revoked_at is None and parent.expires_at > now):
                raise DelegationError("the parent delegation is expired or revoked")
            if not scope.within(scope_of(parent)):
                raise DelegationError("a sub-delegation can only narrow its parent's scope")
            if expires_at > parent.expires_at:
                raise DelegationError("a sub-delegation cannot outlive its parent")
        delegation = Delegation.objects.create(
            delegator=delegator,
            role=role,
            threshold=threshold,
            scope_device_classes=None
            if scope.device_classes is None
            else sorted(scope.device_classes),
            scope_groups=None if scope.groups is None else sorted(scope.groups),
            parent=parent,
            expires_at=expires_at,
            created_at=now,
        )
        delegation.delegatees.set(list(delegatees))
        audit_record(
            actor=delegator,
            action="delegation.create",
            object_type="delegation",
            object_id=delegation.pk,
            details={
                "role": role,
                "delegatees": sorted(u.get_username() for u in delegatees),
                "threshold": threshold,
                "scope_device_classes": delegation.scope_device_classes,
                "scope_groups": delegation.scope_groups,
                "parent": parent.pk if parent else None,
                "expires_at": expires_at.isoformat(),
            },
            now=now,
        )
        return delegation


def delegation_revoke(
    *, delegation: Delegation, reason: str, actor: Any, now: dt.datetime | None = None
) -> Delegation:
    """Revoking a delegation voids every sub-delegation under it (the chain check sees it)."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Delegation.objects.select_for_update().get(pk=delegation.pk)
        if not (isinstance(actor, AbstractBaseUser) and actor.pk == locked.delegator_id):
            require_role(actor, *DELEGATION_OFFICERS, at=now)
        if locked.revoked_at is not None:
            raise DelegationError(f"delegation {locked.pk} is already revoked")
        Delegation.objects.filter(pk=locked.pk).update(revoked_at=now, revoke_reason=reason)
        audit_record(
            actor=actor,
            action="delegation.revoke",
            object_type="delegation",
            object_id=locked.pk,
            details={"reason": reason},
            now=now,
        )
        releases_reevaluate(now=now, actor=actor)
        locked.refresh_from_db()
        return locked
