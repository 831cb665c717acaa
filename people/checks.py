"""Start-up checks of the sign-in settings (``manage.py check``, and every management command):
a half-configured provider must stop the deployment, not surface at someone's first sign-in."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from manifests.models import Role

SIGN_ALGORITHMS = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"}


@checks.register(checks.Tags.security)
def sign_in_settings(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    sso = bool(settings.OIDC_RP_CLIENT_ID)
    if not sso and not settings.CONSOLE_LOCAL_LOGIN:
        errors.append(
            checks.Error(
                "CONSOLE_LOCAL_LOGIN=0 without OIDC_RP_CLIENT_ID: nobody could sign in",
                id="people.E001",
            )
        )
    if not sso:
        return errors
    if not settings.OIDC_RP_CLIENT_SECRET:
        errors.append(checks.Error("OIDC_RP_CLIENT_SECRET is not set", id="people.E002"))
    if not settings.OIDC_OP_DISCOVERY:
        missing = [
            name
            for name in (
                "OIDC_OP_ISSUER",
                "OIDC_OP_AUTHORIZATION_ENDPOINT",
                "OIDC_OP_TOKEN_ENDPOINT",
                "OIDC_OP_JWKS_ENDPOINT",
            )
            if not getattr(settings, name)
        ]
        if missing:
            errors.append(
                checks.Error(
                    f"single sign-on needs OIDC_OP_DISCOVERY or {', '.join(missing)}",
                    id="people.E003",
                )
            )
    if settings.OIDC_RP_SIGN_ALGO not in SIGN_ALGORITHMS:
        errors.append(
            checks.Error(
                f"OIDC_RP_SIGN_ALGO={settings.OIDC_RP_SIGN_ALGO!r}: use an asymmetric algorithm "
                f"verified with the provider's JWKS ({', '.join(sorted(SIGN_ALGORITHMS))})",
                id="people.E004",
            )
        )
    unknown = sorted(
        {role for roles in settings.OIDC_ROLE_MAP.values() for role in roles} - set(Role.values)
    )
    if unknown:
        errors.append(
            checks.Error(
                f"OIDC_ROLE_MAP names unknown roles {', '.join(unknown)}; roles are "
                f"{', '.join(Role.values)}",
                id="people.E005",
            )
        )
    if settings.OIDC_ROLE_MAP and not settings.OIDC_ROLE_CLAIM:
        errors.append(
            checks.Error("OIDC_ROLE_MAP is set but OIDC_ROLE_CLAIM is not", id="people.E006")
        )
    if settings.OIDC_REQUIRE_ROLE and not settings.OIDC_ROLE_MAP:
        errors.append(
            checks.Error(
                "OIDC_REQUIRE_ROLE=1 without OIDC_ROLE_MAP would refuse everyone",
                id="people.E007",
            )
        )
    return errors
