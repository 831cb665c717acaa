"""Shapes of the API's requests and responses. Read serializers mirror rows; input serializers
validate what a service needs and nothing more (the services hold every business rule)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import serializers

from api import webhooks
from api.filters import ID_MAX
from api.models import Webhook, WebhookDelivery
from audit.models import AuditEvent
from campaigns.fleet_selectors import group_devices
from campaigns.models import (
    Campaign,
    CampaignRevision,
    Device,
    DeviceGroup,
    EmergencyStop,
    GroupKind,
    Rollout,
)
from manifests.models import (
    Delegation,
    DeliveryMethod,
    DeliveryProfile,
    DeltaCompression,
    DeltaPatchType,
    DeviceClass,
    DeviceTrustPolicy,
    FirmwareImage,
    ImageEncryptionKey,
    Manifest,
    ManifestProfile,
    PayloadEncryptionKey,
    PolicyKind,
    Release,
    ReleaseKind,
    ReleasePolicy,
    Role,
    RoleAssignment,
    SigningKey,
    Vendor,
)

# Longest overlap a key rotation grants the old key: ten years. Beyond that the old key's end
# date would not fit a datetime (and no real rotation keeps a retired key that long).
MAX_KEY_OVERLAP_SECONDS = 10 * 366 * 86400
APPROVING_ROLES = [r for r in Role.values if r not in (Role.AUDITOR, Role.ADMIN)]


class UsernameField(serializers.SlugRelatedField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("slug_field", "username")
        kwargs.setdefault("help_text", "a username")
        if not kwargs.get("read_only"):
            kwargs.setdefault("queryset", get_user_model().objects.filter(is_active=True))
        super().__init__(**kwargs)


# --- errors --------------------------------------------------------------------------------------
class ErrorItemSerializer(serializers.Serializer):
    path = serializers.CharField(help_text="where: a field, a spec path; empty for the body")
    reason = serializers.CharField()
    code = serializers.CharField(required=False, help_text="the validator's code")
    row = serializers.IntegerField(
        required=False, help_text="an import file's line (header = 1; 0: the file itself)"
    )
    column = serializers.CharField(required=False, help_text="an import file's column")


class ErrorSerializer(serializers.Serializer):
    """The one error body of every failing request (``api.errors``)."""

    code = serializers.CharField(help_text="stable code, e.g. invalid, campaign.state")
    message = serializers.CharField()
    errors = ErrorItemSerializer(many=True, required=False, help_text="each problem found")
    suit_code = serializers.CharField(required=False, help_text="the SUIT decoder's code")
    path = serializers.CharField(required=False, help_text="where in the envelope")


# --- catalog -------------------------------------------------------------------------------------
class VendorSerializer(serializers.ModelSerializer):
    class Meta:
        model = Vendor
        fields = ["id", "name", "domain", "uuid", "created_at"]
        read_only_fields = ["id", "uuid", "created_at"]
        extra_kwargs = {"domain": {"validators": []}}  # duplicates: the service says 409


class DeviceClassSerializer(serializers.ModelSerializer):
    vendor_domain = serializers.CharField(source="vendor.domain", read_only=True)
    component_id = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, allow_empty=False
    )

    class Meta:
        model = DeviceClass
        fields = [
            "id",
            "vendor",
            "vendor_domain",
            "name",
            "uuid",
            "component_id",
            "payload_format",
            "delivery",
            "delivery_method",
            "manifest_profile",
            "delta_updates",
            "delta_compression",
            "delta_patch_type",
            "description",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "uuid",
            "created_at",
            "delta_updates",
            "delta_compression",
            "delta_patch_type",
        ]
        validators: list[Any] = []  # duplicates: the service says 409


class DeviceClassDeliverySerializer(serializers.Serializer):
    """PATCH of a device class: its delivery profile, the forced method, the manifest profile and
    its delta setting (each unchanged when left out; at least one is given)."""

    delivery = serializers.ChoiceField(choices=DeliveryProfile.choices, required=False)
    delivery_method = serializers.ChoiceField(choices=DeliveryMethod.choices, required=False)
    manifest_profile = serializers.ChoiceField(
        choices=ManifestProfile.choices,
        required=False,
        help_text="standard (no custom SUIT keys) or extended (security counter, payload format)",
    )
    delta_updates = serializers.BooleanField(
        required=False,
        help_text="the class's devices apply detools deltas (offered where the device's "
        "installed image is known exactly)",
    )
    delta_compression = serializers.ChoiceField(
        choices=DeltaCompression.choices,
        required=False,
        help_text="the decompressor the devices have (heatshrink or lzma)",
    )
    delta_patch_type = serializers.ChoiceField(
        choices=DeltaPatchType.choices,
        required=False,
        help_text="sequential (the result into the other slot) or in-place (one slot)",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError(
                "give delivery, delivery_method, manifest_profile, delta_updates, "
                "delta_compression and/or delta_patch_type"
            )
        return attrs


class ImageSerializer(serializers.ModelSerializer):
    uploaded_by = UsernameField(read_only=True)

    class Meta:
        model = FirmwareImage
        fields = [
            "sha256",
            "size",
            "kind",
            "version",
            "security_counter",
            "info",
            "filename",
            "uploaded_by",
            "created_at",
        ]
        read_only_fields = fields


class ImageUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="the raw or MCUboot-signed firmware image")


class ManifestSerializer(serializers.ModelSerializer):
    device_class_name = serializers.CharField(source="device_class.__str__", read_only=True)
    author_kid = serializers.CharField(source="author_key.kid", read_only=True)
    created_by = UsernameField(read_only=True)
    release = serializers.SerializerMethodField()

    class Meta:
        model = Manifest
        fields = [
            "manifest_digest",
            "vendor",
            "device_class",
            "device_class_name",
            "image",
            "version",
            "sequence_number",
            "security_counter",
            "expires_at",
            "image_digest",
            "image_size",
            "uri",
            "author_kid",
            "created_by",
            "created_at",
            "release",
        ]
        read_only_fields = fields

    def get_release(self, obj: Manifest) -> str | None:
        # The reverse one-to-one raises (an AttributeError subclass) when there is no release.
        release = getattr(obj, "release", None)
        return release.name if release else None


class ManifestDetailSerializer(ManifestSerializer):
    decoded = serializers.JSONField(read_only=True, help_text="the envelope decoded (to_json)")

    class Meta(ManifestSerializer.Meta):
        fields = [*ManifestSerializer.Meta.fields, "decoded"]
        read_only_fields = fields


class ManifestUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="the author-signed SUIT envelope (CBOR or hex)")


# --- releases ------------------------------------------------------------------------------------
class ReleaseSerializer(serializers.ModelSerializer):
    manifest = serializers.CharField(source="manifest.manifest_digest", read_only=True)
    device_class = serializers.CharField(source="manifest.device_class.__str__", read_only=True)
    version = serializers.CharField(source="manifest.version", read_only=True)
    created_by = UsernameField(read_only=True)
    revoked_by = UsernameField(read_only=True, allow_null=True)

    class Meta:
        model = Release
        fields = [
            "name",
            "kind",
            "status",
            "manifest",
            "device_class",
            "version",
            "target_groups",
            "notes",
            "created_by",
            "created_at",
            "approved_at",
            "revoked_at",
            "revoked_by",
            "revoke_reason",
        ]
        read_only_fields = fields


class SignatureRefSerializer(serializers.Serializer):
    signer = serializers.CharField()
    kid = serializers.CharField()
    at = serializers.DateTimeField()


class CreditSerializer(serializers.Serializer):
    person = serializers.CharField()
    via = serializers.CharField(help_text='"direct" or "delegation:<id>"')
    signatures = SignatureRefSerializer(many=True)


class RoleTallySerializer(serializers.Serializer):
    required = serializers.IntegerField()
    missing = serializers.IntegerField()
    credited = CreditSerializer(many=True)


class IgnoredSignatureSerializer(serializers.Serializer):
    signer = serializers.CharField()
    role = serializers.CharField()
    kid = serializers.CharField()
    why = serializers.CharField()


class ApprovalTallySerializer(serializers.Serializer):
    """``manage.py release show --json``: the verdict evaluated now from the signatures."""

    release = serializers.CharField()
    status = serializers.CharField()
    kind = serializers.CharField()
    approved_now = serializers.BooleanField()
    manifest_digest = serializers.CharField()
    device_class = serializers.CharField()
    version = serializers.CharField()
    sequence_number = serializers.IntegerField()
    security_counter = serializers.IntegerField()
    expires = serializers.CharField(allow_null=True)
    summary = serializers.CharField()
    tally = serializers.DictField(child=RoleTallySerializer())
    ignored = IgnoredSignatureSerializer(many=True)


class ReleaseDetailSerializer(ReleaseSerializer):
    approval = ApprovalTallySerializer(read_only=True)

    class Meta(ReleaseSerializer.Meta):
        fields = [*ReleaseSerializer.Meta.fields, "approval"]
        read_only_fields = fields


class ReleaseCreateSerializer(serializers.Serializer):
    manifest = serializers.CharField(
        min_length=8, max_length=64, help_text="manifest digest (hex, or a unique prefix)"
    )
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(choices=ReleaseKind.choices, default=ReleaseKind.NORMAL)
    target_groups = serializers.ListField(child=serializers.CharField(max_length=100), default=list)
    notes = serializers.CharField(allow_blank=True, default="")
    submit = serializers.BooleanField(default=False, help_text="submit for approval at once")


class ApprovalUploadSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=APPROVING_ROLES)
    signature = serializers.CharField(help_text="the COSE_Sign1 bytes, base64")

    def validate_signature(self, value: str) -> bytes:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError("not valid base64") from None


class ApprovalResultSerializer(serializers.Serializer):
    approval = serializers.IntegerField()
    approved = serializers.BooleanField()
    summary = serializers.CharField()
    release = ReleaseDetailSerializer()


# --- device trust policies -----------------------------------------------------------------------
TRUST_ROLES = ["author", "qa", "security", "fleet_operator"]  # manifests.device_trust.ROLES
MAX_TRUST_KEYS = 64  # keys a role may list in one draft (a policy document is at most 64 KiB)


class TrustRoleRuleSerializer(serializers.Serializer):
    threshold = serializers.IntegerField(
        min_value=1, max_value=MAX_TRUST_KEYS, help_text="distinct keys that must sign"
    )
    kids = serializers.ListField(
        child=serializers.RegexField(r"^[0-9a-fA-F]{64}$", help_text="a registered key's kid"),
        min_length=1,
        max_length=MAX_TRUST_KEYS,
        help_text="kids of registered, usable keys (the role's trusted keys)",
    )


class TrustPolicySignatureSerializer(serializers.Serializer):
    signer = serializers.CharField(source="signer.username")
    kid = serializers.CharField(source="key.kid")
    signed_at = serializers.DateTimeField()


class TrustPolicySerializer(serializers.ModelSerializer):
    device_class_name = serializers.CharField(source="device_class.__str__", read_only=True)
    created_by = UsernameField(read_only=True, allow_null=True)
    signature_count = serializers.IntegerField(
        read_only=True, help_text="signatures uploaded so far"
    )

    class Meta:
        model = DeviceTrustPolicy
        fields = [
            "id",
            "device_class",
            "device_class_name",
            "version",
            "status",
            "expires_at",
            "body_sha256",
            "sha256",
            "reason",
            "signature_count",
            "created_by",
            "created_at",
            "released_at",
        ]
        read_only_fields = fields


class TrustPolicyDetailSerializer(TrustPolicySerializer):
    roles = serializers.DictField(
        child=TrustRoleRuleSerializer(), help_text="per role: threshold and trusted kids"
    )
    signatures = TrustPolicySignatureSerializer(many=True)
    refusal = serializers.CharField(
        allow_null=True,
        help_text="a draft: why the class's devices would refuse it as signed so far (null: "
        "they would accept it); null once released",
    )

    class Meta(TrustPolicySerializer.Meta):
        fields = [*TrustPolicySerializer.Meta.fields, "roles", "signatures", "refusal"]
        read_only_fields = fields


class TrustPolicyDraftSerializer(serializers.Serializer):
    device_class = serializers.PrimaryKeyRelatedField(queryset=DeviceClass.objects.all())
    roles = serializers.DictField(
        child=TrustRoleRuleSerializer(),
        allow_empty=False,
        help_text=f"role ({', '.join(TRUST_ROLES)}) -> threshold and kids; security is required",
    )
    expires_at = serializers.DateTimeField(help_text="ISO 8601; in the future")
    reason = serializers.CharField(max_length=2000, allow_blank=True, default="")

    def validate_roles(self, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(TRUST_ROLES))
        if unknown:
            raise serializers.ValidationError(
                f"unknown role(s) {', '.join(unknown)}: use {', '.join(TRUST_ROLES)}"
            )
        return value


class TrustPolicySignUploadSerializer(serializers.Serializer):
    signature = serializers.CharField(
        help_text="the COSE_Sign1 over the policy body (GET .../body/), base64"
    )

    def validate_signature(self, value: str) -> bytes:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError("not valid base64") from None


class TrustPolicySignResultSerializer(serializers.Serializer):
    released = serializers.BooleanField(help_text="this signature completed the policy")
    policy = TrustPolicyDetailSerializer()


class TrustVersionCountSerializer(serializers.Serializer):
    version = serializers.IntegerField(allow_null=True, help_text="null: no policy known held")
    devices = serializers.IntegerField()


class TrustHolderSerializer(serializers.Serializer):
    endpoint = serializers.CharField()
    trust_policy_version = serializers.IntegerField(allow_null=True)
    trust_policy_sha256 = serializers.CharField(allow_blank=True)
    trust_policy_confirmed_at = serializers.DateTimeField(allow_null=True)
    protection = serializers.ChoiceField(
        choices=["device", "server_only"],
        help_text="device: it checks the approval thresholds itself; server_only: only the "
        "server's release checks stand for it",
    )


class TrustHoldingsSerializer(serializers.Serializer):
    device_class = serializers.IntegerField()
    device_class_name = serializers.CharField()
    delivery = serializers.CharField(help_text="the class's delivery profile (image: MCUboot)")
    device_side_thresholds = serializers.BooleanField(
        help_text="the class's devices can check thresholds (a SUIT class with a released "
        "policy); false for image-profile classes, always"
    )
    statement = serializers.CharField(help_text="device-side thresholds / server only, and why")
    current_version = serializers.IntegerField(allow_null=True)
    current_sha256 = serializers.CharField(allow_blank=True)
    devices = serializers.IntegerField()
    protected_on_device = serializers.IntegerField()
    server_only = serializers.IntegerField()
    by_version = TrustVersionCountSerializer(many=True)
    holders = TrustHolderSerializer(many=True, help_text="one page of the class's devices")
    next_offset = serializers.IntegerField(allow_null=True)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)


class OptionalReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


# --- keys, policies, roles, delegations ----------------------------------------------------------
class KeySerializer(serializers.ModelSerializer):
    owner = UsernameField(read_only=True)
    replaced_by = serializers.SlugRelatedField(
        slug_field="kid", read_only=True, allow_null=True, help_text="the successor's kid"
    )

    class Meta:
        model = SigningKey
        fields = [
            "kid",
            "owner",
            "name",
            "algorithm",
            "public_key_pem",
            "status",
            "valid_from",
            "valid_until",
            "revoked_at",
            "revocation_reason",
            "replaced_by",
            "created_at",
        ]
        read_only_fields = fields


class KeyRegisterSerializer(serializers.Serializer):
    public_key_pem = serializers.CharField(max_length=10_000)
    name = serializers.CharField(max_length=200, allow_blank=True, default="")
    valid_from = serializers.DateTimeField(required=False, allow_null=True, default=None)
    valid_until = serializers.DateTimeField(required=False, allow_null=True, default=None)
    owner = UsernameField(
        required=False, allow_null=True, default=None, help_text="default: you (admin only)"
    )


class KeyRotateSerializer(serializers.Serializer):
    new_public_key_pem = serializers.CharField(max_length=10_000)
    overlap_seconds = serializers.IntegerField(
        min_value=0,
        max_value=MAX_KEY_OVERLAP_SECONDS,
        default=7 * 86400,
        help_text="how long the old key stays valid (at most ten years)",
    )


class KeyRevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)
    effective_at = serializers.DateTimeField(
        required=False, allow_null=True, default=None, help_text="default now; may be past"
    )


class PayloadKeySerializer(serializers.ModelSerializer):
    """A class key-encryption key as the API shows it: its kid and facts, never its bytes."""

    created_by = UsernameField(read_only=True)
    algorithm = serializers.SerializerMethodField(help_text="A128KW or A256KW")

    class Meta:
        model = PayloadEncryptionKey
        fields = [
            "kid",
            "device_class",
            "algorithm",
            "size",
            "status",
            "created_by",
            "created_at",
            "retired_at",
        ]
        read_only_fields = fields

    def get_algorithm(self, key: PayloadEncryptionKey) -> str:
        return f"A{8 * key.size}KW"


class KeyFileField(serializers.CharField):
    """A key file's content, base64: the raw 16 or 32 bytes, or their hex. Never echoed back,
    not even in an error."""

    def to_internal_value(self, data: Any) -> bytes:  # type: ignore[override]
        text = super().to_internal_value(data)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError("not base64") from None


class PayloadKeyCreateSerializer(serializers.Serializer):
    device_class = serializers.PrimaryKeyRelatedField(queryset=DeviceClass.objects.all())
    key_file = KeyFileField(
        required=False,
        allow_null=True,
        default=None,
        max_length=200,
        write_only=True,
        help_text="a key file's content, base64 (raw 16/32 bytes or their hex); default: the "
        "server generates a 16-byte key",
    )


class PayloadKeyRotateSerializer(serializers.Serializer):
    key_file = KeyFileField(
        required=False,
        allow_null=True,
        default=None,
        max_length=200,
        write_only=True,
        help_text="a key file's content, base64 (raw 16/32 bytes or their hex); default: the "
        "server generates a 16-byte key",
    )


class ImageKeySerializer(serializers.ModelSerializer):
    """A class's MCUboot image encryption key: public, so shown whole."""

    created_by = UsernameField(read_only=True)

    class Meta:
        model = ImageEncryptionKey
        fields = [
            "kid",
            "device_class",
            "kind",
            "public_key_pem",
            "status",
            "created_by",
            "created_at",
            "retired_at",
        ]
        read_only_fields = fields


