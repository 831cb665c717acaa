"""Single sign-on for the console with OpenID Connect (authorization code flow with PKCE),
built on mozilla-django-oidc, which holds the state, nonce and PKCE verifier in the session and
checks them at the callback.

What this module adds to the library:

* the provider's endpoints from its discovery document (``OIDC_OP_DISCOVERY``), fetched on first
  use and cached for an hour, explicit ``OIDC_OP_*_ENDPOINT`` settings winning; so that a
  password sign-in (every configured backend is built for each ``authenticate()``) never waits on
  the provider;
* ID-token checks the library leaves out: audience (our client id; ``azp`` when there are
  several), issuer, and the presence of ``exp``/``iat``/``sub`` besides the signature by the
  provider's JWKS key;
* accounts matched by (issuer, claim) instead of by e-mail, and roles mapped from the
  provider's groups (``people.services.sso_sign_in``);
* refusals shown on the login page with their reason instead of a bare 400;
* a disabled account's session stops working at its next request, as with password sign-in.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.views.generic import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from people.errors import PeopleError
from people.mapping import SignInPolicy
from people.services import sso_sign_in

logger = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/openid-configuration"
DISCOVERY_TTL_SECONDS = 3600
# setting name -> key of the discovery document
DISCOVERED = {
    "OIDC_OP_ISSUER": "issuer",
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_cache_lock = threading.Lock()


def sso_enabled() -> bool:
    return bool(getattr(settings, "OIDC_RP_CLIENT_ID", None))


def provider_name() -> str:
    return str(getattr(settings, "OIDC_PROVIDER_NAME", "") or "single sign-on")


def discovery_document(url: str) -> dict[str, Any]:
    """The provider's discovery document (cached); its ``issuer`` must be the URL it was
    fetched under (OpenID Connect Discovery 1.0, section 4.3)."""
    url = url.rstrip("/")
    document_url = url if url.endswith(WELL_KNOWN) else url + WELL_KNOWN
    with _cache_lock:
        cached = _cache.get(document_url)
        if cached and time.monotonic() - cached[0] < DISCOVERY_TTL_SECONDS:
            return cached[1]
    response = requests.get(document_url, timeout=import_from_settings("OIDC_TIMEOUT", 10))
    response.raise_for_status()
    document = response.json()
    issuer = str(document.get("issuer", "")).rstrip("/")
    if issuer != document_url.removesuffix(WELL_KNOWN).rstrip("/"):
        raise ImproperlyConfigured(
            f"the discovery document at {document_url} names the issuer {issuer!r}"
        )
    with _cache_lock:
        _cache[document_url] = (time.monotonic(), document)
    return document


def oidc_setting(attr: str, *args: Any) -> Any:
    """A mozilla-django-oidc setting, endpoints filled in from the discovery document."""
    if attr in DISCOVERED:
        explicit = getattr(settings, attr, None)
        if explicit:
            return explicit
        url = getattr(settings, "OIDC_OP_DISCOVERY", None)
        if url:
            value = discovery_document(url).get(DISCOVERED[attr])
            if value:
                return value
        if args:
            return args[0]
        raise ImproperlyConfigured(f"{attr} is not set and OIDC_OP_DISCOVERY does not give it")
    return import_from_settings(attr, *args)


def sign_in_policy() -> SignInPolicy:
    return SignInPolicy(
        match_claim=settings.OIDC_MATCH_CLAIM,
        username_claim=settings.OIDC_USERNAME_CLAIM,
        role_claim=settings.OIDC_ROLE_CLAIM,
        role_map=settings.OIDC_ROLE_MAP,
        require_role=settings.OIDC_REQUIRE_ROLE,
    )


def _refuse(request: HttpRequest, reason: str) -> None:
    """Remember why a sign-in failed, for the login page (the callback view shows it)."""
    logger.warning("single sign-on refused: %s", reason)
    request.sso_refusal = reason  # type: ignore[attr-defined]


def _setting_property(name: str, *default: Any) -> property:
    return property(lambda self: oidc_setting(name, *default))


class ConsoleOIDCBackend(OIDCAuthenticationBackend):  # type: ignore[misc]
    """Signs in through the provider at the callback; answers None to every other call."""

    get_settings = staticmethod(oidc_setting)
    OIDC_OP_TOKEN_ENDPOINT = _setting_property("OIDC_OP_TOKEN_ENDPOINT")
    OIDC_OP_USER_ENDPOINT = _setting_property("OIDC_OP_USER_ENDPOINT", None)
    OIDC_OP_JWKS_ENDPOINT = _setting_property("OIDC_OP_JWKS_ENDPOINT", None)
    OIDC_RP_CLIENT_ID = _setting_property("OIDC_RP_CLIENT_ID")
    OIDC_RP_CLIENT_SECRET = _setting_property("OIDC_RP_CLIENT_SECRET")
    OIDC_RP_SIGN_ALGO = _setting_property("OIDC_RP_SIGN_ALGO", "RS256")
    OIDC_RP_IDP_SIGN_KEY = None  # keys come from the provider's JWKS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Nothing is read here: Django builds every backend for each authenticate() call,
        # password sign-ins included, which must not depend on the provider being reachable.
        from django.contrib.auth import get_user_model

        self.UserModel = get_user_model()

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> AbstractBaseUser | None:
        if request is None or not sso_enabled() or "code" not in request.GET:
            return None
        try:
            user: AbstractBaseUser | None = super().authenticate(request, **kwargs)
        except PeopleError as exc:
            _refuse(request, f"{exc} [{exc.code}]")
            return None
        except SuspiciousOperation as exc:
            _refuse(request, f"the identity provider's answer was refused: {exc}")
            return None
        except (requests.RequestException, ValueError, ImproperlyConfigured) as exc:
            _refuse(request, f"the identity provider could not be reached or answered badly: {exc}")
            return None
        return user

    def _verify_jws(self, payload: str, key: Any) -> dict[str, Any]:
        """Signature by the provider's key, and the claims the library does not check."""
        try:
            alg = jwt.get_unverified_header(payload).get("alg")
        except jwt.InvalidTokenError as exc:
            raise SuspiciousOperation(f"the ID token is malformed ({exc})") from None
        if alg != self.OIDC_RP_SIGN_ALGO:
            raise SuspiciousOperation(
                f"the ID token is signed with {alg!r}, not {self.OIDC_RP_SIGN_ALGO}"
            )
        client_id = self.OIDC_RP_CLIENT_ID
        try:
            claims: dict[str, Any] = jwt.decode(
                payload,
                key,
                algorithms=[alg],
                audience=client_id,
                issuer=oidc_setting("OIDC_OP_ISSUER"),
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                leeway=30,
            )
        except jwt.InvalidTokenError as exc:
            raise SuspiciousOperation(f"the ID token is not valid ({exc})") from None
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
            raise SuspiciousOperation("the ID token has several audiences and azp is not ours")
        return claims

    def get_or_create_user(
        self, access_token: str, id_token: str, payload: dict[str, Any]
    ) -> AbstractBaseUser:
        userinfo: dict[str, Any] = {}
        if self.OIDC_OP_USER_ENDPOINT:
            userinfo = self.get_userinfo(access_token, id_token, payload)
            if str(userinfo.get("sub", payload["sub"])) != str(payload["sub"]):
                raise SuspiciousOperation("the userinfo answer is about another subject")
        # The signed ID token wins where both name a claim.
        claims = {**userinfo, **payload}
        return sso_sign_in(issuer=payload["iss"], claims=claims, policy=sign_in_policy())

    def get_user(self, user_id: Any) -> AbstractBaseUser | None:
        # The library's get_user skips the is_active check Django's ModelBackend makes.
        user: AbstractBaseUser | None = ModelBackend.get_user(self, user_id)
        return user


