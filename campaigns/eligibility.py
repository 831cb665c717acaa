"""Who may receive a campaign's release, and when: the spec's names resolved, the release as
dispatch sees it (approval re-evaluated from its signatures), the device facts the checks read,
the exclusion rules of planning and the dispatch checker, emergency stops, and devices busy in
another campaign. The rules themselves are pure (``campaigns.checks`` on top of
``manifests.device_rules``); this module feeds them from the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import (
    Q,
)

from campaigns import checks, clock
from campaigns.errors import (
    SpecError,
    UnknownReleaseError,
    UnknownTargetError,
    UnknownTrustPolicyError,
)
from campaigns.models import (
    IN_FLIGHT_STATES,
    Campaign,
    Device,
    DeviceEncryptionKey,
    EmergencyStop,
    Rollout,
)
from campaigns.spec import CampaignSpec
from manifests import device_rules as dc
from manifests import suit
from manifests.models import (
    DeviceClass,
    DeviceTrustPolicy,
    PayloadEncryptionKey,
    Release,
    TrustPolicyStatus,
)
from manifests.versions import VersionError, parse_version

EXCLUDED_BY_SPEC = "excluded_by_spec"
OFFLINE_TOO_LONG = "offline_too_long"
VERSION_CONSTRAINT = "version_constraint"


@dataclass(frozen=True)
class Resolved:
    """The spec's names looked up: its class and its target, a release or (a trust-policy
    campaign) a device trust policy of the class; exactly one of the two is set."""

    spec: CampaignSpec
    release: Release | None
    device_class: DeviceClass
    trust_policy: DeviceTrustPolicy | None = None


def resolve(spec: CampaignSpec, *, source: str = "<api>") -> Resolved:
    """Look the spec's names up; unknown ones are refused with the field path."""
    vendor_domain, _, class_name = spec.target.device_class.partition("/")
    device_class = (
        DeviceClass.objects.select_related("vendor")
        .filter(vendor__domain=vendor_domain.lower(), name=class_name)
        .first()
    )
    if device_class is None:
        raise UnknownTargetError(
            f"{source}: target.device_class: no device class {spec.target.device_class!r}"
        )
    if spec.trust_policy is not None:
        policy = (
            DeviceTrustPolicy.objects.select_related("device_class__vendor")
            .filter(device_class=device_class, version=spec.trust_policy)
            .first()
        )
        if policy is None or policy.status != TrustPolicyStatus.RELEASED:
            raise UnknownTrustPolicyError(
                f"{source}: trust_policy: {device_class} has no released trust policy "
                f"v{spec.trust_policy}"
                + (" (it is a draft still collecting signatures)" if policy else "")
            )
        return Resolved(spec=spec, release=None, device_class=device_class, trust_policy=policy)
    release = (
        Release.objects.select_related("manifest__device_class__vendor", "manifest__image")
        .filter(name=spec.release)
        .first()
    )
    if release is None:
        raise UnknownReleaseError(f"{source}: release: no release named {spec.release!r}")
    if release.manifest.device_class_id != device_class.pk:
        raise SpecError(
            source=source,
            path="release",
            reason=f"release {release.name} is for {release.manifest.device_class}, "
            f"not {device_class}",
        )
    return Resolved(spec=spec, release=release, device_class=device_class)


@dataclass(frozen=True)
class PolicyState:
    """A trust-policy campaign's policy as dispatch sees it now, in the shape of
    ``checks.ReleaseState``: "approved" while it is released and no later policy of its class
    is (rolling an older policy out is a rollback, which devices refuse). Never revoked: a
    revoked key leads to the next policy, not to the withdrawal of this one."""

    approved: bool
    summary: str
    superseded_by: int | None = None
    expired: bool = False
    revoked: bool = False
    rollback: bool = False