class ImageKeySetSerializer(serializers.Serializer):
    device_class = serializers.PrimaryKeyRelatedField(queryset=DeviceClass.objects.all())
    public_key_pem = serializers.CharField(
        max_length=10_000, help_text="P-256 or X25519 public key (PEM) the devices decrypt with"
    )


class PolicySerializer(serializers.ModelSerializer):
    updated_by = UsernameField(read_only=True)

    class Meta:
        model = ReleasePolicy
        fields = ["id", "device_class", "kind", "rules", "updated_by", "updated_at"]
        read_only_fields = ["id", "updated_by", "updated_at"]
        validators: list[Any] = []


class PolicySetSerializer(serializers.Serializer):
    device_class = serializers.PrimaryKeyRelatedField(
        queryset=DeviceClass.objects.all(), allow_null=True, default=None
    )
    kind = serializers.ChoiceField(choices=PolicyKind.choices, default=PolicyKind.NORMAL)
    rules = serializers.DictField(child=serializers.IntegerField(), allow_empty=False)


class EffectivePolicyQuerySerializer(serializers.Serializer):
    device_class = serializers.IntegerField(min_value=1, max_value=ID_MAX)
    kind = serializers.ChoiceField(choices=PolicyKind.choices, default=PolicyKind.NORMAL)


