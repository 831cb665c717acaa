"""Errors of the people side: accounts and single sign-on.

Each class carries a stable ``code`` the CLI prints and the sign-in page shows; nothing was
written when one is raised."""

from __future__ import annotations


class PeopleError(Exception):
    """An account or sign-in operation was refused; nothing was written."""

    code = "people.error"


class UserExistsError(PeopleError):
    """A user with that username already exists."""

    code = "people.user_exists"


class InvalidUserError(PeopleError):
    """The username or e-mail address is not one an account can have."""

    code = "people.invalid_user"


class UnknownRoleError(PeopleError):
    """The role named is not one of the product's roles."""

    code = "people.unknown_role"


class WeakPasswordError(PeopleError):
    """The password fails the server's password validators."""

    code = "people.weak_password"


class ActorRequiredError(PeopleError):
    """Accounts are managed by an admin; only an empty server's first account needs none."""

    code = "people.actor_required"


class LastAdminError(PeopleError):
    """Disabling this user would leave no active superuser or admin."""

    code = "people.last_admin"


class SignInRefusedError(PeopleError):
    """A single sign-on was refused (the provider's answer is not one this server accepts)."""

    code = "people.sign_in_refused"


class AccountDisabledError(SignInRefusedError):
    """The account matched by the provider's identity is disabled."""

    code = "people.account_disabled"


class NoMappedRoleError(SignInRefusedError):
    """OIDC_REQUIRE_ROLE is on and none of the user's provider groups maps to a role."""

    code = "people.no_mapped_role"
