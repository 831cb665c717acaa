"""Outbound webhooks: where audited campaign / release / emergency events are POSTed, and the
record of every delivery (so an operator can see what a receiver missed and why)."""

from __future__ import annotations

import uuid

from django.db import models


class Webhook(models.Model):
    name = models.CharField(max_length=200, blank=True)
    url = models.URLField(max_length=2048)
    # HMAC-SHA256 key shared with the receiver; needed in clear to sign, never returned by reads.
    secret = models.CharField(max_length=200)
    # fnmatch patterns over the audit action ("campaign.*", "release.approved"); empty: all
    # forwarded events (campaign.*, release.*, emergency.*).
    events = models.JSONField(default=list, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"webhook {self.pk} -> {self.url}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RETRYING = "retrying", "Retrying after a transient error"
    SUCCEEDED = "succeeded", "Delivered (2xx)"
    FAILED = "failed", "Failed for good"


class WebhookDelivery(models.Model):
    """One audit event sent to one webhook; ``id`` is sent as X-Fwupd-Delivery so a receiver
    can drop duplicates (a retry after a lost response delivers the same id again)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event_seq = models.PositiveBigIntegerField()
    event_action = models.CharField(max_length=100)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["webhook", "event_seq"], name="uniq_delivery_per_event")
        ]
        indexes = [models.Index(fields=["webhook", "status"])]

    def __str__(self) -> str:
        return f"delivery {self.id} {self.event_action} ({self.status})"