class EffectivePolicySerializer(serializers.Serializer):
    device_class = serializers.IntegerField()
    kind = serializers.CharField()
    rules = serializers.DictField(child=serializers.IntegerField())
    source = serializers.CharField(help_text='"device class", "default" or "built-in"')


class RoleAssignmentSerializer(serializers.ModelSerializer):
    user = UsernameField(read_only=True)
    granted_by = UsernameField(read_only=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = RoleAssignment
        fields = ["id", "user", "role", "granted_by", "granted_at", "revoked_at", "active"]
        read_only_fields = fields

    def get_active(self, obj: RoleAssignment) -> bool:
        return obj.revoked_at is None


class RoleGrantSerializer(serializers.Serializer):
    user = UsernameField()
    role = serializers.ChoiceField(choices=Role.choices)


class DelegationSerializer(serializers.ModelSerializer):
    delegator = UsernameField(read_only=True)
    delegatees = UsernameField(many=True, read_only=True)

    class Meta:
        model = Delegation
        fields = [
            "id",
            "delegator",
            "role",
            "delegatees",
            "threshold",
            "scope_device_classes",
            "scope_groups",
            "parent",
            "expires_at",
            "revoked_at",
            "revoke_reason",
            "created_at",
        ]
        read_only_fields = fields


class DelegationCreateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=APPROVING_ROLES)
    delegatees = UsernameField(many=True)
    threshold = serializers.IntegerField(min_value=1, default=1)
    expires_at = serializers.DateTimeField()
    scope_device_classes = serializers.PrimaryKeyRelatedField(
        queryset=DeviceClass.objects.all(), many=True, allow_null=True, default=None
    )
    scope_groups = serializers.ListField(
        child=serializers.CharField(max_length=100), allow_null=True, default=None
    )
    parent = serializers.PrimaryKeyRelatedField(
        queryset=Delegation.objects.all(), allow_null=True, default=None
    )


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    roles = serializers.ListField(child=serializers.ChoiceField(choices=Role.choices))