def policy_dispatch_state(policy: DeviceTrustPolicy, *, now: dt.datetime) -> PolicyState:
    later = (
        DeviceTrustPolicy.objects.filter(
            device_class_id=policy.device_class_id,
            status=TrustPolicyStatus.RELEASED,
            version__gt=policy.version,
        )
        .order_by("-version")
        .values_list("version", flat=True)
        .first()
    )
    if policy.status != TrustPolicyStatus.RELEASED:
        return PolicyState(False, f"trust policy v{policy.version} is not released")
    if later is not None:
        return PolicyState(
            False,
            f"trust policy v{later} of the class is released: rolling v{policy.version} out "
            "would be a rollback, which devices refuse",
            superseded_by=later,
        )
    if now >= policy.expires_at:
        # Devices refuse an expired policy: nothing more is sent (a new version is needed).
        return PolicyState(
            False,
            f"trust policy v{policy.version} expired {policy.expires_at.isoformat()}",
            expired=True,
        )
    return PolicyState(True, f"trust policy v{policy.version} is released")


def policy_facts(policy: DeviceTrustPolicy) -> checks.PolicyFacts:
    return checks.PolicyFacts(
        version=policy.version,
        class_id=policy.device_class.uuid,
        profile=policy.device_class.delivery,
        expires_at=policy.expires_at,
    )


def manifest_facts(release: Release) -> tuple[dc.ManifestFacts, tuple[int, int, int, int]]:
    env = suit.decode_envelope(release.manifest.envelope_bytes)
    return dc.facts_from_manifest(env.manifest), parse_version(release.manifest.version)


def device_facts(
    device: Device | PlanDevice, device_class: DeviceClass | None
) -> checks.DeviceFacts:
    identity = None
    if device.device_class_id is not None and device_class is not None:
        cls = device_class if device.device_class_id == device_class.pk else device.device_class
        identity = _identity(cls)
    try:
        installed_version = (
            parse_version(device.firmware_version) if device.firmware_version else None
        )
    except VersionError:
        installed_version = None
    return checks.DeviceFacts(
        endpoint=device.endpoint,
        identity=identity,
        installed=dc.InstalledFirmware(
            version=device.firmware_version,
            sequence_number=device.sequence_number or 0,
            security_counter=device.security_counter,
        ),
        installed_version=installed_version,
        clock_offset_seconds=device.clock_offset_seconds,
        device_time=device.device_time,
        clock_trusted=device.clock_trusted_at is not None,
    )


def _identity(cls: Any) -> dc.DeviceIdentity:
    """The class's devices as the server knows them. Who can decrypt an encrypted release is
    decided per device by ``EncryptionGate`` (class keys, registered device keys)."""
    return dc.DeviceIdentity(
        vendor_id=cls.vendor.uuid,
        class_id=cls.uuid,
        component_id=cls.component_id_bytes,
        payload_format=cls.payload_format,
        manifest_profile=cls.manifest_profile,
        can_decrypt=True,
        decryption_kids=None,
    )


def _class_kids(class_id: int) -> frozenset[bytes]:
    return frozenset(
        bytes.fromhex(kid)
        for kid in PayloadEncryptionKey.objects.filter(device_class_id=class_id).values_list(
            "kid", flat=True
        )
    )


class EncryptionGate:
    """Who can decrypt an encrypted release: every device of the class when a class
    key-encryption key is among its recipients (each device of a class holds the class's key);
    otherwise the devices with a registered key among them. Built once per plan or dispatch pass
    (one or two queries); ``refusal(device_id, endpoint)`` per device."""

    def __init__(self, manifest: dc.ManifestFacts | None, device_class: DeviceClass) -> None:
        # No manifest (a trust-policy campaign): nothing is encrypted.
        self.active = (
            manifest is not None
            and bool(manifest.encrypted)
            and not (_class_kids(device_class.pk) & set(manifest.recipient_kids))
        )
        self.devices: frozenset[int] = frozenset()
        if self.active and manifest is not None:
            self.devices = frozenset(
                DeviceEncryptionKey.objects.filter(
                    kid__in=[kid.hex() for kid in manifest.recipient_kids]
                ).values_list("device_id", flat=True)
            )

    def refusal(self, device_id: int, endpoint: str) -> checks.Refusal | None:
        if not self.active or device_id in self.devices:
            return None
        return checks.Refusal(
            checks.ENCRYPTION_KEY_UNKNOWN,
            f"{endpoint}: the release's content key is wrapped for device keys only, and this "
            "device's key is not registered or not among them (manage.py device encryption-key, "
            "then encrypt the payload again)",
        )


