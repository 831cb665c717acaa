"""The checks every dispatch runs, as pure functions (time is a parameter).

The device-side rules (vendor, class, component, payload format, sequence number, security
counter, expiry, slot size) are the very functions the simulated devices run
(``manifests.device_rules.check_manifest``), applied here to what the registry knows of the
device, so the server refuses what a correct device would refuse — before it costs a download.
On top come the rules only the server can apply: the release's approval evaluated now, its
revocation, a device clock that is off (``campaigns.clock``), and downgrades outside rollback
releases. The expiry rule always runs against the server's ``now``: for a device that has no
clock, or whose wrong clock the operator accepted, it is the only expiry check there is.

Every refusal is a ``Refusal`` with a machine-readable ``reason`` (stored on the rollout) and a
human message.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Protocol

from campaigns import clock
from manifests import device_rules as dc

# reason codes, stable: stored on rollouts, counted in plans and reports
NOT_APPROVED = "not_approved"
RELEASE_REVOKED = "release_revoked"
UNMAPPED_DEVICE = "unknown_device_class"
VENDOR_MISMATCH = "vendor_mismatch"
CLASS_MISMATCH = "class_mismatch"
COMPONENT_MISMATCH = "component_mismatch"
ALREADY_CURRENT = "already_current"
ROLLBACK_SEQUENCE = "rollback_refused_sequence"
ROLLBACK_COUNTER = "rollback_refused_counter"
VERSION_DOWNGRADE = "version_downgrade"
EXPIRED = "expired_release"
CLOCK_SKEW = "clock_skew"
# Refusals that may pass later without any change to the release or the campaign (the device
# fixes its clock): the rollout stays pending with the reason instead of being skipped.
TRANSIENT_REASONS = frozenset({CLOCK_SKEW})
MISSING_FIELD = "manifest_incomplete"
# A device of a SUIT class with no report key registered: its success could never be verified.
NO_REPORT_KEY = "no_report_key"
NO_SPACE = "no_space"
# An encrypted release whose content key is wrapped for no key the server knows this device holds
# (no class key-encryption key among its recipients, and the device's own key unregistered or not
# among them): the device could not decrypt it.
ENCRYPTION_KEY_UNKNOWN = "encryption_key_unknown"
# A trust-policy campaign (the campaign's target is a released device trust policy): the device
# already holds this version (its confirmed install recorded in the registry), or a later one
# (a device refuses a policy rollback, so it is never sent one); the policy has expired (a
# device refuses an expired policy); the class is image-profile (MCUboot holds no policy); a
# later policy of the class is released (rolling an older one out is a rollback, refused).
TRUST_POLICY_HELD = "trust_policy_held"
TRUST_POLICY_ROLLBACK = "trust_policy_rollback"
TRUST_POLICY_EXPIRED = "trust_policy_expired"
TRUST_POLICY_SUPERSEDED = "trust_policy_superseded"
IMAGE_PROFILE = "image_profile_no_policy"

_DEVICE_RULES: dict[type[dc.DeviceCheckError], str] = {
    dc.VendorMismatchError: VENDOR_MISMATCH,
    dc.ClassMismatchError: CLASS_MISMATCH,
    dc.ComponentMismatchError: COMPONENT_MISMATCH,
    dc.RollbackError: ROLLBACK_SEQUENCE,
    dc.SecurityCounterError: ROLLBACK_COUNTER,
    dc.ExpiredManifestError: EXPIRED,
    dc.MissingFieldError: MISSING_FIELD,
    dc.NoSpaceError: NO_SPACE,
    dc.DecryptionNoRecipientError: ENCRYPTION_KEY_UNKNOWN,
}


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


@dataclass(frozen=True)
class DeviceFacts:
    """What the registry knows of a device; identity is None until mapped to a class."""

    endpoint: str
    identity: dc.DeviceIdentity | None
    installed: dc.InstalledFirmware
    installed_version: tuple[int, int, int, int] | None
    clock_offset_seconds: float | None
    # /3/0/13 as reported (Unix seconds) at the read that gave the offset; None if never read.
    device_time: float | None = None
    # An operator accepted this device's clock as it is (``device_clock_trust``).
    clock_trusted: bool = False

    def clock_state(self, max_clock_skew: dt.timedelta) -> str:
        return clock.clock_state(
            device_time=self.device_time,
            offset_seconds=self.clock_offset_seconds,
            max_skew=max_clock_skew,
        )


class ReleaseState(Protocol):
    """The release as dispatch sees it now (``manifests.services.release_dispatch_state``)."""

    @property
    def revoked(self) -> bool: ...

    @property
    def approved(self) -> bool: ...

    @property
    def summary(self) -> str:
        """Why it is not approved (or what counted)."""

    @property
    def rollback(self) -> bool:
        """A rollback release, approved under the incident policy."""


def check_dispatch(
    manifest: dc.ManifestFacts,
    manifest_version: tuple[int, int, int, int],
    *,
    device: DeviceFacts,
    release: ReleaseState,
    now: dt.datetime,
    max_clock_skew: dt.timedelta,
) -> Refusal | None:
    """None when the device may receive this manifest now, else the first rule it breaks."""
    if release.revoked:
        return Refusal(RELEASE_REVOKED, "the release has been revoked")
    if not release.approved:
        return Refusal(NOT_APPROVED, f"the release is not approved now: {release.summary}")
    if device.identity is None:
        return Refusal(UNMAPPED_DEVICE, f"{device.endpoint} is not mapped to a device class")
    if (
        manifest.sequence_number is not None
        and device.installed.sequence_number == manifest.sequence_number
    ):
        return Refusal(ALREADY_CURRENT, f"{device.endpoint} already runs this manifest")
    try:
        dc.check_manifest(manifest, device=device.identity, installed=device.installed, now=now)
    except dc.DeviceCheckError as exc:
        return Refusal(_reason(exc), str(exc))
    skewed = _clock_refusal(device, max_clock_skew, judged="expiry")
    if skewed is not None:
        return skewed
    if (
        not release.rollback
        and device.installed_version is not None
        and manifest_version < device.installed_version
    ):
        return Refusal(
            VERSION_DOWNGRADE,
            f"{'.'.join(map(str, manifest_version))} is older than the installed "
            f"{'.'.join(map(str, device.installed_version))}; only a rollback release may "
            "install an older version",
        )
    return None


@dataclass(frozen=True)
class PolicyFacts:
    """The released device trust policy a trust-policy campaign delivers."""

    version: int
    class_id: uuid.UUID
    # The class's delivery profile: "image" devices (MCUboot) cannot hold a policy.
    profile: str
    expires_at: dt.datetime


def check_policy_dispatch(
    policy: PolicyFacts,
    *,
    device: DeviceFacts,
    held_version: int | None,
    release: ReleaseState,
    now: dt.datetime,
    max_clock_skew: dt.timedelta,
) -> Refusal | None:
    """``check_dispatch`` for a trust-policy campaign: None when the device may be sent the
    policy now, else the first rule it breaks. ``held_version`` is the policy version the
    registry records the device holding (``Device.trust_policy_version``, None: none); the
    device's own rotation rule refuses anything not above it, so the server never sends it.
    ``release`` is the policy's state (released, not superseded), in the release's shape."""
    if release.revoked:
        return Refusal(RELEASE_REVOKED, release.summary)
    if not release.approved:
        return Refusal(NOT_APPROVED, f"the trust policy cannot be rolled out: {release.summary}")
    if policy.profile == "image":
        return Refusal(
            IMAGE_PROFILE,
            f"{device.endpoint} is image-profile (MCUboot): it cannot hold a trust policy",
        )
    if device.identity is None:
        return Refusal(UNMAPPED_DEVICE, f"{device.endpoint} is not mapped to a device class")
    if device.identity.class_id != policy.class_id:
        return Refusal(CLASS_MISMATCH, f"{device.endpoint} is not of the policy's class")
    if held_version is not None and held_version == policy.version:
        return Refusal(
            TRUST_POLICY_HELD, f"{device.endpoint} already holds trust policy v{policy.version}"
        )
    if held_version is not None and held_version > policy.version:
        return Refusal(
            TRUST_POLICY_ROLLBACK,
            f"{device.endpoint} holds trust policy v{held_version}: v{policy.version} would be "
            "a rollback, which the device refuses",
        )
    if now >= policy.expires_at:
        return Refusal(
            TRUST_POLICY_EXPIRED,
            f"trust policy v{policy.version} expired {policy.expires_at.isoformat()}",
        )
    return _clock_refusal(device, max_clock_skew, judged="the policy's expiry")


def _clock_refusal(
    device: DeviceFacts, max_clock_skew: dt.timedelta, *, judged: str
) -> Refusal | None:
    """A device whose clock is known to be off (and not accepted by an operator) is held: it
    would judge ``judged`` wrongly."""
    if (
        device.clock_offset_seconds is None
        or device.clock_trusted
        or device.clock_state(max_clock_skew) != clock.OFF
    ):
        return None
    return Refusal(
        CLOCK_SKEW,
        f"device clock is {clock.describe_offset(device.clock_offset_seconds)} (limit "
        f"{max_clock_skew}); it would judge {judged} wrongly. Held until it reports a good "
        "clock, or an operator accepts it (manage.py device clock-trust)",
    )


def _reason(exc: dc.DeviceCheckError) -> str:
    for cls, reason in _DEVICE_RULES.items():
        if isinstance(exc, cls):
            return reason
    return exc.code