# --- fleet ---------------------------------------------------------------------------------------
class DeviceSerializer(serializers.ModelSerializer):
    device_class_name = serializers.SerializerMethodField()

    class Meta:
        model = Device
        fields = [
            "id",
            "endpoint",
            "vendor",
            "device_class",
            "device_class_name",
            "manufacturer",
            "model",
            "serial",
            "firmware_version",
            "sequence_number",
            "security_counter",
            "fw_state",
            "fw_result",
            "fw_reported_at",
            "clock_offset_seconds",
            "device_time",
            "clock_trusted_at",
            "info_read_at",
            "online",
            "last_seen",
            "registered_at",
            "registration_expires_at",
            "lifetime",
            "binding",
            "lwm2m_version",
            "queue_mode",
            "gateway_id",
            "tags",
            "trust_policy_version",
            "trust_policy_confirmed_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_device_class_name(self, obj: Device) -> str | None:
        return str(obj.device_class) if obj.device_class_id else None


class RolloutSerializer(serializers.ModelSerializer):
    campaign = serializers.SlugRelatedField(slug_field="name", read_only=True)
    device = serializers.SlugRelatedField(slug_field="endpoint", read_only=True)
    report_verdict = serializers.CharField(
        read_only=True,
        help_text="the server's verdict on the device's signed SUIT report of its last attempt: "
        "verified, or why it was not taken (report_forged, report_replayed, "
        "report_wrong_manifest, report_malformed, report_missing, report_failure); empty: no "
        "report expected or none yet (docs/suit.md, 'Device reports')",
    )

    class Meta:
        model = Rollout
        fields = [
            "id",
            "campaign",
            "device",
            "stage",
            "state",
            "reason",
            "detail",
            "fw_result",
            "report_verdict",
            "attempts",
            "next_attempt_at",
            "device_clock",
            "dispatched_at",
            "deadline_at",
            "finished_at",
            "updated_at",
        ]
        read_only_fields = fields


class DeviceDetailSerializer(DeviceSerializer):
    rollouts = RolloutSerializer(many=True, read_only=True, source="recent_rollouts")

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "rollouts"]
        read_only_fields = fields


