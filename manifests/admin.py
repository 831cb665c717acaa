"""Admin: browse everything; immutable records (images, manifests) are read-only, and keys are
changed only through the key services (registration checks the key, revocation is audited)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from audit.admin import ReadOnlyAdmin
from manifests.models import (
    Approval,
    Delegation,
    DeviceClass,
    FirmwareDelta,
    FirmwareImage,
    Manifest,
    Release,
    ReleasePolicy,
    RoleAssignment,
    SigningKey,
    Vendor,
)


@admin.register(Vendor)
class VendorAdmin(admin.ModelAdmin):
    list_display = ("name", "domain", "uuid", "created_at")
    search_fields = ("name", "domain")
    readonly_fields = ("uuid", "domain", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        # The UUID is derived from the domain by the vendor service; creation goes through it.
        return False


@admin.register(DeviceClass)
class DeviceClassAdmin(admin.ModelAdmin):
    list_display = ("name", "vendor", "uuid", "payload_format", "manifest_profile", "component_id")
    list_filter = ("vendor", "payload_format", "manifest_profile")
    search_fields = ("name",)
    readonly_fields = (
        "vendor",
        "name",
        "uuid",
        "component_id",
        "payload_format",
        "manifest_profile",
        # Changed through device_class_set_delta (admin, audited), not here.
        "delta_updates",
        "delta_compression",
        "delta_patch_type",
        "created_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(FirmwareImage)
class FirmwareImageAdmin(ReadOnlyAdmin):
    list_display = ("filename", "kind", "version", "security_counter", "size", "sha256")
    list_filter = ("kind",)
    search_fields = ("sha256", "filename", "version")


@admin.register(FirmwareDelta)
class FirmwareDeltaAdmin(ReadOnlyAdmin):
    list_display = ("source", "target", "compression", "patch_type", "size", "sha256")
    list_filter = ("compression", "patch_type")
    search_fields = ("sha256", "source__sha256", "target__sha256")


@admin.register(Manifest)
class ManifestAdmin(ReadOnlyAdmin):
    list_display = (
        "device_class",
        "version",
        "sequence_number",
        "security_counter",
        "expires_at",
        "manifest_digest",
    )
    list_filter = ("vendor", "device_class")
    search_fields = ("manifest_digest", "version")
    exclude = ("envelope",)


@admin.register(SigningKey)
class SigningKeyAdmin(ReadOnlyAdmin):
    list_display = ("kid", "owner", "algorithm", "status", "valid_from", "valid_until")
    list_filter = ("algorithm", "status")
    search_fields = ("kid", "owner__username", "name")


@admin.register(Release)
class ReleaseAdmin(ReadOnlyAdmin):
    """Read-only: releases change only through the release services (approval is evaluated
    from signatures; revocation is audited)."""

    list_display = ("name", "kind", "status", "manifest", "created_by", "approved_at")
    list_filter = ("kind", "status")
    search_fields = ("name",)


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ("release", "signer", "role", "key", "signed_at")
    list_filter = ("role",)
    exclude = ("cose",)


@admin.register(RoleAssignment)
class RoleAssignmentAdmin(ReadOnlyAdmin):
    list_display = ("user", "role", "granted_by", "granted_at", "revoked_at")
    list_filter = ("role",)


@admin.register(ReleasePolicy)
class ReleasePolicyAdmin(ReadOnlyAdmin):
    list_display = ("device_class", "kind", "rules", "updated_by", "updated_at")


@admin.register(Delegation)
class DelegationAdmin(ReadOnlyAdmin):
    list_display = ("pk", "delegator", "role", "threshold", "expires_at", "revoked_at")
