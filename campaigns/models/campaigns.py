"""Campaigns, their stages and revisions, per-device rollouts, and emergency stops.

The rollout row is the unit of work: one per (campaign, device), created at plan/apply time or
when a matching device registers later, moved through its state machine only by
``campaigns.services`` with conditional updates, so workers that run twice or die mid-way never
dispatch a device twice for the same campaign.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

__all__ = [
    "ACTIVE_ROLLOUT_STATES",
    "IN_FLIGHT_STATES",
    "ROLLOUT_PAYLOAD_DELTA",
    "ROLLOUT_PAYLOAD_FALLBACK",
    "TERMINAL_ROLLOUT_STATES",
    "Campaign",
    "CampaignRevision",
    "CampaignStage",
    "CampaignStatus",
    "EmergencyStop",
    "Rollout",
    "RolloutState",
    "StageStatus",
]


class CampaignStatus(models.TextChoices):
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    ABORTED = "aborted", "Aborted"


class Campaign(models.Model):
    name = models.CharField(max_length=63, unique=True)
    # The campaign's target: a release, or a released device trust policy of the class (a
    # trust-policy campaign); exactly one is set (``campaign_one_target``).
    release = models.ForeignKey(
        "manifests.Release",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="campaigns",
    )
    trust_policy = models.ForeignKey(
        "manifests.DeviceTrustPolicy",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="campaigns",
    )
    device_class = models.ForeignKey(
        "manifests.DeviceClass", on_delete=models.PROTECT, related_name="campaigns"
    )
    status = models.CharField(
        max_length=16, choices=CampaignStatus.choices, default=CampaignStatus.RUNNING
    )
    # The normalised spec document of the current revision and its digest.
    spec = models.JSONField()
    spec_digest = models.CharField(max_length=64)
    revision = models.PositiveIntegerField(default=1)
    # Random per campaign: the stage assignment hash is salted with it.
    salt = models.CharField(max_length=32)
    current_stage = models.PositiveSmallIntegerField(default=0)
    pause_reason = models.TextField(blank=True)
    # Set when the engine (not a person) paused it: thresholds, approval loss, revocation.
    paused_by_engine = models.BooleanField(default=False)
    # When the current stage's dispatch started, for the rate ramp.
    ramp_started_at = models.DateTimeField(null=True, blank=True)
    # The rate ramp's exponent in use; frozen while the recent failure share is too high.
    ramp_exponent = models.PositiveSmallIntegerField(null=True, blank=True)
    # A ``target.group`` campaign: the group's name and its members (sorted endpoints) as they
    # were at creation. Frozen: the population never drifts with the group (docs/campaign-spec.md).
    target_group = models.CharField(max_length=63, blank=True)
    target_members = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="campaigns"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status"])]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(release__isnull=False, trust_policy__isnull=True)
                    | models.Q(release__isnull=True, trust_policy__isnull=False)
                ),
                name="campaign_one_target",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def target_label(self) -> str:
        """What the campaign rolls out, in words: the release's name or "trust policy vN"."""
        if self.trust_policy_id is not None:
            return f"trust policy v{self.trust_policy.version}"
        return self.release.name if self.release is not None else ""


class CampaignRevision(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="revisions")
    revision = models.PositiveIntegerField()
    spec = models.JSONField()
    spec_digest = models.CharField(max_length=64)
    source = models.CharField(max_length=255, blank=True)
    diff = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["campaign", "revision"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "revision"], name="uniq_campaign_revision")
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} r{self.revision}"


class StageStatus(models.TextChoices):
    PENDING = "pending", "Not started"
    RUNNING = "running", "Running"
    SOAKING = "soaking", "Soaking"
    WAITING_GATE = "waiting_gate", "Waiting at gate"
    COMPLETED = "completed", "Completed"


class CampaignStage(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="stages")
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=100)
    # Exclusive upper bound of the stage's bucket range (0..2**64), fixed at plan time.
    bucket_upper = models.DecimalField(max_digits=21, decimal_places=0)
    planned_devices = models.PositiveIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=StageStatus.choices, default=StageStatus.PENDING
    )
    started_at = models.DateTimeField(null=True, blank=True)
    success_since = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    gate_approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    gate_approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["campaign", "index"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "index"], name="uniq_stage_index")
        ]

    def __str__(self) -> str:
        return f"{self.campaign}/{self.name}"


class RolloutState(models.TextChoices):
    PENDING = "pending", "Pending"
    SKIPPED = "skipped", "Skipped"
    QUEUED = "queued", "Queued"
    DISPATCHED = "dispatched", "Dispatched"
    DOWNLOADING = "downloading", "Downloading"
    DOWNLOADED = "downloaded", "Downloaded"
    UPDATING = "updating", "Updating"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    UNREACHABLE = "unreachable", "Unreachable"
    CANCELLED = "cancelled", "Cancelled"


# ``Rollout.payload``: what the last dispatch sent besides the full image.
ROLLOUT_PAYLOAD_DELTA = "delta"
ROLLOUT_PAYLOAD_FALLBACK = "fallback"

