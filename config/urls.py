from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # REST API, its OpenAPI schema (/api/schema/) and Swagger UI (/api/docs/).
    path("api/", include("api.urls")),
    # Operator web console (server-rendered; docs/console.md) and its sign-in pages.
    path("", include("people.urls")),
    path("", include("console.urls")),
]

# Under /api/ every error is the API's JSON error body, a 404 or a 500 included (api/errors.py);
# elsewhere these fall back to Django's own pages.
handler400 = "api.errors.bad_request"
handler403 = "api.errors.permission_denied"
handler404 = "api.errors.page_not_found"
handler500 = "api.errors.server_error"