class CampaignSerializer(serializers.ModelSerializer):
    release = serializers.SlugRelatedField(
        slug_field="name",
        read_only=True,
        allow_null=True,
        help_text="null: a trust-policy campaign",
    )
    trust_policy = serializers.SlugRelatedField(
        slug_field="version",
        read_only=True,
        allow_null=True,
        help_text="a trust-policy campaign: the version of the device trust policy it rolls out "
        "(else null)",
    )
    target = serializers.CharField(
        source="target_label",
        read_only=True,
        help_text="what the campaign rolls out: the release's name or 'trust policy vN'",
    )
    device_class_name = serializers.CharField(source="device_class.__str__", read_only=True)
    created_by = UsernameField(read_only=True)
    target_member_count = serializers.SerializerMethodField(
        help_text="a target.group campaign: the members it froze at creation (else null)"
    )

    class Meta:
        model = Campaign
        fields = [
            "name",
            "release",
            "trust_policy",
            "target",
            "device_class",
            "device_class_name",
            "status",
            "revision",
            "current_stage",
            "pause_reason",
            "paused_by_engine",
            "spec",
            "spec_digest",
            "target_group",
            "target_member_count",
            "created_by",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_target_member_count(self, obj: Campaign) -> int | None:
        return None if obj.target_members is None else len(obj.target_members)


class SpecInputSerializer(serializers.Serializer):
    """A campaign spec: ``spec`` (the mapping) or ``document`` (YAML or JSON text)."""

    spec = serializers.DictField(required=False, help_text="the spec as a JSON object")
    document = serializers.CharField(
        required=False, trim_whitespace=False, help_text="the spec as YAML or JSON text"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("spec" in attrs) == ("document" in attrs):
            raise serializers.ValidationError("give exactly one of spec or document")
        return attrs


class StageStatusSerializer(serializers.Serializer):
    name = serializers.CharField()
    index = serializers.IntegerField()
    status = serializers.CharField()
    current = serializers.BooleanField()
    planned = serializers.IntegerField()
    tally = serializers.DictField(child=serializers.IntegerField())
    reasons = serializers.DictField(child=serializers.IntegerField())
    methods = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="rollouts dispatched by delivery method (pull, push)",
    )
    payloads = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="rollouts last sent a delta (delta), or the full image after a failed delta "
        "(fallback)",
    )
    gate_approved_by = serializers.CharField(allow_null=True)


