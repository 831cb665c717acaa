"""Releases approved before envelopes were frozen at approval have no released envelope and are
served author-only, so devices holding a trust policy refuse them. ``released_envelopes_freeze``
(``manage.py release freeze-envelopes``) freezes theirs from the stored approval signatures the
policy counts now: idempotent, audited, security or admin only, nothing written on refusal."""

from __future__ import annotations

import datetime as dt
import hashlib
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent
from manifests import services, suit
from manifests.errors import PermissionDeniedError, ReleaseStateError
from manifests.models import Release, ReleaseStatus, SigningKey
from manifests.selectors import envelope_frozen, served_envelope
from tests.manifests.test_releases import NOW, approve, release, team  # noqa: F401

pytestmark = pytest.mark.django_db


def _approved_before_freezing(release: Release, team: dict) -> Release:  # noqa: F811
    """An approved release as one approved before the change left it: no released envelope."""
    approve(release, team["qa"], "qa")
    approve(release, team["security"], "security")
    Release.objects.filter(pk=release.pk).update(released_envelope=None, released_sha256="")
    release.refresh_from_db()
    assert release.status == ReleaseStatus.APPROVED and release.released_envelope is None
    return release


def test_an_old_approved_release_is_served_author_only_and_not_cached_until_frozen(
    release,  # noqa: F811
    team,  # noqa: F811
):
    old = _approved_before_freezing(release, team)
    digest = old.manifest.manifest_digest
    assert served_envelope(digest) == old.manifest.envelope_bytes
    assert len(suit.decode_envelope(served_envelope(digest) or b"").signatures) == 1
    # Not final: a gateway must not keep the author-only bytes the freeze replaces.
    assert not envelope_frozen(digest)


def test_freeze_stores_every_counted_signature_audits_it_and_is_idempotent(
    release,  # noqa: F811
    team,  # noqa: F811
):
    old = _approved_before_freezing(release, team)
    result = services.released_envelopes_freeze(actor=team["security"].user, now=NOW)
    old.refresh_from_db()
    frozen = old.released_envelope_bytes
    assert frozen is not None
    assert result.frozen == ((old.name, old.released_sha256),)
    assert old.released_sha256 == hashlib.sha256(frozen).hexdigest()
    decoded = suit.decode_envelope(frozen)
    assert (
        decoded.manifest_bytes == suit.decode_envelope(old.manifest.envelope_bytes).manifest_bytes
    )
    keys = [
        suit.load_public_key_pem(team[p].public_pem.encode()) for p in ("author", "qa", "security")
    ]
    assert len(decoded.signatures) == 3 and suit.verify_envelope(decoded, keys, threshold=3).ok
    event = AuditEvent.objects.get(action="release.envelope_frozen", object_id=old.name)
    assert event.details["released_sha256"] == old.released_sha256
    assert event.actor == team["security"].user.username
    assert served_envelope(old.manifest.manifest_digest) == frozen
    assert envelope_frozen(old.manifest.manifest_digest)

    again = services.released_envelopes_freeze(actor=team["security"].user, now=NOW)
    assert (again.frozen, again.already, again.not_approved) == ((), 1, ())
    assert AuditEvent.objects.filter(action="release.envelope_frozen").count() == 1
    old.refresh_from_db()
    assert old.released_envelope_bytes == frozen


def test_dry_run_says_what_it_would_freeze_and_writes_nothing(release, team):  # noqa: F811
    old = _approved_before_freezing(release, team)
    events = AuditEvent.objects.count()
    result = services.released_envelopes_freeze(actor=team["security"].user, dry_run=True, now=NOW)
    assert [name for name, _ in result.frozen] == [old.name]
    old.refresh_from_db()
    assert old.released_envelope is None and AuditEvent.objects.count() == events


def test_a_release_whose_approval_no_longer_holds_is_left_unfrozen(release, team):  # noqa: F811
    old = _approved_before_freezing(release, team)
    # The qa key revoked without the re-evaluation having run yet: approval does not hold now.
    SigningKey.objects.filter(owner=team["qa"].user).update(
        status="revoked", revoked_at=NOW - dt.timedelta(minutes=1)
    )
    result = services.released_envelopes_freeze(actor=team["security"].user, now=NOW)
    assert result.frozen == () and [name for name, _ in result.not_approved] == [old.name]
    old.refresh_from_db()
    assert old.released_envelope is None
    assert not AuditEvent.objects.filter(action="release.envelope_frozen").exists()


@pytest.mark.parametrize("persona", ["author", "qa", "operator", "outsider"])
def test_freezing_by_someone_not_security_or_admin_is_refused(
    release,  # noqa: F811
    team,  # noqa: F811
    persona: str,
):
    old = _approved_before_freezing(release, team)
    with pytest.raises(PermissionDeniedError):
        services.released_envelopes_freeze(actor=team[persona].user, now=NOW)
    old.refresh_from_db()
    assert old.released_envelope is None


def test_naming_a_release_that_is_not_approved_is_refused(release, team):  # noqa: F811
    old = _approved_before_freezing(release, team)
    with pytest.raises(ReleaseStateError, match="not an approved release: nope"):
        services.released_envelopes_freeze(
            actor=team["security"].user, names=[old.name, "nope"], now=NOW
        )
    old.refresh_from_db()
    assert old.released_envelope is None


def test_the_command_freezes_and_reports(release, team):  # noqa: F811
    old = _approved_before_freezing(release, team)
    user = team["security"].user.username
    out = StringIO()
    call_command("release", "freeze-envelopes", "--user", user, "--dry-run", stdout=out)
    assert f"would freeze {old.name}" in out.getvalue()
    out = StringIO()
    call_command("release", "freeze-envelopes", old.name, "--user", user, stdout=out)
    old.refresh_from_db()
    assert f"froze {old.name}: released sha256 {old.released_sha256}" in out.getvalue()
    out = StringIO()
    call_command("release", "freeze-envelopes", "--user", user, stdout=out)
    assert "froze 0, already frozen 1, not approved now 0" in out.getvalue()
    with pytest.raises(CommandError):
        call_command("release", "freeze-envelopes", "--user", team["author"].user.username)
