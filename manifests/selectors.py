"""Read-side queries of the release side (no state changes)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from manifests.models import Release
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
