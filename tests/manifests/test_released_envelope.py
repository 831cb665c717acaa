"""The released envelope is frozen when a release is first approved: exact bytes, digest on the
release and in the audit log, served to devices, never rewritten afterwards."""

from __future__ import annotations

import hashlib

import pytest

from audit.models import AuditEvent
from manifests import services, suit
from manifests.errors import ReleaseStateError
from manifests.models import ReleaseStatus, SigningKey
from manifests.selectors import envelope_frozen, served_envelope
from tests.manifests.test_releases import NOW, approve, release, team  # noqa: F401

pytestmark = pytest.mark.django_db


def test_approval_freezes_the_envelope_with_every_counted_signature(release, team):  # noqa: F811
    approve(release, team["qa"], "qa")
    release.refresh_from_db()
    assert release.released_envelope is None
    assert not envelope_frozen(release.manifest.manifest_digest)
    assert served_envelope(release.manifest.manifest_digest) == release.manifest.envelope_bytes
    approve(release, team["security"], "security")
    release.refresh_from_db()
    frozen = release.released_envelope_bytes
    assert frozen is not None
    assert release.released_sha256 == hashlib.sha256(frozen).hexdigest()
    decoded = suit.decode_envelope(frozen)
    assert (
        decoded.manifest_bytes
        == suit.decode_envelope(release.manifest.envelope_bytes).manifest_bytes
    )
    assert len(decoded.signatures) == 3
    keys = [
        suit.load_public_key_pem(team[p].public_pem.encode()) for p in ("author", "qa", "security")
    ]
    assert suit.verify_envelope(decoded, keys, threshold=3).ok
    event = AuditEvent.objects.get(object_id=release.name, action="release.approved")
    assert event.details["released_sha256"] == release.released_sha256
    assert services.released_envelope(release, now=NOW) == frozen
    assert served_envelope(release.manifest.manifest_digest) == frozen
    assert envelope_frozen(release.manifest.manifest_digest)


def test_a_later_approval_or_lost_approval_does_not_alter_the_published_file(
    release,  # noqa: F811
    team,  # noqa: F811
):
    approve(release, team["qa"], "qa")
    approve(release, team["security"], "security")
    release.refresh_from_db()
    frozen, digest = release.released_envelope_bytes, release.released_sha256
    approve(release, team["operator"], "fleet_operator")
    qa_key = SigningKey.objects.get(owner=team["qa"].user)
    services.key_revoke(key=qa_key, reason="lost laptop", actor=team["security"].user, now=NOW)
    release.refresh_from_db()
    assert release.status == ReleaseStatus.PENDING
    assert (release.released_envelope_bytes, release.released_sha256) == (frozen, digest)
    assert served_envelope(release.manifest.manifest_digest) == frozen


def test_released_envelope_of_a_release_that_lost_approval_is_refused(release, team):  # noqa: F811
    approve(release, team["qa"], "qa")
    approve(release, team["security"], "security")
    qa_key = SigningKey.objects.get(owner=team["qa"].user)
    services.key_revoke(key=qa_key, reason="lost laptop", actor=team["security"].user, now=NOW)
    with pytest.raises(ReleaseStateError, match="not approved"):
        services.released_envelope(release, now=NOW)
