"""Accounts and single sign-on: creating, disabling and enabling users, and matching an identity
provider's answer to an account with its mapped roles.

Roles go through ``manifests.services.roles`` (the one place role rows are written and audited):
``role_grant`` when an admin acts, ``role_assign`` / ``role_unassign`` when the source is the
identity provider or the bootstrap of an empty server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.services import audit_record
from manifests.models import Role, RoleAssignment
from manifests.services.access import ADMIN, ADMINS, require_role
from manifests.services.roles import role_assign, role_grant, role_unassign
from people.errors import (
    AccountDisabledError,
    ActorRequiredError,
    InvalidUserError,
    LastAdminError,
    NoMappedRoleError,
    SignInRefusedError,
    UnknownRoleError,
    UserExistsError,
    WeakPasswordError,
)
from people.mapping import SignInPolicy, mapped_roles
from people.models import ExternalIdentity

# Who the audit trail names when the first account of an empty server is made from the CLI.
BOOTSTRAP_ACTOR = "bootstrap"


def _admin_user_ids(*, exclude: AbstractBaseUser | None = None) -> Any:
    """Active users holding admin: superusers, or a live ``admin`` role grant."""
    users = (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(
            Q(is_superuser=True)
            | Q(role_assignments__role=ADMIN, role_assignments__revoked_at__isnull=True)
        )
    )
    if exclude is not None:
        users = users.exclude(pk=exclude.pk)
    return users.values("pk")


def admins_exist() -> bool:
    return get_user_model().objects.filter(pk__in=_admin_user_ids()).exists()


def _check_roles(roles: Iterable[str]) -> list[str]:
    wanted = sorted(set(roles))
    unknown = [role for role in wanted if role not in Role.values]
    if unknown:
        raise UnknownRoleError(
            f"unknown role {', '.join(unknown)}; roles are {', '.join(Role.values)}"
        )
    return wanted


def user_create(
    *,
    username: str,
    email: str = "",
    roles: Iterable[str] = (),
    password: str | None = None,
    actor: AbstractBaseUser | None,
    now: dt.datetime | None = None,
) -> AbstractBaseUser:
    """A local account, with a password or none (``password=None``: it can only sign in
    through single sign-on once an identity is linked, or not at all). ``actor`` is an admin,
    or None for the first account of a server where no active admin exists yet."""
    now = now or timezone.now()
    wanted = _check_roles(roles)
    user_model = get_user_model()
    candidate = user_model(username=username, email=email)
    try:
        user_model.username_validator(username)
        if email:
            validate_email(email)
    except ValidationError as exc:
        raise InvalidUserError(" ".join(exc.messages)) from None
    if password is not None:
        try:
            validate_password(password, candidate)
        except ValidationError as exc:
            raise WeakPasswordError(" ".join(exc.messages)) from None
    with transaction.atomic():
        if actor is None:
            if admins_exist():
                raise ActorRequiredError(
                    "an admin must act for this (--user NAME); only the first account of a "
                    "server without an active admin is created without one"
                )
            if ADMIN not in wanted:
                raise ActorRequiredError(
                    "the first account of a server must hold the admin role (--role admin)"
                )
        else:
            require_role(actor, *ADMINS, at=now)
        if user_model.objects.filter(username__iexact=username).exists():
            raise UserExistsError(f"a user named {username!r} already exists")
        user = user_model.objects.create_user(username=username, email=email, password=password)
        if password is None:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        audit_record(
            actor=actor or BOOTSTRAP_ACTOR,
            action="user.create",
            object_type="user",
            object_id=username,
            details={"email": email, "roles": wanted, "password": password is not None},
            now=now,
        )
        for role in wanted:
            if actor is None:
                role_assign(user=user, role=role, actor=BOOTSTRAP_ACTOR, now=now)
            else:
                role_grant(user=user, role=role, actor=actor, now=now)
        return user


def user_disable(
    *, user: AbstractBaseUser, actor: AbstractBaseUser, now: dt.datetime | None = None
) -> bool:
    """Disable ``user``: no sign-in (password or single sign-on), sessions and API tokens stop
    working. Refused for the last active admin. False if already disabled (nothing written)."""
    now = now or timezone.now()
    user_model = get_user_model()
    with transaction.atomic():
        require_role(actor, *ADMINS, at=now)
        # Lock every active admin (primary-key order): two admins disabling each other at the
        # same moment must not both see the other one still active.
        admins = list(
            user_model.objects.select_for_update()
            .filter(pk__in=_admin_user_ids())
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        target = user_model.objects.select_for_update().get(pk=user.pk)
        if not target.is_active:
            return False
        if target.pk in admins and len(admins) == 1:
            raise LastAdminError(
                f"{target.get_username()} is the last active superuser or admin; grant admin "
                "to another user first"
            )
        target.is_active = False
        target.save(update_fields=["is_active"])
        audit_record(
            actor=actor, action="user.disable", object_type="user",
            object_id=target.get_username(), now=now,
        )  # fmt: skip
        user.is_active = False
        return True


def user_enable(
    *, user: AbstractBaseUser, actor: AbstractBaseUser, now: dt.datetime | None = None
) -> bool:
    """Enable ``user`` again; False if already active (nothing written)."""
    now = now or timezone.now()
    with transaction.atomic():
        require_role(actor, *ADMINS, at=now)
        changed = (
            get_user_model().objects.filter(pk=user.pk, is_active=False).update(is_active=True)
        )
        if not changed:
            return False
        audit_record(
            actor=actor, action="user.enable", object_type="user",
            object_id=user.get_username(), now=now,
        )  # fmt: skip
        user.is_active = True
        return True


def _free_username(wanted: str, *, issuer: str, subject: str) -> str:
    """``wanted`` if no account has it, else one suffixed with a digest of the identity (the
    same identity always gets the same name, another never takes over an account)."""
    user_model = get_user_model()
    name = wanted[:120] or "user"
    if not user_model.objects.filter(username__iexact=name).exists():
        return name
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def _linkable_user(
    claims: Mapping[str, Any], policy: SignInPolicy, key: str, issuer: str
) -> AbstractBaseUser | None:
    """The existing account a first sign-in joins, only where the deployment chose a claim
    that names one: ``email`` (verified by the provider) or the username claim."""
    user_model = get_user_model()
    if policy.match_claim == "email":
        if claims.get("email_verified") is not True:
            raise SignInRefusedError("the provider has not verified this e-mail address")
        users = user_model.objects.filter(email__iexact=key)
    elif policy.match_claim == policy.username_claim:
        users = user_model.objects.filter(username__iexact=key)
    else:
        return None
    users = users.exclude(external_identities__issuer=issuer)
    found = list(users[:2])
    if len(found) > 1:
        raise SignInRefusedError(f"more than one account matches {policy.match_claim} {key!r}")
    return found[0] if found else None


def sso_sign_in(
    *,
    issuer: str,
    claims: Mapping[str, Any],
    policy: SignInPolicy,
    now: dt.datetime | None = None,
) -> AbstractBaseUser:
    """The account for a verified identity-provider answer, created or linked at the first
    sign-in, with the provider-governed roles set from the mapped groups (each grant and
    revocation audited). Refusals raise ``SignInRefusedError`` and write nothing."""
    now = now or timezone.now()
    raw_key = claims.get(policy.match_claim)
    if not isinstance(raw_key, str | int) or str(raw_key) == "":
        raise SignInRefusedError(f"the provider's answer has no {policy.match_claim!r} claim")
    key = str(raw_key)
    roles = mapped_roles(claims, policy)
    if policy.require_role and not roles:
        raise NoMappedRoleError(
            "none of your groups at the identity provider grants a role here; ask an admin"
        )
    source = f"oidc:{issuer}"
    details = {"source": "oidc", "issuer": issuer}
    user_model = get_user_model()
    with transaction.atomic():
        identity = (
            ExternalIdentity.objects.select_for_update()
            .select_related("user")
            .filter(issuer=issuer, claim=policy.match_claim, subject=key)
            .first()
        )
        if identity is None:
            user = _linkable_user(claims, policy, key, issuer)
            if user is None:
                username_claim = claims.get(policy.username_claim)
                wanted = username_claim if isinstance(username_claim, str) else key
                username = _free_username(wanted, issuer=issuer, subject=key)
                email = claims.get("email")
                user = user_model.objects.create_user(
                    username=username, email=email if isinstance(email, str) else ""
                )
                user.set_unusable_password()
                user.save(update_fields=["password"])
                action = "user.create"
            else:
                action = "user.link"
            identity = ExternalIdentity.objects.create(
                user=user,
                issuer=issuer,
                claim=policy.match_claim,
                subject=key,
                created_at=now,
                last_sign_in=now,
            )
            audit_record(
                actor=source,
                action=action,
                object_type="user",
                object_id=user.get_username(),
                details={**details, "claim": policy.match_claim, "subject": key},
                now=now,
            )
        user = identity.user
        if not user.is_active:
            raise AccountDisabledError(f"the account {user.get_username()} is disabled")
        managed = policy.managed_roles
        held = set(
            RoleAssignment.objects.filter(
                user=user, role__in=managed, revoked_at__isnull=True
            ).values_list("role", flat=True)
        )
        for role in sorted(roles - held):
            role_assign(user=user, role=role, actor=source, now=now, details=details)
        for role in sorted(held - roles):
            role_unassign(user=user, role=role, actor=source, now=now, details=details)
        ExternalIdentity.objects.filter(pk=identity.pk).update(last_sign_in=now)
        return user
