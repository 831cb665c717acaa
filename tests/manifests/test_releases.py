"""Multi-role release approval through the services: the attacks fail, the rules hold."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from audit.models import AuditEvent
from audit.services import audit_verify
from manifests import services, suit
from manifests.errors import (
    ApprovalKeyError,
    BadApprovalSignatureError,
    DuplicateApprovalError,
    InvalidPolicyError,
    NotAuthorizedToApproveError,
    PermissionDeniedError,
    ReleaseStateError,
    SelfApprovalError,
)
from manifests.models import KeyStatus, PolicyKind, Release, ReleaseStatus, SigningKey
from manifests.services import ReleaseDispatchState
from manifests.signals import release_approval_lost, release_revoked
from tests.helpers.imgtool import build_mcuboot_image

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
EARLIER = NOW - dt.timedelta(days=1)


@pytest.fixture
def team(admin, author, approver_qa, approver_security, operator, outsider):
    for persona, role in [
        (author, "author"),
        (approver_qa, "qa"),
        (approver_security, "security"),
        (operator, "fleet_operator"),
    ]:
        services.role_grant(user=persona.user, role=role, actor=admin, now=EARLIER)
    for persona in (author, approver_qa, approver_security, operator, outsider):
        services.signing_key_register(
            owner=persona.user, public_key_pem=persona.public_pem, valid_from=EARLIER
        )
    return {
        "author": author,
        "qa": approver_qa,
        "security": approver_security,
        "operator": operator,
        "outsider": outsider,
    }


def _manifest(device_class, author, tmp_path: Path, *, sequence: int, version: str = "2.0.0"):
    image_bytes = build_mcuboot_image(
        tmp_path, payload=version.encode() * 512, version=version, security_counter=2
    )
    image = services.image_upload(data=image_bytes, actor=author.user)
    params = suit.ManifestParams(
        vendor_id=device_class.vendor.uuid,
        class_id=device_class.uuid,
        sequence_number=sequence,
        version=version,
        security_counter=2,
        image_digest=bytes.fromhex(image.sha256),
        image_size=image.size,
        uri="coap://fw.example/app",
        use_before=NOW + dt.timedelta(days=30),
        component_id=device_class.component_id_bytes,
        payload_format="mcuboot",
    )
    envelope = suit.create_envelope(params, keys=[author.private_key])
    return services.manifest_import(envelope=envelope, created_by=author.user, now=NOW)


@pytest.fixture
def release(db, team, device_class, tmp_path) -> Release:
    manifest = _manifest(device_class, team["author"], tmp_path, sequence=5)
    release = services.release_create(
        manifest=manifest, name="thermo-2.0.0", actor=team["author"].user, now=NOW
    )
    services.release_submit(release=release, actor=team["author"].user, now=NOW)
    release.refresh_from_db()
    return release


def approve(release: Release, persona: Any, role: str, *, now: dt.datetime = NOW, key: Any = None):
    block = suit.sign_manifest_digest(
        release.manifest.envelope_bytes, key=key or persona.private_key
    )
    return services.release_approve(
        release=release, signer=persona.user, role=role, cose=block, now=now
    )


@pytest.mark.django_db
def test_release_needs_author_qa_and_security(release, team):
    assert release.status == ReleaseStatus.PENDING
    _, verdict = approve(release, team["qa"], "qa")
    assert (
        not verdict.approved
        and verdict.tally["author"].met
        and verdict.tally["security"].missing == 1
    )
    _, verdict = approve(release, team["security"], "security")
    assert verdict.approved
    release.refresh_from_db()
    assert release.status == ReleaseStatus.APPROVED
    envelope = services.released_envelope(release, now=NOW)
    decoded = suit.decode_envelope(envelope)
    assert (
        decoded.manifest_bytes
        == suit.decode_envelope(release.manifest.envelope_bytes).manifest_bytes
    )
    keys = [
        suit.load_public_key_pem(p.public_pem.encode())
        for p in (team["author"], team["qa"], team["security"])
    ]
    assert suit.verify_envelope(decoded, keys, threshold=3).ok
    actions = list(
        AuditEvent.objects.filter(object_id=release.name).values_list("action", flat=True)
    )
    assert actions == [
        "release.create",
        "release.submit",
        "release.approve",
        "release.approve",
        "release.approved",
    ]
    assert audit_verify().ok


@pytest.mark.django_db
def test_self_approval_is_refused(release, team):
    with pytest.raises(SelfApprovalError):
        approve(release, team["author"], "qa")
    assert release.approvals.count() == 1


@pytest.mark.django_db
def test_signature_made_for_another_manifest_is_refused(release, team, device_class, tmp_path):
    other = _manifest(device_class, team["author"], tmp_path / "other", sequence=6, version="2.0.1")
    block = suit.sign_manifest_digest(other.envelope_bytes, key=team["qa"].private_key)
    with pytest.raises(BadApprovalSignatureError, match="another manifest"):
        services.release_approve(
            release=release, signer=team["qa"].user, role="qa", cose=block, now=NOW
        )


@pytest.mark.django_db
def test_forged_signature_is_refused(release, team):
    block = bytearray(
        suit.sign_manifest_digest(release.manifest.envelope_bytes, key=team["qa"].private_key)
    )
    block[-3] ^= 0x40
    with pytest.raises(BadApprovalSignatureError):
        services.release_approve(
            release=release, signer=team["qa"].user, role="qa", cose=bytes(block), now=NOW
        )


@pytest.mark.django_db
@pytest.mark.parametrize("cose", [b"", b"\xa0", b"garbage-bytes"], ids=["empty", "map", "junk"])
def test_malformed_signature_upload_is_refused(release, team, cose):
    with pytest.raises(BadApprovalSignatureError):
        services.release_approve(
            release=release, signer=team["qa"].user, role="qa", cose=cose, now=NOW
        )


@pytest.mark.django_db
def test_signing_with_someone_elses_key_is_refused(release, team):
    with pytest.raises(ApprovalKeyError, match="someone else"):
        approve(release, team["qa"], "qa", key=team["security"].private_key)


@pytest.mark.django_db
def test_signer_without_the_role_is_refused(release, team):
    with pytest.raises(NotAuthorizedToApproveError):
        approve(release, team["outsider"], "qa")
    with pytest.raises(NotAuthorizedToApproveError):
        approve(release, team["qa"], "auditor")


@pytest.mark.django_db
def test_duplicate_upload_is_refused(release, team):
    block = suit.sign_manifest_digest(release.manifest.envelope_bytes, key=team["qa"].private_key)
    services.release_approve(
        release=release, signer=team["qa"].user, role="qa", cose=block, now=NOW
    )
    with pytest.raises(DuplicateApprovalError):
        services.release_approve(
            release=release, signer=team["qa"].user, role="qa", cose=block, now=NOW
        )
    with pytest.raises(DuplicateApprovalError):
        approve(release, team["qa"], "qa")  # a fresh ECDSA signature, same key and role
    assert release.approvals.count() == 2


@pytest.mark.django_db
def test_revoking_a_key_withdraws_approval_and_fires_the_campaign_hook(release, team):
    approve(release, team["qa"], "qa")
    approve(release, team["security"], "security")
    lost: list[Any] = []
    release_approval_lost.connect(
        lambda **kw: lost.append(kw["release"].name), weak=False, dispatch_uid="test-lost"
    )
    try:
        key = team["security"].user.signing_keys.get()
        services.key_revoke(
            key=key,
            reason="laptop stolen",
            effective_at=NOW - dt.timedelta(hours=1),
            actor=team["security"].user,
            now=NOW + dt.timedelta(minutes=5),
        )
    finally:
        release_approval_lost.disconnect(dispatch_uid="test-lost")
    release.refresh_from_db()
    assert release.status == ReleaseStatus.PENDING
    assert lost == [release.name]
    state = services.release_dispatch_state(release, now=NOW + dt.timedelta(minutes=5))
    assert not state.approved and not state.revoked


@pytest.mark.django_db
def test_dispatch_state_is_re_evaluated_and_a_draft_or_revoked_release_never_dispatches(
    team, admin, device_class, tmp_path
):
    # A policy the author's own manifest signature satisfies, so only the status holds it back.
    services.policy_set(
        device_class=None, kind=PolicyKind.NORMAL, rules={"author": 1}, actor=admin, now=NOW
    )
    manifest = _manifest(device_class, team["author"], tmp_path, sequence=11)
    release = services.release_create(
        manifest=manifest, name="thermo-draft", actor=team["author"].user, now=NOW
    )
    verdict = services.release_evaluate(release, now=NOW)
    assert verdict.approved
    assert services.release_dispatch_state(release, now=NOW) == ReleaseDispatchState(
        revoked=False, approved=False, summary=verdict.summary(), rollback=False
    )
    services.release_submit(release=release, actor=team["author"].user, now=NOW)
    release.refresh_from_db()
    assert services.release_dispatch_state(release, now=NOW) == ReleaseDispatchState(
        revoked=False, approved=True, summary=verdict.summary(), rollback=False
    )
    # Approval is computed, not read: a key revoked behind the stored status counts at once.
    key = team["author"].user.signing_keys.get()
    SigningKey.objects.filter(pk=key.pk).update(status=KeyStatus.REVOKED, revoked_at=EARLIER)
    release.refresh_from_db()
    assert release.status == ReleaseStatus.APPROVED
    state = services.release_dispatch_state(release, now=NOW)
    assert not state.approved and not state.revoked and "author" in state.summary
    services.release_revoke(release=release, reason="boot loop", actor=admin, now=NOW)
    release.refresh_from_db()
    assert services.release_dispatch_state(release, now=NOW) == ReleaseDispatchState(
        revoked=True, approved=False, summary="revoked", rollback=False
    )


@pytest.mark.django_db
def test_dispatch_state_marks_rollback_releases_revoked_or_not(team, admin, device_class, tmp_path):
    manifest = _manifest(device_class, team["author"], tmp_path, sequence=12)
    rollback = services.release_create(
        manifest=manifest, name="rollback-2", kind="rollback", actor=team["author"].user, now=NOW
    )
    services.release_submit(release=rollback, actor=team["author"].user, now=NOW)
    rollback.refresh_from_db()
    state = services.release_dispatch_state(rollback, now=NOW)
    assert (state.revoked, state.approved, state.rollback) == (False, False, True)
    assert state.summary == services.release_evaluate(rollback, now=NOW).summary()
    services.release_revoke(release=rollback, reason="wrong image", actor=admin, now=NOW)
    rollback.refresh_from_db()
    assert services.release_dispatch_state(rollback, now=NOW) == ReleaseDispatchState(
        revoked=True, approved=False, summary="revoked", rollback=True
    )


@pytest.mark.django_db
def test_rotated_key_counts_during_overlap_only(release, team):
    approve(release, team["qa"], "qa")
    approve(release, team["security"], "security")
    old = team["security"].user.signing_keys.get()
    successor = suit.generate_private_key("Ed25519")
    services.key_rotate(
        key=old,
        new_public_key_pem=suit.public_key_pem(successor.public_key()).decode(),
        overlap=dt.timedelta(hours=2),
        actor=team["security"].user,
        now=NOW,
    )
    assert services.release_evaluate(release, now=NOW + dt.timedelta(hours=1)).approved
    assert not services.release_evaluate(release, now=NOW + dt.timedelta(hours=3)).approved


@pytest.mark.django_db
def test_policy_change_re_evaluates_and_can_withdraw_approval(release, team, admin, device_class):
    approve(release, team["qa"], "qa")
    approve(release, team["security"], "security")
    services.policy_set(
        device_class=device_class,
        kind=PolicyKind.NORMAL,
        rules={"author": 1, "qa": 2, "security": 1},
        actor=admin,
        now=NOW,
    )
    release.refresh_from_db()
    assert release.status == ReleaseStatus.PENDING
    services.policy_set(
        device_class=None, kind=PolicyKind.NORMAL, rules={"qa": 1}, actor=admin, now=NOW
    )
    release.refresh_from_db()
    assert release.status == ReleaseStatus.PENDING  # the class's own policy wins over the default
    assert services.policy_for(device_class, PolicyKind.NORMAL) == (
        {"author": 1, "qa": 2, "security": 1},
        "device class",
    )


@pytest.mark.django_db
def test_policy_set_needs_admin_and_valid_rules(team, admin):
    with pytest.raises(PermissionDeniedError):
        services.policy_set(
            device_class=None, kind="normal", rules={"qa": 1}, actor=team["qa"].user
        )
    with pytest.raises(InvalidPolicyError):
        services.policy_set(device_class=None, kind="normal", rules={"qa": 0}, actor=admin)


@pytest.mark.django_db
def test_revocation_needs_security_role_and_fires_hook(release, team):
    with pytest.raises(PermissionDeniedError):
        services.release_revoke(release=release, reason="bad", actor=team["qa"].user, now=NOW)
    revoked: list[str] = []
    release_revoked.connect(
        lambda **kw: revoked.append(kw["reason"]), weak=False, dispatch_uid="t-rev"
    )
    try:
        services.release_revoke(
            release=release, reason="boot loop", actor=team["security"].user, now=NOW
        )
    finally:
        release_revoked.disconnect(dispatch_uid="t-rev")
    release.refresh_from_db()
    assert release.status == ReleaseStatus.REVOKED and revoked == ["boot loop"]
    with pytest.raises(ReleaseStateError):
        approve(release, team["qa"], "qa")


@pytest.mark.django_db
def test_rollback_release_uses_the_incident_policy(
    team, device_class, tmp_path, admin, django_user_model
):
    manifest = _manifest(device_class, team["author"], tmp_path, sequence=9)
    rollback = services.release_create(
        manifest=manifest, name="rollback-1", kind="rollback", actor=team["author"].user, now=NOW
    )
    services.release_submit(release=rollback, actor=team["author"].user, now=NOW)
    _, verdict = approve(rollback, team["security"], "security")
    assert not verdict.approved and set(verdict.tally) == {"security"}
    second = django_user_model.objects.create_user(username="sec-2", password="x-pass-1")
    key = suit.generate_private_key("ES256")
    services.role_grant(user=second, role="security", actor=admin, now=EARLIER)
    services.signing_key_register(
        owner=second,
        public_key_pem=suit.public_key_pem(key.public_key()).decode(),
        valid_from=EARLIER,
    )
    block = suit.sign_manifest_digest(manifest.envelope_bytes, key=key)
    _, verdict = services.release_approve(
        release=rollback, signer=second, role="security", cose=block, now=NOW
    )
    assert verdict.approved


@pytest.mark.django_db
def test_delegated_approval_counts_for_the_delegator(
    release, team, django_user_model, device_class
):
    deputies = []
    for name in ("deputy-1", "deputy-2"):
        user = django_user_model.objects.create_user(username=name, password="x-pass-1")
        key = suit.generate_private_key("Ed25519")
        services.signing_key_register(
            owner=user,
            public_key_pem=suit.public_key_pem(key.public_key()).decode(),
            valid_from=EARLIER,
        )
        deputies.append((user, key))
    services.delegation_create(
        delegator=team["security"].user,
        role="security",
        delegatees=[u for u, _ in deputies],
        threshold=2,
        scope_device_classes=[device_class],
        expires_at=NOW + dt.timedelta(days=1),
        now=EARLIER,
    )
    approve(release, team["qa"], "qa")
    for user, key in deputies:
        block = suit.sign_manifest_digest(release.manifest.envelope_bytes, key=key)
        _, verdict = services.release_approve(
            release=release, signer=user, role="security", cose=block, now=NOW
        )
    assert verdict.approved
    (credit,) = verdict.tally["security"].credited
    assert credit.person == team["security"].user.pk and credit.via.startswith("delegation:")


@pytest.mark.django_db(transaction=True)
def test_concurrent_approvals_are_both_counted_exactly_once(release, team):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL; SQLite serialises the whole database")
    blocks = {
        role: suit.sign_manifest_digest(release.manifest.envelope_bytes, key=team[role].private_key)
        for role in ("qa", "security")
    }
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    duplicates: list[str] = []

    def upload(role: str) -> None:
        try:
            barrier.wait()
            services.release_approve(
                release=release, signer=team[role].user, role=role, cose=blocks[role], now=NOW
            )
        except DuplicateApprovalError:
            duplicates.append(role)  # the same bytes uploaded twice at once: exactly one wins
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=upload, args=(role,)) for role in ("qa", "security") * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(duplicates) == ["qa", "security"]
    release.refresh_from_db()
    assert release.approvals.count() == 3  # author + qa + security, no duplicates
    assert release.status == ReleaseStatus.APPROVED
    assert services.release_evaluate(release, now=NOW).approved
    assert AuditEvent.objects.filter(action="release.approved").count() == 1
    assert audit_verify().ok


@pytest.mark.django_db
def test_key_expiry_is_noticed_by_the_periodic_re_evaluation(release, team):
    from workers.tasks import releases_reevaluate_task

    approve(release, team["qa"], "qa")
    approve(release, team["security"], "security")
    key = team["qa"].user.signing_keys.get()
    key.valid_until = NOW + dt.timedelta(minutes=1)
    key.save()
    lost: list[str] = []
    release_approval_lost.connect(
        lambda **kw: lost.append(kw["release"].name), weak=False, dispatch_uid="t-expiry"
    )
    try:
        import time_machine

        with time_machine.travel(NOW + dt.timedelta(minutes=2), tick=False):
            assert releases_reevaluate_task() == 1
    finally:
        release_approval_lost.disconnect(dispatch_uid="t-expiry")
    release.refresh_from_db()
    assert release.status == ReleaseStatus.PENDING and lost == [release.name]
