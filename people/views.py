"""The console's sign-in page: a password form (unless turned off) and "Sign in with <provider>"
when single sign-on is configured."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse

from people.oidc import provider_name, sso_enabled


class LoginView(auth_views.LoginView):
    template_name = "console/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context.update(
            local_login=settings.CONSOLE_LOCAL_LOGIN,
            sso_enabled=sso_enabled(),
            sso_name=provider_name(),
        )
        return context

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.CONSOLE_LOCAL_LOGIN:
            context = self.get_context_data(
                local_refused="Password sign-in is turned off on this server."
            )
            return self.render_to_response(context, status=403)
        response: HttpResponse = super().post(request, *args, **kwargs)
        return response