class CampaignStatusSerializer(serializers.Serializer):
    campaign = serializers.CharField()
    status = serializers.CharField()
    release = serializers.CharField(allow_null=True, help_text="null: a trust-policy campaign")
    trust_policy = serializers.IntegerField(
        allow_null=True, help_text="a trust-policy campaign: the policy's version (else null)"
    )
    target = serializers.CharField(help_text="the release's name or 'trust policy vN'")
    revision = serializers.IntegerField()
    current_stage = serializers.IntegerField()
    pause_reason = serializers.CharField(allow_blank=True)
    start_at = serializers.CharField(
        allow_null=True, help_text="the spec's start_at (ISO 8601, UTC); null: no schedule"
    )
    scheduled = serializers.CharField(
        allow_null=True,
        help_text="'scheduled for YYYY-MM-DD HH:MM UTC' while the start is still ahead "
        "(nothing is dispatched before it); null once it may dispatch",
    )
    server_time_only = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="rollouts dispatched under the server's use-before check alone, by the "
        "device's clock state then (clockless, unknown, off)",
    )
    delivery = serializers.CharField(help_text="the device class's delivery profile now")
    delivery_method = serializers.CharField(help_text="auto, or the method the class forces")
    stages = StageStatusSerializer(many=True)


class CampaignApplyResultSerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=["created", "revised", "unchanged"])
    campaign = CampaignSerializer()
    status = CampaignStatusSerializer()


class ThresholdEnforcementSerializer(serializers.Serializer):
    device = serializers.IntegerField(
        help_text="cohort devices that check the approval thresholds themselves (a SUIT class "
        "with a released device trust policy, and the device's install of one confirmed by its "
        "signed report)"
    )
    server_only = serializers.IntegerField(
        help_text="cohort devices protected by the server's release checks only (image "
        "profile, no released device trust policy, or no confirmed install of one)"
    )
    why = serializers.CharField()