class SignInStartView(OIDCAuthenticationRequestView):  # type: ignore[misc]
    """Redirects to the provider's authorization endpoint (state, nonce, PKCE in the session)."""

    get_settings = staticmethod(oidc_setting)
    OIDC_OP_AUTH_ENDPOINT = _setting_property("OIDC_OP_AUTHORIZATION_ENDPOINT")
    OIDC_RP_CLIENT_ID = _setting_property("OIDC_RP_CLIENT_ID")

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        try:
            response: HttpResponse = super().get(request)
        except (requests.RequestException, ValueError, ImproperlyConfigured) as exc:
            logger.warning("single sign-on cannot start: %s", exc)
            messages.error(request, f"{provider_name()} is unavailable: {exc}")
            return HttpResponseRedirect(reverse("login"))
        return response


class SignInCallbackView(OIDCAuthenticationCallbackView):  # type: ignore[misc]
    """The provider's redirect back: state checked by the library, then the backend."""

    get_settings = staticmethod(oidc_setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        # A missing, replayed or foreign state is refused before any token call (the library
        # would too, but with a bare 400 or no reason at all).
        if "code" in request.GET and "state" not in request.GET:
            _refuse(request, "the sign-in answer carries no state")
            return self.login_failure()
        states = request.session.get("oidc_states") or {}
        if (
            "state" in request.GET
            and not request.GET.get("error")
            and (request.GET["state"] not in states)
        ):
            _refuse(request, "the sign-in answer does not belong to this browser session")
            return self.login_failure()
        response: HttpResponse = super().get(request)
        return response

    def login_failure(self) -> HttpResponse:
        reason = getattr(self.request, "sso_refusal", None)
        if reason is None:
            error = self.request.GET.get("error")
            reason = f"the identity provider answered {error!r}" if error else "it did not complete"
        messages.error(self.request, f"Sign-in with {provider_name()} failed: {reason}")
        return HttpResponseRedirect(reverse("login"))
