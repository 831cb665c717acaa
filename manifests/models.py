"""Release-side records.

Manifests and images are immutable: a manifest row stores the exact signed envelope bytes and the
fields decoded from them (indexed for queries); changing anything means a new manifest. The decoded
columns are derived from the bytes at import and never edited.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from manifests.errors import ImmutableRecordError


class ImmutableModel(models.Model):
    """Refuses updates and deletes through the ORM once a row exists."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise ImmutableRecordError(f"{type(self).__name__} {self.pk} is immutable")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ImmutableRecordError(f"{type(self).__name__} {self.pk} cannot be deleted")


class Vendor(models.Model):
    name = models.CharField(max_length=200)
    domain = models.CharField(max_length=253, unique=True)
    # UUIDv5(NAMESPACE_DNS, domain), as SUIT's vendor-identifier condition expects.
    uuid = models.UUIDField(unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return f"{self.name} ({self.domain})"


class PayloadFormat(models.TextChoices):
    RAW = "raw", "Raw full binary image"
    MCUBOOT = "mcuboot", "MCUboot-signed full image"


class DeliveryProfile(models.TextChoices):
    """What a device class's Package URI names (docs/lwm2m.md, "Delivery profiles")."""

    IMAGE = "image", "The image itself (MCUboot/LwM2M clients)"
    SUIT = "suit", "The SUIT envelope; the payload from the manifest's URI"
    SUIT_INTEGRATED = "suit-integrated", "The SUIT envelope with the payload integrated"


class ManifestProfile(models.TextChoices):
    """Which SUIT envelopes a device class takes (docs/suit.md, "Manifest profiles")."""

    STANDARD = "standard", "Standard SUIT: no custom keys, the sequence number is the floor"
    EXTENDED = "extended", "Custom security counter and payload format (-257/-258)"


class DeltaCompression(models.TextChoices):
    """How a class's devices decompress delta patches (detools' device-side decoders)."""

    HEATSHRINK = "heatshrink", "heatshrink (a few hundred bytes of RAM)"
    LZMA = "lzma", "LZMA (smaller patches, more RAM)"


class DeltaPatchType(models.TextChoices):
    """How a class's devices apply a delta (detools patch types)."""

    SEQUENTIAL = "sequential", "Sequential: the result written to the other slot (MCUboot swap)"
    IN_PLACE = "in-place", "In place: one slot rewritten segment by segment (no second slot)"


class DeliveryMethod(models.TextChoices):
    """How the payload reaches the device: Object 5 pull (/5/0/1) or push (/5/0/0)."""

    AUTO = "auto", "From the device's /5/0/9 and /5/0/8"
    PULL = "pull", "Pull only (write the Package URI)"
    PUSH = "push", "Push only (block-wise write of the package)"


class DeviceClass(models.Model):
    vendor = models.ForeignKey(Vendor, on_delete=models.PROTECT, related_name="device_classes")
    name = models.CharField(max_length=200)
    # UUIDv5(vendor uuid, name), as SUIT's class-identifier condition expects.
    uuid = models.UUIDField(unique=True, editable=False)
    # The one component (slot) firmware of this class installs into, hex of each id element.
    # Fixed per class so a manifest cannot redirect an install elsewhere.
    component_id = models.JSONField(default=list)
    payload_format = models.CharField(
        max_length=16, choices=PayloadFormat.choices, default=PayloadFormat.MCUBOOT
    )
    # New classes take the image itself; classes that existed before profiles were introduced
    # were migrated to "suit" (what they were doing).
    delivery = models.CharField(
        max_length=16, choices=DeliveryProfile.choices, default=DeliveryProfile.IMAGE
    )
    delivery_method = models.CharField(
        max_length=8, choices=DeliveryMethod.choices, default=DeliveryMethod.AUTO
    )
    # What its manifests carry: "extended" (the product's custom security counter and payload
    # format, what every class did before profiles) or "standard" (no custom keys, so stock SUIT
    # processors accept the envelope; the sequence number is the anti-rollback floor).
    manifest_profile = models.CharField(
        max_length=16, choices=ManifestProfile.choices, default=ManifestProfile.EXTENDED
    )
    # The class's devices apply detools deltas (docs/architecture.md, section 4): a device whose
    # installed image the server knows exactly may get a delta instead of the full image.
    delta_updates = models.BooleanField(default=False)
    delta_compression = models.CharField(
        max_length=16, choices=DeltaCompression.choices, default=DeltaCompression.HEATSHRINK
    )
    delta_patch_type = models.CharField(
        max_length=16, choices=DeltaPatchType.choices, default=DeltaPatchType.SEQUENTIAL
    )
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["vendor__domain", "name"]
        constraints = [
            models.UniqueConstraint(fields=["vendor", "name"], name="uniq_device_class_per_vendor")
        ]
        verbose_name_plural = "device classes"

    def __str__(self) -> str:
        return f"{self.vendor.domain}/{self.name}"

    @property
    def component_id_bytes(self) -> tuple[bytes, ...]:
        return tuple(bytes.fromhex(part) for part in self.component_id)


class FirmwareImage(ImmutableModel):
    # Content address: the SHA-256 of the whole file, which is what SUIT's image-digest covers.
    sha256 = models.CharField(max_length=64, unique=True)
    size = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=16, choices=PayloadFormat.choices)
    # From the MCUboot header/TLVs; empty / null for raw images.
    version = models.CharField(max_length=64, blank=True)
    security_counter = models.PositiveBigIntegerField(null=True, blank=True)
    info = models.JSONField(default=dict)
    filename = models.CharField(max_length=255, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.filename or 'image'} {self.version or '-'} ({self.sha256[:12]})"


