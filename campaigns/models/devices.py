"""The device registry: one row per LwM2M endpoint, as last reported by the gateways.

Rows are written only by ``campaigns.device_services`` (the gateway reaches them through Celery
tasks), so two gateway processes never race on the same fields without a transaction. Nothing the
gateway needs after a restart lives only in its memory: which gateway holds a device, its
registration id and lifetime are here, and a device that re-registers elsewhere simply moves.
"""

from __future__ import annotations

import uuid

from django.db import connection, models

__all__ = [
    "CommandStatus",
    "Device",
    "DeviceCommand",
    "DeviceEncryptionKey",
    "DeviceEvent",
    "DevicePSK",
]


class DeviceQuerySet(models.QuerySet["Device"]):
    def tagged(self, tag: str) -> DeviceQuerySet:
        """Devices carrying ``tag`` (an empty tag selects all). Tags are a JSON list:
        PostgreSQL answers containment itself (and with the index); SQLite has none, so rows
        are narrowed by text first and checked exactly in Python."""
        if not tag:
            return self
        if connection.vendor == "postgresql":
            return self.filter(tags__contains=[tag])
        candidates = self.filter(tags__icontains=tag).values_list("pk", "tags")
        return self.filter(pk__in=[pk for pk, tags in candidates if tag in (tags or [])])


