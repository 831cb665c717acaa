"""Admin: the audit trail is append-only, so read-only here too."""

from __future__ import annotations

from django.contrib import admin

from audit.models import AuditEvent
from manifests.admin import ReadOnlyAdmin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("seq", "created_at", "actor", "action", "object_type", "object_id")
    list_filter = ("action", "object_type")
    search_fields = ("actor", "object_id")
