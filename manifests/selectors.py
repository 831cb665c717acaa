"""Read-side queries of the release side (no state changes)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Q

from manifests import suit
from manifests.models import (
    DeviceClass,
    DeviceTrustPolicy,
    FirmwareImage,
    Manifest,
    Release,
    ReleaseStatus,
    TrustPolicyStatus,
)
from manifests.policy import Verdict


def verdict_dict(release: Release, verdict: Verdict) -> dict[str, Any]:
    approvals = {a.pk: a for a in release.approvals.select_related("signer", "key")}
    credited = {c.person for t in verdict.tally.values() for c in t.credited}
    people = get_user_model().objects.in_bulk(list(credited))
    return {
        "release": release.name,
        "status": release.status,
        "kind": release.kind,
        "approved_now": verdict.approved,
        "manifest_digest": release.manifest.manifest_digest,
        "device_class": str(release.manifest.device_class),
        "version": release.manifest.version,
        "sequence_number": release.manifest.sequence_number,
        "security_counter": release.manifest.security_counter,
        "expires": release.manifest.expires_at.isoformat() if release.manifest.expires_at else None,
        "tally": {
            role: {
                "required": t.required,
                "missing": t.missing,
                "credited": [
                    {
                        "person": people[c.person].get_username()
                        if c.person in people
                        else str(c.person),
                        "via": c.via,
                        "signatures": [
                            {
                                "signer": approvals[s].signer.get_username(),
                                "kid": approvals[s].key.kid,
                                "at": approvals[s].signed_at.isoformat(),
                            }
                            for s in c.signatures
                        ],
                    }
                    for c in t.credited
                ],
            }
            for role, t in verdict.tally.items()
        },
        "ignored": [
            {
                "signer": approvals[s].signer.get_username(),
                "role": approvals[s].role,
                "kid": approvals[s].key.kid,
                "why": why,
            }
            for s, why in sorted(verdict.ignored.items())
        ],
    }


def manifest_params(
    *,
    device_class: DeviceClass,
    image: FirmwareImage,
    sequence_number: int,
    security_counter: int,
    version: str | None = None,
    use_before: dt.datetime | None = None,
    uri: str | None = None,
) -> suit.ManifestParams:
    """What a manifest installing ``image`` on ``device_class`` must say: vendor, class,
    component and payload format come from the class (fixed per class, never chosen per
    manifest), digest and size from the stored image, the version from its header unless given.
    Signing stays with the author's tool."""
    return suit.ManifestParams(
        vendor_id=device_class.vendor.uuid,
        class_id=device_class.uuid,
        sequence_number=sequence_number,
        version=version or image.version,
        security_counter=security_counter,
        image_digest=bytes.fromhex(image.sha256),
        image_size=image.size,
        uri=uri,
        use_before=use_before,
        component_id=device_class.component_id_bytes,
        payload_format=device_class.payload_format,
        profile=device_class.manifest_profile,
    )


def served_envelope(manifest_digest: str) -> bytes | None:
    """The envelope the firmware server publishes for a manifest digest: the release's frozen
    released envelope when it has one (every counted signature, what the device's trust policy
    checks), else the author-signed envelope as imported. None for an unknown digest."""
    digest = str(manifest_digest).lower()
    row = (
        Manifest.objects.filter(manifest_digest=digest)
        .values_list("envelope", "release__released_envelope")
        .first()
    )
    if row is None:
        return None
    envelope, released = row
    return bytes(released) if released is not None else bytes(envelope)


def served_trust_policy(sha256: str) -> bytes | None:
    """A released device trust policy's exact bytes by their SHA-256 (None: no such release)."""
    document = (
        DeviceTrustPolicy.objects.filter(
            sha256=str(sha256).lower(), status=TrustPolicyStatus.RELEASED
        )
        .values_list("document", flat=True)
        .first()
    )
    return None if document is None else bytes(document)


def current_trust_policy(device_class: DeviceClass) -> DeviceTrustPolicy | None:
    """The class's released trust policy of the highest version (what its devices should hold)."""
    return (
        DeviceTrustPolicy.objects.filter(
            device_class=device_class, status=TrustPolicyStatus.RELEASED
        )
        .order_by("-version")
        .first()
    )


def threshold_enforcement(device_class: DeviceClass) -> tuple[bool, str]:
    """Whether the class's devices themselves check the approval thresholds, and why (not).

    Only SUIT devices holding a released trust policy do; an ``image``-profile device (MCUboot)
    checks one signature by its bootloader key, and a SUIT device without a policy one signature
    by a trust anchor: for them the thresholds stand on the server's release checks alone."""
    if device_class.delivery == "image":
        return False, (
            "image profile (MCUboot): the device checks one signature by its bootloader key and "
            "cannot check approval thresholds; they are enforced by the server only"
        )
    policy = current_trust_policy(device_class)
    if policy is None:
        return False, (
            "no released device trust policy: the device checks one signature against its "
            "trust anchors; approval thresholds are enforced by the server only"
        )
    return True, (
        f"device trust policy v{policy.version}: the device checks every role's threshold "
        "before it installs"
    )


def envelope_frozen(manifest_digest: str) -> bool:
    """Whether the envelope served for ``manifest_digest`` is final: its release's released
    envelope is frozen, or the release was revoked before envelopes were frozen and keeps being
    served as imported. The author-only envelope of a release not yet approved is replaced at
    approval, and that of a release approved before envelopes were frozen is replaced by
    ``release freeze-envelopes`` (``released_envelopes_freeze``): a cache must keep neither."""
    return (
        Release.objects.filter(manifest__manifest_digest=str(manifest_digest).lower())
        .filter(Q(released_envelope__isnull=False) | Q(status=ReleaseStatus.REVOKED))
        .exists()
    )
