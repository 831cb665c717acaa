from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # REST API, its OpenAPI schema (/api/schema/) and Swagger UI (/api/docs/).
    path("api/", include("api.urls")),
    # Operator web console (server-rendered; docs/console.md) and its sign-in pages.
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="console/login.html", redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("console.urls")),
]
