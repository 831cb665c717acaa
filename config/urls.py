from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # REST API, its OpenAPI schema (/api/schema/) and Swagger UI (/api/docs/).
    path("api/", include("api.urls")),
]