class FirmwareDelta(ImmutableModel):
    """The detools delta from one stored image to another, computed once per (source, target,
    compression, patch type) and kept in the image store under its own SHA-256
    (``manifests.images.delta`` frames it with both images' digests)."""

    source = models.ForeignKey(FirmwareImage, on_delete=models.PROTECT, related_name="+")
    target = models.ForeignKey(FirmwareImage, on_delete=models.PROTECT, related_name="deltas")
    compression = models.CharField(max_length=16, choices=DeltaCompression.choices)
    patch_type = models.CharField(
        max_length=16, choices=DeltaPatchType.choices, default=DeltaPatchType.SEQUENTIAL
    )
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source", "target", "compression", "patch_type"],
                name="uniq_delta_per_pair_and_form",
            )
        ]

    def __str__(self) -> str:
        return f"delta {self.source.sha256[:12]} -> {self.target.sha256[:12]} ({self.size} B)"


class SigningAlgorithm(models.TextChoices):
    ES256 = "ES256", "ES256 (ECDSA P-256 / SHA-256)"
    ED25519 = "Ed25519", "Ed25519 (EdDSA)"


class KeyStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    ROTATED = "rotated", "Rotated (valid until the end of its overlap)"
    REVOKED = "revoked", "Revoked"


class SigningKey(models.Model):
    """A public key whose COSE signatures the server accepts. Private keys never reach us."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="signing_keys"
    )
    name = models.CharField(max_length=200, blank=True)
    algorithm = models.CharField(max_length=16, choices=SigningAlgorithm.choices)
    public_key_pem = models.TextField()
    # RFC 9679 COSE key thumbprint (hex): what COSE_Sign1 headers carry as kid.
    kid = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=KeyStatus.choices, default=KeyStatus.ACTIVE)
    valid_from = models.DateTimeField()
    valid_until = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revocation_reason = models.TextField(blank=True)
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="replaces"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner_id", "created_at"]

    def __str__(self) -> str:
        return f"{self.algorithm} {self.kid[:16]} ({self.owner})"


class Manifest(ImmutableModel):
    # The exact envelope bytes as signed by the author; served and verified as stored.
    envelope = models.BinaryField()
    # SHA-256 over the bstr-wrapped manifest (the SUIT_Digest in the authentication wrapper).
    manifest_digest = models.CharField(max_length=64, unique=True)
    vendor = models.ForeignKey(Vendor, on_delete=models.PROTECT, related_name="manifests")
    device_class = models.ForeignKey(
        DeviceClass, on_delete=models.PROTECT, related_name="manifests"
    )
    image = models.ForeignKey(FirmwareImage, on_delete=models.PROTECT, related_name="manifests")
    version = models.CharField(max_length=64)
    # Numeric version parts (major, minor, revision, build), for ordering and rollback checks.
    version_parts = models.JSONField(default=list)
    sequence_number = models.PositiveBigIntegerField()
    security_counter = models.PositiveBigIntegerField()
    expires_at = models.DateTimeField(null=True, blank=True)
    image_digest = models.CharField(max_length=64)
    image_size = models.PositiveBigIntegerField()
    uri = models.CharField(max_length=2048, blank=True)
    author_key = models.ForeignKey(
        SigningKey, on_delete=models.PROTECT, related_name="authored_manifests"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="manifests"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["device_class", "sequence_number"], name="uniq_sequence_per_class"
            )
        ]
        indexes = [
            models.Index(fields=["device_class", "-sequence_number"]),
            models.Index(fields=["vendor", "device_class", "version"]),
            models.Index(fields=["expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.device_class} v{self.version} seq {self.sequence_number}"

    @property
    def envelope_bytes(self) -> bytes:
        return bytes(self.envelope)


class Role(models.TextChoices):
    AUTHOR = "author", "Release engineer (author)"
    QA = "qa", "QA"
    SECURITY = "security", "Security"
    FLEET_OPERATOR = "fleet_operator", "Fleet operator"
    AUDITOR = "auditor", "Auditor (read-only)"
    ADMIN = "admin", "Administrator"


class RoleAssignment(models.Model):
    """A user holds a role from ``granted_at`` until ``revoked_at``; history is kept."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="role_assignments"
    )
    role = models.CharField(max_length=32, choices=Role.choices)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    granted_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "role"],
                condition=models.Q(revoked_at__isnull=True),
                name="uniq_active_role",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} as {self.role}"