class PlanDevice:
    """The device fields the exclusion rules read (``classify_device``, ``device_facts``),
    loaded as one narrow row instead of a model instance."""

    __slots__ = (
        "clock_offset_seconds",
        "clock_trusted_at",
        "created_at",
        "device_class",
        "device_class_id",
        "device_time",
        "endpoint",
        "firmware_version",
        "last_seen",
        "online",
        "pk",
        "security_counter",
        "sequence_number",
        "trust_policy_version",
    )

    def __init__(
        self,
        pk: int,
        endpoint: str,
        device_class_id: int | None,
        device_class: DeviceClass | None,
        firmware_version: str,
        sequence_number: int | None,
        security_counter: int,
        clock_offset_seconds: float | None,
        online: bool,
        last_seen: dt.datetime | None,
        created_at: dt.datetime | None,
        device_time: float | None = None,
        clock_trusted_at: dt.datetime | None = None,
        trust_policy_version: int | None = None,
    ) -> None:
        self.pk, self.endpoint = pk, endpoint
        self.device_class_id, self.device_class = device_class_id, device_class
        self.firmware_version, self.sequence_number = firmware_version, sequence_number
        self.security_counter, self.clock_offset_seconds = security_counter, clock_offset_seconds
        self.online, self.last_seen, self.created_at = online, last_seen, created_at
        self.device_time, self.clock_trusted_at = device_time, clock_trusted_at
        self.trust_policy_version = trust_policy_version


def held_for_clock(
    offset: float | None,
    device_time: float | None,
    trusted_at: dt.datetime | None,
    max_clock_skew: dt.timedelta,
) -> bool:
    """Whether the clock rule may refuse this device (its clock is off and no operator accepted
    it): the only case in which its answer names its own clock, so it is checked alone."""
    return (
        offset is not None
        and trusted_at is None
        and clock.clock_state(
            device_time=device_time, offset_seconds=offset, max_skew=max_clock_skew
        )
        == clock.OFF
    )


def classify_device(
    device: Device | PlanDevice,
    *,
    resolved: Resolved,
    manifest: dc.ManifestFacts | None,
    manifest_version: tuple[int, int, int, int] | None,
    release: checks.ReleaseState,
    now: dt.datetime,
    policy: checks.PolicyFacts | None = None,
) -> checks.Refusal | None:
    """Why a selected device is excluded from the campaign now, or None if it is eligible.
    ``policy``: a trust-policy campaign's policy (then there is no manifest)."""
    spec, device_class = resolved.spec, resolved.device_class
    if device.endpoint in spec.target.exclude:
        return checks.Refusal(EXCLUDED_BY_SPEC, "listed under target.exclude")
    if device.device_class_id != device_class.pk:
        return checks.Refusal(
            checks.CLASS_MISMATCH,
            f"{device.endpoint} is {device.device_class or 'not mapped to a class'}",
        )
    if spec.target.offline_max is not None and not device.online:
        last = device.last_seen or device.created_at
        if last is None or now - last > spec.target.offline_max:
            return checks.Refusal(OFFLINE_TOO_LONG, f"not seen since {last}")
    facts = device_facts(device, device_class)
    if spec.target.version is not None and (
        facts.installed_version is None or not spec.target.version.matches(facts.installed_version)
    ):
        return checks.Refusal(
            VERSION_CONSTRAINT, f"installed {device.firmware_version or 'unknown'} is outside it"
        )
    if policy is not None:
        return checks.check_policy_dispatch(
            policy,
            device=facts,
            held_version=device.trust_policy_version,
            release=release,
            now=now,
            max_clock_skew=spec.freshness.max_clock_skew,
        )
    assert manifest is not None and manifest_version is not None  # noqa: S101 - a release's
    return checks.check_dispatch(
        manifest,
        manifest_version,
        device=facts,
        release=release,
        now=now,
        max_clock_skew=spec.freshness.max_clock_skew,
    )


# Stands for the endpoint in a refusal computed once for a group of devices; no real message
# holds a NUL, so replacing it gives exactly the message the device's own endpoint would.
_ENDPOINT = "\x00endpoint\x00"


