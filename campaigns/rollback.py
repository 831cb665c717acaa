"""Rollback as roll-forward: a new manifest for an earlier good image, with a sequence number
above every manifest of the class and a security counter not below any device's, approved under
the incident policy, launched only to the devices the bad release reached.

The server holds no private keys: ``rollback_prepare`` computes the parameters, the author's
tool signs them (``campaign rollback create --key``, or ``suit create`` with the printed
values), and the signed envelope comes back through the normal manifest import.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import Max
from django.utils import timezone

from campaigns.errors import CampaignStateError
from campaigns.models import Device, Rollout, RolloutState
from campaigns.services import campaign_apply
from campaigns.spec import derive_name, parse_spec
from manifests import suit
from manifests.models import FirmwareImage, Manifest, Release, ReleaseKind, ReleaseStatus
from manifests.selectors import manifest_params
from manifests.versions import parse_version

# The roll-forward manifest's lifetime when the operator gives none.
DEFAULT_ROLLBACK_VALIDITY = dt.timedelta(days=30)
REACHED_STATES = (
    RolloutState.DISPATCHED,
    RolloutState.DOWNLOADING,
    RolloutState.DOWNLOADED,
    RolloutState.UPDATING,
    RolloutState.SUCCEEDED,
    RolloutState.FAILED,
    RolloutState.TIMED_OUT,
)


@dataclass(frozen=True)
class RollbackPlan:
    bad_release: Release
    good_manifest: Manifest
    image: FirmwareImage
    sequence_number: int
    security_counter: int
    version: str
    affected_endpoints: tuple[str, ...]

    def params(self, *, use_before: dt.datetime) -> suit.ManifestParams:
        return manifest_params(
            device_class=self.bad_release.manifest.device_class,
            image=self.image,
            sequence_number=self.sequence_number,
            security_counter=self.security_counter,
            version=self.version,
            use_before=use_before,
        )


def affected_devices(bad: Release) -> list[Device]:
    """Devices the bad release reached (dispatched to, whatever the outcome) or that report
    running its version."""
    reached = Rollout.objects.filter(campaign__release=bad, state__in=REACHED_STATES).values_list(
        "device_id", flat=True
    )
    bad_manifest = bad.manifest
    running = Device.objects.filter(
        device_class=bad_manifest.device_class, firmware_version=bad_manifest.version
    ).values_list("pk", flat=True)
    return list(Device.objects.filter(pk__in=set(reached) | set(running)).order_by("endpoint"))


def rollback_prepare(*, bad_release: Release, image: FirmwareImage | None = None) -> RollbackPlan:
    """Parameters of the roll-forward; refuses when no earlier good image exists or its signed
    security counter would be below the fleet's (MCUboot would refuse to boot it)."""
    bad = bad_release.manifest
    device_class = bad.device_class
    good = (
        Manifest.objects.filter(
            device_class=device_class,
            sequence_number__lt=bad.sequence_number,
            release__kind=ReleaseKind.NORMAL,
        )
        .exclude(release__status=ReleaseStatus.REVOKED)
        .exclude(release__approved_at__isnull=True)
        .order_by("-sequence_number")
        .select_related("image")
        .first()
    )
    if good is None:
        raise CampaignStateError(
            f"no earlier approved release of {device_class} to roll back to before "
            f"{bad_release.name}"
        )
    target_image = image or good.image
    devices = affected_devices(bad_release)
    fleet_counter = max(
        [bad.security_counter, *(d.security_counter for d in devices)], default=bad.security_counter
    )
    counter = fleet_counter
    if target_image.security_counter is not None and target_image.security_counter < counter:
        raise CampaignStateError(
            f"image {target_image.sha256[:12]} carries MCUboot security counter "
            f"{target_image.security_counter}, below the fleet's {counter}: devices would refuse "
            f"to boot it. Upload the {good.version} firmware re-signed with "
            f"--security-counter {counter} and pass it as the rollback image."
        )
    if target_image.security_counter is not None:
        counter = target_image.security_counter
    if target_image.version and parse_version(target_image.version) != parse_version(good.version):
        raise CampaignStateError(
            f"rollback image is version {target_image.version}, not {good.version}"
        )
    top = Manifest.objects.filter(device_class=device_class).aggregate(s=Max("sequence_number"))
    return RollbackPlan(
        bad_release=bad_release,
        good_manifest=good,
        image=target_image,
        sequence_number=(top["s"] or 0) + 1,
        security_counter=counter,
        version=good.version,
        affected_endpoints=tuple(d.endpoint for d in devices),
    )


def rollback_spec(*, plan: RollbackPlan, rollback_release: Release, name: str) -> dict[str, Any]:
    """A campaign document for the affected devices only: a small canary, then the rest."""
    device_class = plan.bad_release.manifest.device_class
    return {
        "apiVersion": "fwupd/v1",
        "kind": "Campaign",
        "name": name,
        "release": rollback_release.name,
        "description": f"roll-forward from {plan.bad_release.name} to {plan.version}",
        "target": {
            "device_class": f"{device_class.vendor.domain}/{device_class.name}",
            "include": sorted(plan.affected_endpoints),
        },
        "stages": [
            {"name": "canary", "size": "10%", "failure_threshold": "50%", "min_finished": 1},
            {"name": "all", "size": "rest"},
        ],
        "retries": {"max": 2, "on": ["connection_lost", "dispatch_failed", "timed_out"]},
    }


def default_use_before(now: dt.datetime | None = None) -> dt.datetime:
    return (now or timezone.now()) + DEFAULT_ROLLBACK_VALIDITY


def rollback_launch(
    *, rollback_release: Release, bad_release: Release, actor: Any, name: str | None = None
) -> tuple[Any, str, RollbackPlan]:
    """Campaign of an approved rollback release to the devices the bad release reached (one
    path for the CLI, the API and the console). Returns (campaign, outcome, plan)."""
    if rollback_release.kind != ReleaseKind.ROLLBACK:
        raise CampaignStateError(f"{rollback_release.name} is not a rollback release")
    plan = rollback_prepare(bad_release=bad_release, image=rollback_release.manifest.image)
    campaign_name = name or derive_name(rollback_release.name, suffix="campaign")
    document = rollback_spec(plan=plan, rollback_release=rollback_release, name=campaign_name)
    campaign, outcome = campaign_apply(
        spec=parse_spec(document, source="rollback"), actor=actor, source="rollback"
    )
    return campaign, outcome, plan