class PolicyKind(models.TextChoices):
    NORMAL = "normal", "Release policy"
    INCIDENT = "incident", "Incident (rollback) policy"


class ReleasePolicy(models.Model):
    """Per-role thresholds; ``device_class`` null is the global default for its kind."""

    device_class = models.ForeignKey(
        DeviceClass, null=True, blank=True, on_delete=models.PROTECT, related_name="policies"
    )
    kind = models.CharField(max_length=16, choices=PolicyKind.choices, default=PolicyKind.NORMAL)
    rules = models.JSONField()
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "release policies"
        constraints = [
            models.UniqueConstraint(
                fields=["device_class", "kind"],
                condition=models.Q(device_class__isnull=False),
                name="uniq_policy_per_class",
            ),
            models.UniqueConstraint(
                fields=["kind"],
                condition=models.Q(device_class__isnull=True),
                name="uniq_default_policy",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} policy for {self.device_class or 'all classes'}: {self.rules}"


class ReleaseKind(models.TextChoices):
    NORMAL = "normal", "Normal"
    ROLLBACK = "rollback", "Rollback (roll-forward to an earlier image)"


class ReleaseStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    PENDING = "pending", "Pending approval"
    APPROVED = "approved", "Approved"
    REVOKED = "revoked", "Revoked"


class Release(models.Model):
    """A manifest on its way to devices. ``status`` records the last evaluation for display and
    queries; every dispatch re-evaluates the policy from the signatures."""

    manifest = models.OneToOneField(Manifest, on_delete=models.PROTECT, related_name="release")
    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=ReleaseKind.choices, default=ReleaseKind.NORMAL)
    status = models.CharField(
        max_length=16, choices=ReleaseStatus.choices, default=ReleaseStatus.DRAFT
    )
    # Fleet groups this release is limited to (empty: the whole device class).
    target_groups = models.JSONField(default=list, blank=True)
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="releases"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    revoke_reason = models.TextField(blank=True)
    # The released envelope, frozen the first time the release is approved: the manifest bytes
    # unchanged and the author's and each counted approver's COSE_Sign1 in its authentication
    # wrapper. What suit and suit-integrated devices download; never rewritten afterwards (a
    # later approval does not alter a published file). Null until then.
    released_envelope = models.BinaryField(null=True, blank=True, editable=False)
    released_sha256 = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def released_envelope_bytes(self) -> bytes | None:
        return None if self.released_envelope is None else bytes(self.released_envelope)


class Approval(models.Model):
    """One uploaded COSE_Sign1 over the manifest digest, stored as the exact bytes received."""

    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="approvals")
    signer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approvals"
    )
    key = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="approvals")
    role = models.CharField(max_length=32, choices=Role.choices)
    cose = models.BinaryField()
    cose_sha256 = models.CharField(max_length=64)
    signed_at = models.DateTimeField()

    class Meta:
        ordering = ["signed_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["release", "cose_sha256"], name="uniq_approval_bytes"),
            models.UniqueConstraint(
                fields=["release", "key", "role"], name="uniq_approval_per_key_role"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.signer} as {self.role} on {self.release}"


class Delegation(models.Model):
    """``delegator`` lets ``delegatees`` approve in ``role`` within a scope: ``threshold`` of
    them together count as the delegator's one approval. ``parent`` links a sub-delegation."""

    delegator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="delegations_made"
    )
    role = models.CharField(max_length=32, choices=Role.choices)
    delegatees = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="delegations_held")
    threshold = models.PositiveSmallIntegerField(default=1)
    # null: every device class / every group; a list restricts.
    scope_device_classes = models.JSONField(null=True, blank=True)
    scope_groups = models.JSONField(null=True, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.TextField(blank=True)
    created_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"delegation {self.pk}: {self.delegator} {self.role}"


class TrustPolicyStatus(models.TextChoices):
    DRAFT = "draft", "Draft (collecting signatures)"
    RELEASED = "released", "Released (devices accept it)"


class DeviceTrustPolicy(models.Model):
    """A device class's trust policy (docs/suit.md, "Device trust policy"): which keys a SUIT
    device of the class trusts per role and how many must sign. ``body`` is the exact signed
    CBOR; ``document`` the signed policy, stored once it is released and never changed."""

    device_class = models.ForeignKey(
        DeviceClass, on_delete=models.PROTECT, related_name="trust_policies"
    )
    version = models.PositiveIntegerField()
    body = models.BinaryField()
    body_sha256 = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    status = models.CharField(
        max_length=16, choices=TrustPolicyStatus.choices, default=TrustPolicyStatus.DRAFT
    )
    document = models.BinaryField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["device_class_id", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["device_class", "version"], name="uniq_trust_policy_version"
            )
        ]
        verbose_name_plural = "device trust policies"

    def __str__(self) -> str:
        return f"trust policy v{self.version} of {self.device_class} ({self.status})"

    @property
    def body_bytes(self) -> bytes:
        return bytes(self.body)