class DispatchChecker:
    """``checks.check_dispatch`` for many devices of one campaign, computed once per group of
    devices that agree on what the checks read of them (class, installed version, sequence
    number, security counter) with the endpoint as a placeholder; a device whose clock is off
    and not accepted by an operator (the refusal names its own offset) is checked alone. A
    clockless device, one whose clock was never read, and an accepted one pass the clock rule
    like the group's representative, so they share its answer. The answer is the one
    ``check_dispatch(..., device=device_facts(device, device_class))`` gives. With ``policy``
    (a trust-policy campaign, no manifest) it is ``check_policy_dispatch``'s, and the policy
    version the device holds is part of the group."""

    def __init__(
        self,
        manifest: dc.ManifestFacts | None,
        manifest_version: tuple[int, int, int, int] | None,
        *,
        device_class: DeviceClass,
        release: checks.ReleaseState,
        now: dt.datetime,
        max_clock_skew: dt.timedelta,
        policy: checks.PolicyFacts | None = None,
    ) -> None:
        self.policy = policy
        self.manifest, self.manifest_version = manifest, manifest_version
        self.device_class, self.release, self.now = device_class, release, now
        self.max_clock_skew = max_clock_skew
        self._classes: dict[int | None, DeviceClass | None] = {
            None: None,
            device_class.pk: device_class,
        }
        self._groups: dict[tuple[Any, ...], tuple[checks.Refusal | None, bool]] = {}

    def _check(self, device: PlanDevice) -> checks.Refusal | None:
        if device.device_class_id not in self._classes:
            self._classes[device.device_class_id] = (
                DeviceClass.objects.select_related("vendor")
                .filter(pk=device.device_class_id)
                .first()
            )
        device.device_class = self._classes[device.device_class_id]
        if self.policy is not None:
            return checks.check_policy_dispatch(
                self.policy,
                device=device_facts(device, self.device_class),
                held_version=device.trust_policy_version,
                release=self.release,
                now=self.now,
                max_clock_skew=self.max_clock_skew,
            )
        assert self.manifest is not None and self.manifest_version is not None  # noqa: S101
        return checks.check_dispatch(
            self.manifest,
            self.manifest_version,
            device=device_facts(device, self.device_class),
            release=self.release,
            now=self.now,
            max_clock_skew=self.max_clock_skew,
        )

    def check(self, device: PlanDevice) -> checks.Refusal | None:
        if held_for_clock(
            device.clock_offset_seconds,
            device.device_time,
            device.clock_trusted_at,
            self.max_clock_skew,
        ):
            return self._check(device)
        key = (
            device.device_class_id,
            device.firmware_version,
            device.sequence_number,
            device.security_counter,
            device.trust_policy_version if self.policy is not None else None,
        )
        group = self._groups.get(key)
        if group is None:
            refusal = self._check(
                PlanDevice(
                    device.pk, _ENDPOINT, device.device_class_id, None, device.firmware_version,
                    device.sequence_number, device.security_counter, None, True, None, None,
                    None, None, device.trust_policy_version,
                )
            )  # fmt: skip
            group = self._groups[key] = (
                refusal,
                refusal is not None and _ENDPOINT in refusal.message,
            )
        refusal, names_device = group
        if names_device and refusal is not None:
            return checks.Refusal(
                refusal.reason, refusal.message.replace(_ENDPOINT, device.endpoint)
            )
        return refusal


def active_stops(campaign: Campaign) -> list[EmergencyStop]:
    return list(
        EmergencyStop.objects.filter(lifted_at__isnull=True).filter(
            Q(scope="global")
            # A trust-policy campaign has no release: a release-scope stop never names it.
            | Q(scope="release", release_id=campaign.release_id)
            | Q(scope="device_class", device_class_id=campaign.device_class_id)
        )
    )


def in_flight_elsewhere(device_ids: list[int], campaign: Campaign) -> set[int]:
    return set(
        Rollout.objects.filter(device_id__in=device_ids, state__in=IN_FLIGHT_STATES)
        .exclude(campaign=campaign)
        .values_list("device_id", flat=True)
    )
