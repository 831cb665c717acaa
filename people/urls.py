"""Sign-in routes, mounted at the site root by config/urls.py. The OpenID Connect routes keep
mozilla-django-oidc's URL names (the library reverses ``oidc_authentication_callback``)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from people import oidc, views

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("oidc/authenticate/", oidc.SignInStartView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", oidc.SignInCallbackView.as_view(), name="oidc_authentication_callback"),
]