class TrustPolicySignature(models.Model):
    """One COSE_Sign1 over a trust policy's body, by a registered key, as received."""

    policy = models.ForeignKey(
        DeviceTrustPolicy, on_delete=models.PROTECT, related_name="signatures"
    )
    signer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    key = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="+")
    cose = models.BinaryField()
    signed_at = models.DateTimeField()

    class Meta:
        ordering = ["signed_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "key"], name="uniq_trust_policy_key")
        ]

    def __str__(self) -> str:
        return f"{self.signer} on {self.policy}"


class PayloadKeyStatus(models.TextChoices):
    ACTIVE = "active", "active"
    RETIRED = "retired", "retired"


class PayloadEncryptionKey(models.Model):
    """A device class's key-encryption key (AES-KW) for encrypted payloads, Fernet-encrypted at
    rest (``manifests.payload_keys``). One active per class; rotation retires the old one, which
    stays so releases wrapped under it can still be described."""

    device_class = models.ForeignKey(
        DeviceClass, on_delete=models.PROTECT, related_name="payload_keys"
    )
    kid = models.CharField(max_length=64, unique=True)  # hex; in every recipient it wraps for
    key_encrypted = models.BinaryField()
    size = models.PositiveSmallIntegerField()  # 16 (A128KW) or 32 (A256KW)
    status = models.CharField(
        max_length=16, choices=PayloadKeyStatus.choices, default=PayloadKeyStatus.ACTIVE
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField()
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["device_class"],
                condition=models.Q(status="active"),
                name="one_active_payload_key_per_class",
            )
        ]

    def __str__(self) -> str:
        return f"{self.device_class} payload key {self.kid} ({self.status})"


class EncryptedPayload(ImmutableModel):
    """An image encrypted for a device class (one content key per row): the ciphertext is stored
    content-addressed beside the images and served at ``/fw/i/<ciphertext sha256>``; the
    encryption info is what the author puts into the signed manifest."""

    image = models.ForeignKey(
        FirmwareImage, on_delete=models.PROTECT, related_name="encrypted_payloads"
    )
    device_class = models.ForeignKey(
        DeviceClass, on_delete=models.PROTECT, related_name="encrypted_payloads"
    )
    payload_key = models.ForeignKey(
        PayloadEncryptionKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    ciphertext_sha256 = models.CharField(max_length=64, unique=True)
    ciphertext_size = models.PositiveBigIntegerField()
    encryption_info = models.BinaryField()
    encryption_info_sha256 = models.CharField(max_length=64, unique=True)
    # Hex kids of every recipient (the class KEK and/or device keys): who can decrypt it.
    recipient_kids = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["image"])]

    def __str__(self) -> str:
        return f"{self.device_class} encrypted payload {self.ciphertext_sha256[:12]}"


class ImageEncryptionKey(models.Model):
    """The public key a device class's MCUboot decrypts images with (ECIES-P256 or
    ECIES-X25519; the devices hold the private key): what ``imgtool sign --encrypt`` encrypts an
    image for. One active per class; replacing it retires the old one. Public: nothing secret."""

    device_class = models.ForeignKey(
        DeviceClass, on_delete=models.PROTECT, related_name="image_encryption_keys"
    )
    kind = models.CharField(max_length=16)  # "ecies-p256" | "ecies-x25519"
    public_key_pem = models.TextField()
    # First 8 bytes (hex) of the SHA-256 of the SubjectPublicKeyInfo: names the key.
    kid = models.CharField(max_length=16, unique=True)
    status = models.CharField(
        max_length=16, choices=PayloadKeyStatus.choices, default=PayloadKeyStatus.ACTIVE
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField()
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["device_class"],
                condition=models.Q(status="active"),
                name="one_active_image_key_per_class",
            )
        ]

    def __str__(self) -> str:
        return f"{self.device_class} image key {self.kid} ({self.kind}, {self.status})"
