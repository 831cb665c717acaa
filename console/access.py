"""Who may open a console page or post a console form, and how refusals are shown.

The role sets are the services' own (``manifests.services.access``, which the API's matrix uses
too), checked with the services' ``require_role``: one table of who may do what, for the
services, the API and the console alike. The services check again behind this, so a page can
only be narrower than the service, never wider. Every page needs a signed-in user holding some
role; the auditor holds only read rights, so each of its POSTs is answered 403 before any
service runs. Refusals from the services themselves (``ManifestError`` / ``CampaignError``)
become messages on the page, never a 500.

The release pages a delegatee needs (the inbox, a release, the signature upload) are
``delegable``, as the API's approve endpoint is: there a role held only through a live delegation
naming the user counts too (``delegated_roles``), because ``release_approve`` accepts such a
signer; the service still decides per release.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import render

from campaigns.errors import CampaignError, SpecError
from manifests.errors import ManifestError, PermissionDeniedError
from manifests.services.access import READ, delegated_roles, require_role, roles_of

View = Callable[..., HttpResponse]
# What a console page may refuse with: the release side's and the campaign side's error trees.
SERVICE_ERRORS = (ManifestError, CampaignError)


def console_view(
    *,
    get: Iterable[str] | None = READ,
    post: Iterable[str] | None = None,
    delegable: bool = False,
) -> Callable[[View], View]:
    """Allow GET (and HEAD) to holders of ``get`` roles and POST to holders of ``post`` roles
    (held, or with ``delegable`` also delegated to them); any other method is 405. Anonymous
    users go to the login page (htmx requests are told to navigate there, so a fragment never
    swaps a login form into a page)."""
    allowed = {"GET": frozenset(get or ()), "POST": frozenset(post or ())}
    allowed["HEAD"] = allowed["GET"]
    methods = [m for m, roles in allowed.items() if roles]

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return HttpResponseNotAllowed(methods)
            if not request.user.is_authenticated:
                if request.headers.get("HX-Request"):
                    response = HttpResponse(status=204)
                    response["HX-Redirect"] = f"/login/?next={request.path}"
                    return response
                return redirect_to_login(request.get_full_path())
            needed = allowed[request.method or "GET"]
            try:
                require_role(request.user, *needed)
            except PermissionDeniedError as exc:
                delegated = delegated_roles(request.user)
                if not (delegable and request.user.is_active and delegated & needed):
                    return render(
                        request,
                        "console/forbidden.html",
                        {
                            "reason": str(exc),
                            "roles": sorted(roles_of(request.user)),
                            "delegated": sorted(delegated),
                        },
                        status=403,
                    )
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def report_refusal(request: HttpRequest, exc: Exception) -> None:
    """A refused service call as message(s) on the next page; spec errors one per field path."""
    if isinstance(exc, SpecError):
        for problem in exc.errors:
            messages.error(request, f"{problem.path or '<root>'}: {problem.reason}")
        return
    code = getattr(exc, "code", "error")
    messages.error(request, f"{exc} [{code}]")