class Device(models.Model):
    endpoint = models.CharField(max_length=255, unique=True)
    # Mapped from /3/0/0 Manufacturer and /3/0/1 Model Number; null until a match exists.
    vendor = models.ForeignKey(
        "manifests.Vendor", null=True, blank=True, on_delete=models.PROTECT, related_name="devices"
    )
    device_class = models.ForeignKey(
        "manifests.DeviceClass",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="devices",
    )
    manufacturer = models.CharField(max_length=255, blank=True)
    model = models.CharField(max_length=255, blank=True)
    serial = models.CharField(max_length=255, blank=True)
    # Installed firmware as last reported (/3/0/3); sequence number and security counter are
    # derived from the manifest of that version (or the one last installed through us).
    firmware_version = models.CharField(max_length=64, blank=True)
    # SHA-256 of the image the device runs, known exactly only when it installed a release's
    # image through us (confirmed by its reported version); "" otherwise, and cleared when it
    # reports another version. A delta is offered only on this digest.
    installed_image_digest = models.CharField(max_length=64, blank=True, default="", db_default="")
    sequence_number = models.PositiveBigIntegerField(null=True, blank=True)
    security_counter = models.PositiveBigIntegerField(default=0)
    # Object 5 as last reported: /5/0/3 State, /5/0/5 Update Result, /5/0/8, /5/0/9.
    fw_state = models.PositiveSmallIntegerField(null=True, blank=True)
    fw_result = models.PositiveSmallIntegerField(null=True, blank=True)
    fw_reported_at = models.DateTimeField(null=True, blank=True)
    fw_protocols = models.JSONField(default=list, blank=True)
    fw_delivery_method = models.PositiveSmallIntegerField(null=True, blank=True)
    # Device clock minus server clock in seconds (from /3/0/13), for expiry reasoning.
    clock_offset_seconds = models.FloatField(null=True, blank=True)
    # /3/0/13 Current Time as reported (Unix seconds) at the read that gave the offset: tells a
    # device counting from 1970/2000 (no clock) from one whose clock is set wrongly
    # (``campaigns.clock``). A float, not a datetime: a device may report any 64-bit time.
    device_time = models.FloatField(null=True, blank=True)
    # An operator accepted this device's clock as it is (``device_clock_trust``, audited): an
    # off clock no longer holds it back; the server's use-before check still applies.
    clock_trusted_at = models.DateTimeField(null=True, blank=True)
    # When the gateway last reported device information (/3/0, /5/0/8-9) for this device.
    info_read_at = models.DateTimeField(null=True, blank=True)
    # Registration interface state.
    online = models.BooleanField(default=False)
    last_seen = models.DateTimeField(null=True, blank=True)
    registration_id = models.CharField(max_length=64, blank=True, db_index=True)
    registered_at = models.DateTimeField(null=True, blank=True)
    registration_expires_at = models.DateTimeField(null=True, blank=True)
    lifetime = models.PositiveIntegerField(default=86400)
    binding = models.CharField(max_length=16, blank=True)
    lwm2m_version = models.CharField(max_length=8, blank=True)
    queue_mode = models.BooleanField(default=False)
    gateway_id = models.CharField(max_length=128, blank=True, db_index=True)
    # The peer that made the registration, so that another gateway of the deployment (or this
    # one restarted) can check an Update's sender before adopting the registration
    # (docs/lwm2m.md, "Shared registrations"): NoSec "host:port" as the gateway saw it ("" when
    # it did not fit), DTLS the authenticated PSK identity (the endpoint; "" for NoSec).
    registration_address = models.CharField(max_length=64, blank=True)
    registration_identity = models.CharField(max_length=255, blank=True)
    # Alternate root path from the registration payload ("" means "/").
    registration_root_path = models.TextField(blank=True)
    # Object links from the registration payload, e.g. ["/3/0", "/5/0"].
    lwm2m_objects = models.JSONField(default=list, blank=True)
    tags = models.JSONField(default=list, blank=True)
    # The public key (PEM, Ed25519 or P-256) the device signs its SUIT reports with, set at
    # provisioning (``device_report_key_set``). A device of a SUIT class without one is not
    # dispatched to: its success could never be verified (docs/suit.md, "Device reports").
    report_key = models.TextField(blank=True, default="", db_default="")
    # The device trust policy the device is known to hold (docs/suit.md, "Device trust
    # policy"): version and SHA-256 of the released document, set only when a delivery of it
    # was confirmed by the device (Object 5 success and, for a SUIT class, its signed report
    # naming the document's digest; ``campaigns.trust_delivery``). Never lowered. Null: the
    # server does not know of any, and counts the device as protected by the server only.
    trust_policy_version = models.PositiveIntegerField(null=True, blank=True)
    trust_policy_sha256 = models.CharField(max_length=64, blank=True, default="", db_default="")
    trust_policy_confirmed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["endpoint"]
        indexes = [
            models.Index(fields=["device_class", "online"]),
            models.Index(fields=["gateway_id", "online"]),
            # The device list's sorts (``campaigns.device_selectors.SORTS``): each order is one
            # index scan, forwards or backwards, however deep the page.
            models.Index(fields=["device_class", "endpoint"], name="device_class_endpoint_idx"),
            models.Index(fields=["firmware_version", "endpoint"], name="device_version_idx"),
            # And ``device_last_seen_idx`` (last_seen NULLS FIRST, endpoint), made by migration
            # 0007 on PostgreSQL only and kept out of the model state: SQLite cannot index NULLS
            # FIRST, and an index in the state is rebuilt each time SQLite remakes this table.
            # The registry sweep (``device_services.registrations_sweep``): online devices in
            # expiry order, so finding the lapsed ones reads only those, however large the fleet.
            models.Index(
                fields=["registration_expires_at"],
                condition=models.Q(online=True),
                name="device_online_expiry_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.endpoint


class DevicePSK(models.Model):
    """DTLS pre-shared key of one device; the identity is bound to the device's endpoint."""

    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="psk")
    identity = models.CharField(max_length=255, unique=True)
    # Fernet token (AES-128-CBC + HMAC-SHA256) of the key, under LWM2M_PSK_ENCRYPTION_KEY.
    key_encrypted = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"PSK {self.identity}"


class DeviceEncryptionKey(models.Model):
    """A device's own P-256 public key for encrypted payloads (ECDH-ES + AES-KW recipients),
    named by ``kid`` (hex) as the device names it. Public: nothing secret is stored."""

    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="encryption_key")
    kid = models.CharField(max_length=128, unique=True)
    public_key_pem = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"encryption key {self.kid} of {self.device_id}"


class CommandStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent to gateway"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class DeviceCommand(models.Model):
    """One operation asked of a device through the gateway that holds it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="commands")
    # read | write | execute | observe | fw_update | fw_cancel | read_info (docs/lwm2m.md)
    operation = models.CharField(max_length=32)
    args = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=CommandStatus.choices, default=CommandStatus.PENDING
    )
    gateway_id = models.CharField(max_length=128, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["device", "status"])]

    def __str__(self) -> str:
        return f"{self.operation} on {self.device_id} ({self.status})"


class DeviceEvent(models.Model):
    """Append-only log of what the gateway saw (registrations, Object 5 reports, results)."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    data = models.JSONField(default=dict, blank=True)
    gateway_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["device", "kind", "id"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.device_id}"