IN_FLIGHT_STATES = (
    RolloutState.QUEUED,
    RolloutState.DISPATCHED,
    RolloutState.DOWNLOADING,
    RolloutState.DOWNLOADED,
    RolloutState.UPDATING,
)
TERMINAL_ROLLOUT_STATES = (
    RolloutState.SKIPPED,
    RolloutState.SUCCEEDED,
    RolloutState.FAILED,
    RolloutState.TIMED_OUT,
    RolloutState.UNREACHABLE,
    RolloutState.CANCELLED,
)
ACTIVE_ROLLOUT_STATES = (RolloutState.PENDING, *IN_FLIGHT_STATES)


class Rollout(models.Model):
    # Every index here is written by each dispatch (the claim changes ``state``, so no update is
    # HOT): only indexes some query needs exist. The foreign keys' own single-column indexes
    # are left out: ``campaign`` leads the unique (campaign, device) and the campaign indexes,
    # ``device`` leads (device, id) and the in-flight unique index; nothing reads rollouts by
    # manifest (manifests are never deleted, so PROTECT never scans for them).
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="rollouts", db_index=False
    )
    device = models.ForeignKey(
        "campaigns.Device", on_delete=models.PROTECT, related_name="rollouts", db_index=False
    )
    stage = models.PositiveSmallIntegerField()
    bucket = models.DecimalField(max_digits=21, decimal_places=0)
    state = models.CharField(
        max_length=16, choices=RolloutState.choices, default=RolloutState.PENDING
    )
    # Machine-readable reason for skipped / failed / cancelled (e.g. "class_mismatch").
    reason = models.CharField(max_length=64, blank=True)
    detail = models.TextField(blank=True)
    fw_result = models.PositiveSmallIntegerField(null=True, blank=True)
    # Update attempts counted against the retry policy: dispatches whose command reached the
    # device's update state machine (or may have). A dispatch that never reached it waits
    # instead (``waits``; ``campaigns.rollouts.wait_rollout``) and is not counted here.
    attempts = models.PositiveSmallIntegerField(default=0)
    # Dispatches that ended before reaching the device (``device_unreachable``, or the device
    # offline when its command was sent): the pause before the next one doubles with each.
    waits = models.PositiveSmallIntegerField(default=0, db_default=0)
    # What the last dispatch sent: "" the full image, "delta" a delta on the device's installed
    # image, "fallback" the full image again after that delta failed (kept after success, so
    # the campaign reports it; ``campaigns.rollouts.fail_rollout``).
    payload = models.CharField(max_length=8, blank=True, default="", db_default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # The manifest actually sent (the newest approved release of the campaign at dispatch);
    # None in a trust-policy campaign, whose rollouts all send the campaign's policy.
    manifest = models.ForeignKey(
        "manifests.Manifest",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    command_id = models.UUIDField(null=True, blank=True)
    # The device's clock when it was dispatched (``campaigns.clock``): "ok" (it judges expiry
    # too), or "clockless" / "unknown" / "off" (accepted by an operator): only the server's
    # use-before check at dispatch stood for it. "" until dispatched.
    device_clock = models.CharField(max_length=16, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # The signed SUIT report the device gave for its last attempt (exact bytes), and the
    # server's verdict on it: "verified", or why it was not taken (a report reason of
    # ``campaigns.rollouts.REPORT_REASONS``). A SUIT device's success needs "verified".
    report = models.BinaryField(null=True, blank=True)
    report_verdict = models.CharField(max_length=32, blank=True, default="", db_default="")
    deadline_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "device"], name="uniq_rollout_per_device"),
            # The conflict rule: a device is in flight in at most one campaign at a time.
            models.UniqueConstraint(
                fields=["device"],
                condition=models.Q(state__in=IN_FLIGHT_STATES),
                name="one_in_flight_rollout_per_device",
            ),
        ]
        indexes = [
            models.Index(fields=["campaign", "stage", "state"]),
            # The dispatcher's candidate scan: pending rollouts in (stage, bucket) order.
            models.Index(fields=["campaign", "state", "stage", "bucket"]),
            # A device's rollouts (one per campaign, so few; its in-flight one by the unique
            # index above) and its latest (the device list's update state): one backward step.
            models.Index(fields=["device", "id"], name="rollout_device_latest_idx"),
            # Expired in-flight rollouts (the deadline sweep).
            models.Index(fields=["state", "deadline_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.device_id} {self.state}"


class EmergencyStop(models.Model):
    """While active, nothing in scope is dispatched and in-flight downloads are cancelled."""

    SCOPES = (("global", "Everything"), ("release", "One release"), ("device_class", "One class"))
    scope = models.CharField(max_length=16, choices=SCOPES)
    release = models.ForeignKey(
        "manifests.Release", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    device_class = models.ForeignKey(
        "manifests.DeviceClass", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField()
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    lifted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["lifted_at"])]

    def __str__(self) -> str:
        return f"emergency stop ({self.scope}) {'lifted' if self.lifted_at else 'ACTIVE'}"
