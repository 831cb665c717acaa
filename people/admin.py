"""Linked provider identities, read-only: links are made at sign-in (audited) and end with the
account (``manage.py user disable`` stops it)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from people.models import ExternalIdentity


@admin.register(ExternalIdentity)
class ExternalIdentityAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("user", "issuer", "claim", "subject", "created_at", "last_sign_in")
    list_select_related = ("user",)
    search_fields = ("user__username", "subject", "issuer")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