class PlanDeltaSerializer(serializers.Serializer):
    devices = serializers.IntegerField(help_text="eligible devices offered a delta")
    bytes_saved = serializers.IntegerField(
        help_text="bytes those deltas save on the wire against the full image"
    )


class PlanStageSerializer(serializers.Serializer):
    name = serializers.CharField()
    devices = serializers.IntegerField()
    methods = serializers.DictField(
        child=serializers.IntegerField(), help_text="planned devices by delivery method"
    )
    delta = PlanDeltaSerializer()
    already_held = serializers.IntegerField(
        help_text="a trust-policy campaign: devices of the stage the registry records holding "
        "the policy already (excluded as trust_policy_held); 0 for a release"
    )


class PlanBlockSerializer(serializers.Serializer):
    reason = serializers.CharField()
    detail = serializers.CharField()


class PlanSerializer(serializers.Serializer):
    campaign = serializers.CharField()
    release = serializers.CharField(allow_null=True, help_text="null: a trust-policy campaign")
    trust_policy = serializers.IntegerField(
        allow_null=True, help_text="a trust-policy campaign: the policy's version (else null)"
    )
    target = serializers.CharField(help_text="the release's name or 'trust policy vN'")
    device_class = serializers.CharField()
    release_blocked = PlanBlockSerializer(allow_null=True)
    cohort = serializers.IntegerField()
    delivery = serializers.CharField()
    delivery_method = serializers.CharField()
    image_size = serializers.IntegerField(
        help_text="the release's full image, or the trust policy document, in bytes"
    )
    stages = PlanStageSerializer(many=True)
    excluded = serializers.DictField(child=serializers.IntegerField())
    server_time_only = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="eligible devices dispatched under the server's use-before check alone, by "
        "clock state (clockless, unknown, off)",
    )
    threshold_enforcement = ThresholdEnforcementSerializer()


class TimelineEntrySerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    at = serializers.CharField()
    actor = serializers.CharField()
    action = serializers.CharField()
    details = serializers.JSONField()


class CampaignRevisionSerializer(serializers.ModelSerializer):
    created_by = UsernameField(read_only=True)

    class Meta:
        model = CampaignRevision
        fields = ["revision", "spec", "spec_digest", "source", "diff", "created_by", "created_at"]
        read_only_fields = fields


class ResumeSerializer(serializers.Serializer):
    retry_failed = serializers.BooleanField(default=True)


class EmergencyStopSerializer(serializers.ModelSerializer):
    release = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True, help_text="scope: one release"
    )
    created_by = UsernameField(read_only=True)
    lifted_by = UsernameField(read_only=True, allow_null=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = EmergencyStop
        fields = [
            "id",
            "scope",
            "release",
            "device_class",
            "reason",
            "active",
            "created_by",
            "created_at",
            "lifted_by",
            "lifted_at",
        ]
        read_only_fields = fields

    def get_active(self, obj: EmergencyStop) -> bool:
        return obj.lifted_at is None


class EmergencyStopCreateSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)
    release = serializers.SlugRelatedField(
        slug_field="name", queryset=Release.objects.all(), allow_null=True, default=None
    )
    device_class = serializers.PrimaryKeyRelatedField(
        queryset=DeviceClass.objects.all(), allow_null=True, default=None
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("release") and attrs.get("device_class"):
            raise serializers.ValidationError("scope by release or by device_class, not both")
        return attrs


class RollbackPrepareSerializer(serializers.Serializer):
    from_release = serializers.SlugRelatedField(slug_field="name", queryset=Release.objects.all())
    image_sha256 = serializers.SlugRelatedField(
        slug_field="sha256",
        queryset=FirmwareImage.objects.all(),
        allow_null=True,
        default=None,
        help_text="a re-signed image of the good firmware (default: the good release's image)",
    )
    use_before = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ManifestParamsSerializer(serializers.Serializer):
    vendor_id = serializers.UUIDField()
    class_id = serializers.UUIDField()
    component_id = serializers.ListField(child=serializers.CharField())
    payload_format = serializers.CharField()
    profile = serializers.CharField(help_text="the class's manifest profile: standard | extended")
    sequence_number = serializers.IntegerField()
    version = serializers.CharField()
    security_counter = serializers.IntegerField()
    image_digest = serializers.CharField()
    image_size = serializers.IntegerField()
    use_before = serializers.DateTimeField()


class RollbackPlanSerializer(serializers.Serializer):
    from_release = serializers.CharField()
    roll_forward_to = serializers.CharField()
    image = serializers.CharField()
    sequence_number = serializers.IntegerField()
    security_counter = serializers.IntegerField()
    affected_devices = serializers.IntegerField()
    affected_endpoints = serializers.ListField(child=serializers.CharField())
    manifest_params = ManifestParamsSerializer()


class RollbackLaunchSerializer(serializers.Serializer):
    release = serializers.SlugRelatedField(
        slug_field="name", queryset=Release.objects.all(), help_text="the approved rollback"
    )
    from_release = serializers.SlugRelatedField(slug_field="name", queryset=Release.objects.all())
    campaign = serializers.CharField(max_length=63, required=False, default="")


# --- audit ---------------------------------------------------------------------------------------
class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "actor",
            "action",
            "object_type",
            "object_id",
            "details",
            "created_at",
            "prev_hash",
            "hash",
        ]
        read_only_fields = fields


class ChainVerdictSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField()
    head = serializers.CharField()
    broken_seq = serializers.IntegerField(allow_null=True)
    problem = serializers.CharField(allow_blank=True)


# --- webhooks ------------------------------------------------------------------------------------
class WebhookSerializer(serializers.ModelSerializer):
    secret = serializers.CharField(
        write_only=True,
        required=False,
        min_length=16,
        max_length=200,
        help_text="HMAC key; generated when omitted and returned once, on creation",
    )
    events = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        help_text='fnmatch patterns over audit actions, e.g. ["campaign.*"]; empty: all',
    )

    class Meta:
        model = Webhook
        fields = ["id", "name", "url", "secret", "events", "active", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate_url(self, value: str) -> str:
        refusal = webhooks.url_refusal(value)
        if refusal is not None:
            raise serializers.ValidationError(refusal, code="target_refused")
        return value


class WebhookCreatedSerializer(WebhookSerializer):
    signing_secret = serializers.CharField(read_only=True, source="secret")

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "signing_secret"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "webhook",
            "event_seq",
            "event_action",
            "payload",
            "status",
            "attempts",
            "response_status",
            "last_error",
            "created_at",
            "last_attempt_at",
            "delivered_at",
        ]
        read_only_fields = fields


# --- fleet management: tags, groups, import ------------------------------------------------------
def _tag_list(**kwargs: Any) -> serializers.ListField:
    # Forms are checked by campaigns.fleet (TagError, 400 with its code); here only the shape.
    return serializers.ListField(
        child=serializers.CharField(max_length=64), max_length=100, **kwargs
    )


class TagChangeSerializer(serializers.Serializer):
    """Add and/or remove tags, or replace all of them with ``set`` ([] clears them)."""

    add = _tag_list(required=False, default=list)
    remove = _tag_list(required=False, default=list)
    set = _tag_list(required=False, allow_null=True, default=None)


class DeviceFilterSerializer(serializers.Serializer):
    """Devices matching every given field (at least one)."""

    device_class = serializers.CharField(
        max_length=454, required=False, help_text="vendor-domain/class-name"
    )
    version = serializers.CharField(
        max_length=64, required=False, help_text="installed firmware version (exact)"
    )
    tag = serializers.CharField(max_length=64, required=False, help_text="carrying this tag")
    state = serializers.ChoiceField(
        choices=["idle", "downloading", "downloaded", "updating"],
        required=False,
        help_text="LwM2M /5/0/3 State",
    )
    online = serializers.BooleanField(required=False, allow_null=True, default=None)


class DeviceSelectionSerializer(serializers.Serializer):
    """Devices named by an explicit list of endpoints, or by a filter (one of them)."""

    endpoints = serializers.ListField(
        child=serializers.CharField(max_length=255), max_length=100_000, required=False
    )
    filter = DeviceFilterSerializer(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("endpoints" in attrs) == ("filter" in attrs):
            raise serializers.ValidationError("give endpoints or a filter (one of them)")
        return attrs


class BulkTagSerializer(TagChangeSerializer, DeviceSelectionSerializer):
    """The devices: an explicit list of endpoints, or a filter (one of them)."""


class TagResultSerializer(serializers.Serializer):
    matched = serializers.IntegerField(help_text="devices selected")
    changed = serializers.IntegerField(help_text="devices whose tags changed")


class DeviceGroupSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    devices = serializers.SerializerMethodField(help_text="members now")

    class Meta:
        model = DeviceGroup
        fields = ["name", "description", "kind", "filter", "devices", "created_by", "created_at"]
        read_only_fields = fields

    def get_devices(self, obj: DeviceGroup) -> int:
        if obj.kind == GroupKind.STATIC and hasattr(obj, "static_count"):
            return int(obj.static_count)
        return group_devices(obj).count()


class DeviceGroupCreateSerializer(DeviceSelectionSerializer):
    """A static group (``endpoints``) or a saved filter (``filter``)."""

    name = serializers.CharField(max_length=63)
    description = serializers.CharField(max_length=2000, required=False, default="")


class ImportUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="the CSV file")


class ImportResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    with_psk = serializers.IntegerField()
