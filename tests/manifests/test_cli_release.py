"""``manage.py role|key|policy|release|delegation|audit``: the approval workflow through the CLI.

One end-to-end story (admin, author, QA, security each doing their part, private keys staying in
their own directories), then refusals: each exits 1 with the stable code in its message and
writes nothing. A real subprocess pins the exit status a shell sees for a refused approval.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from manifests import services, suit
from manifests.models import (
    Approval,
    Delegation,
    Manifest,
    Release,
    ReleasePolicy,
    RoleAssignment,
    SigningKey,
)
from tests.conftest import REPO_ROOT, Persona
from tests.helpers.imgtool import build_mcuboot_image

RELEASE = "thermo-2.0.0"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """The personas' passwords are never checked here, and PBKDF2 costs ~0.2 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def cli(*args: str | Path) -> str:
    out = io.StringIO()
    call_command(*map(str, args), stdout=out, stderr=io.StringIO())
    return out.getvalue()


def show(name: str = RELEASE) -> dict[str, Any]:
    return json.loads(cli("release", "show", name, "--json"))


def snapshot() -> dict[str, Any]:
    """Everything a refused release-side command must leave alone."""
    return {
        "counts": {
            model.__name__: model.objects.count()
            for model in (
                Manifest,
                Release,
                Approval,
                RoleAssignment,
                SigningKey,
                ReleasePolicy,
                Delegation,
                AuditEvent,
            )
        },
        "releases": sorted(Release.objects.values_list("name", "status")),
        "keys": sorted(SigningKey.objects.values_list("kid", "status", "valid_until")),
        "roles": sorted(RoleAssignment.objects.values_list("user_id", "role", "revoked_at")),
    }


def refused(*args: str | Path, code: str) -> str:
    before = snapshot()
    with pytest.raises(CommandError) as caught:
        cli(*args)
    assert caught.value.returncode == 1
    assert f"[{code}]" in str(caught.value), str(caught.value)
    assert snapshot() == before
    return str(caught.value)


def keygen(home: Path, alg: str) -> tuple[Path, Path]:
    """`suit keygen` on the person's own machine (a directory of their own)."""
    home.mkdir(parents=True, exist_ok=True)
    cli("suit", "keygen", "--alg", alg, "--out", home / "signing.pem")
    return home / "signing.pem", home / "signing.pub.pem"


def kid_of(pub: Path) -> str:
    return suit.kid_for_public_key(suit.load_public_key_pem(pub.read_bytes())).hex()


# --- the story ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_release_story_from_keygen_to_revocation(
    tmp_path: Path, admin: Any, author: Persona, approver_qa: Persona, approver_security: Persona
):
    alice, bob, carol = (p.user.username for p in (author, approver_qa, approver_security))

    # Admin: catalog and roles.
    cli(
        "vendor",
        "add",
        "--name",
        "Acme Sensors",
        "--domain",
        "acme.example",
        "--user",
        admin.username,
    )
    cli(
        "devclass", "add", "--vendor-domain", "acme.example", "--name", "thermo-v2",
        "--user", admin.username,
    )  # fmt: skip
    for username, role in ((alice, "author"), (bob, "qa"), (carol, "security")):
        assert cli("role", "grant", username, role, "--user", admin.username).strip() == (
            f"grant {role} for {username}: done"
        )
    assert cli("role", "list").split() == [alice, "author", bob, "qa", carol, "security"]

    # Everyone generates a key on their own machine and registers the public half.
    keys = {
        alice: keygen(tmp_path / alice, "ES256"),
        bob: keygen(tmp_path / bob, "Ed25519"),
        carol: keygen(tmp_path / carol, "ES256"),
    }
    for username, (_, pub) in keys.items():
        assert kid_of(pub) in cli("key", "add", "--user", username, "--public-key", pub)
    listing = cli("key", "list")
    assert all(kid_of(pub) in listing for _, pub in keys.values())

    # Author: image, manifest, release.
    image = tmp_path / alice / "thermo-2.0.0.bin"
    image.write_bytes(
        build_mcuboot_image(tmp_path, payload=b"\x42" * 3000, version="2.0.0", security_counter=2)
    )
    cli("image", "upload", image, "--user", alice)
    expires = (timezone.now() + dt.timedelta(days=30)).replace(microsecond=0)
    envelope = tmp_path / alice / "thermo-2.0.0.suit"
    cli(
        "suit", "create", "--vendor-domain", "acme.example", "--class", "thermo-v2",
        "--version", "2.0.0", "--sequence", "5", "--security-counter", "2", "--image", image,
        "--uri", "coap://fw.example/thermo-2.0.0.bin", "--expires", expires.isoformat(),
        "--key", keys[alice][0], "--out", envelope,
    )  # fmt: skip
    digest = json.loads(cli("suit", "inspect", envelope, "--json"))["manifest_digest"]
    assert cli("manifest", "import", envelope, "--user", alice).startswith(f"manifest {digest}")
    output = cli("release", "create", "--manifest", digest[:12], "--name", RELEASE, "--user", alice)
    assert "submitted: NOT APPROVED: author 1/1, qa 0/1 (needs 1), security 0/1" in output
    assert show()["status"] == "pending"

    # QA signs on the server with their own key file (only the signature is stored).
    output = cli(
        "release", "approve", RELEASE, "--role", "qa", "--user", bob, "--key", keys[bob][0]
    )
    assert "approval recorded: NOT APPROVED" in output

    # Security co-signs the envelope on their own machine and uploads the result.
    carol_copy = tmp_path / carol / "thermo-2.0.0.carol.suit"
    cli("suit", "sign", envelope, "--key", keys[carol][0], "--out", carol_copy)
    output = cli(
        "release", "approve", RELEASE, "--role", "security", "--user", carol,
        "--signature", carol_copy,
    )  # fmt: skip
    assert "approval recorded: APPROVED: author 1/1, qa 1/1, security 1/1" in output

    data = show()
    assert (data["status"], data["approved_now"], data["kind"]) == ("approved", True, "normal")
    assert (data["manifest_digest"], data["version"], data["sequence_number"]) == (
        digest,
        "2.0.0",
        5,
    )
    assert (data["security_counter"], data["device_class"]) == (2, "acme.example/thermo-v2")
    assert dt.datetime.fromisoformat(data["expires"]) == expires
    tally = {
        role: [(c["person"], c["via"], [s["kid"] for s in c["signatures"]]) for c in t["credited"]]
        for role, t in data["tally"].items()
    }
    assert tally == {
        "author": [(alice, "direct", [kid_of(keys[alice][1])])],
        "qa": [(bob, "direct", [kid_of(keys[bob][1])])],
        "security": [(carol, "direct", [kid_of(keys[carol][1])])],
    }
    assert all(t["missing"] == 0 and t["required"] == 1 for t in data["tally"].values())
    assert data["ignored"] == []
    text = cli("release", "show", RELEASE)
    assert "APPROVED now" in text and f"{carol} ({carol} key {kid_of(keys[carol][1])[:12]}" in text

    # Anyone can check the released envelope offline against the three public keys.
    released = tmp_path / "released.suit"
    assert "3 signatures)" in cli("release", "envelope", RELEASE, "--out", released)
    verified = cli(
        "suit", "verify", released, "--threshold", "3",
        *[part for _, pub in keys.values() for part in ("--key", pub)],
    )  # fmt: skip
    assert verified.startswith(f"OK: 3 distinct key(s) signed manifest {digest}")
    released_view = json.loads(cli("suit", "inspect", released, "--json"))
    assert released_view["manifest_digest"] == digest
    assert sorted(s["kid"] for s in released_view["signatures"]) == sorted(
        kid_of(pub) for _, pub in keys.values()
    )

    # Carol's laptop is stolen: revoking her key withdraws the approval at once.
    carol_kid = kid_of(keys[carol][1])
    assert "revoked" in cli(
        "key", "revoke", carol_kid[:12], "--reason", "laptop stolen", "--user", carol
    )
    data = show()
    assert (data["status"], data["approved_now"]) == ("pending", False)
    assert data["tally"]["security"]["missing"] == 1
    assert [(i["signer"], i["role"], i["kid"]) for i in data["ignored"]] == [
        (carol, "security", carol_kid)
    ]
    assert "NOT approved now" in cli("release", "show", RELEASE)
    with pytest.raises(CommandError, match=r"\[approval.release_state\]"):
        cli("release", "envelope", RELEASE, "--out", tmp_path / "refused.suit")
    assert not (tmp_path / "refused.suit").exists()

    # The trail is intact and tells the whole story.
    assert cli("audit", "verify").startswith("audit chain OK:")
    head_seq, head_hash = cli("audit", "head").split()
    exported = tmp_path / "audit.jsonl"
    cli("audit", "export", "--out", exported)
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    assert (records[-1]["seq"], records[-1]["hash"]) == (int(head_seq), head_hash)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    release_actions = [r["action"] for r in records if r["object_id"] == RELEASE]
    assert release_actions == [
        "release.create",
        "release.submit",
        "release.approve",
        "release.approve",
        "release.approved",
        "release.approval_lost",
    ]
    actions = [r["action"] for r in records]
    for action, count in {
        "vendor.create": 1,
        "device_class.create": 1,
        "role.grant": 3,
        "key.register": 3,
        "image.upload": 1,
        "manifest.import": 1,
        "key.revoke": 1,
    }.items():
        assert actions.count(action) == count, action
    assert "".join(cli("audit", "export").split()) == "".join(exported.read_text().split())


# --- fixtures for the refusals ----------------------------------------------------------------
class Team:
    """Personas with roles and registered keys; their private keys written to PEM files."""

    def __init__(self, tmp_path: Path, admin: Any, people: dict[str, Persona]) -> None:
        self.admin = admin
        self.people = people
        self.home = tmp_path / "keys"
        self.home.mkdir()
        for role, persona in people.items():
            (self.home / f"{role}.pem").write_bytes(suit.private_key_pem(persona.private_key))
            (self.home / f"{role}.pub.pem").write_text(persona.public_pem)

    def user(self, role: str) -> str:
        return self.admin.username if role == "admin" else self.people[role].user.username

    def priv(self, role: str) -> Path:
        return self.home / f"{role}.pem"

    def pub(self, role: str) -> Path:
        return self.home / f"{role}.pub.pem"

    def kid(self, role: str) -> str:
        return kid_of(self.pub(role))


@pytest.fixture
def team(
    tmp_path: Path,
    admin: Any,
    author: Persona,
    approver_qa: Persona,
    approver_security: Persona,
    operator: Persona,
    outsider: Persona,
) -> Team:
    people = {
        "author": author,
        "qa": approver_qa,
        "security": approver_security,
        "operator": operator,
        "outsider": outsider,
    }
    earlier = timezone.now() - dt.timedelta(hours=1)
    for role, persona in people.items():
        if role != "outsider":
            services.role_grant(
                user=persona.user,
                role="fleet_operator" if role == "operator" else role,
                actor=admin,
                now=earlier,
            )
        services.signing_key_register(
            owner=persona.user, public_key_pem=persona.public_pem, valid_from=earlier
        )
    return Team(tmp_path, admin, people)


def _import_manifest(team: Team, device_class: Any, tmp_path: Path, *, sequence: int) -> Manifest:
    version = f"2.0.{sequence}"
    author = team.people["author"]
    data = build_mcuboot_image(
        tmp_path, payload=version.encode() * 300, version=version, security_counter=2
    )
    image = services.image_upload(data=data, actor=author.user)
    params = suit.ManifestParams(
        vendor_id=device_class.vendor.uuid,
        class_id=device_class.uuid,
        sequence_number=sequence,
        version=version,
        security_counter=2,
        image_digest=bytes.fromhex(image.sha256),
        image_size=image.size,
        uri="coap://fw.example/app",
        use_before=timezone.now() + dt.timedelta(days=30),
        component_id=device_class.component_id_bytes,
        payload_format="mcuboot",
    )
    envelope = suit.create_envelope(params, keys=[author.private_key])
    return services.manifest_import(envelope=envelope, created_by=author.user)


@pytest.fixture
def release(team: Team, device_class: Any, tmp_path: Path) -> Release:
    manifest = _import_manifest(team, device_class, tmp_path, sequence=5)
    cli(
        "release", "create", "--manifest", manifest.manifest_digest[:12], "--name", RELEASE,
        "--user", team.user("author"),
    )  # fmt: skip
    return Release.objects.get(name=RELEASE)


def approve(team: Team, role: str, signer: str | None = None, key: str | None = None) -> str:
    return cli(
        "release", "approve", RELEASE, "--role", role, "--user", team.user(signer or role),
        "--key", team.priv(key or signer or role),
    )  # fmt: skip


# --- refusals: each exits 1 with its stable code and writes nothing -----------------------------
def _garbage(team: Team) -> Path:
    path = team.home / "garbage.cose"
    path.write_bytes(b"\xd2\x84garbage")
    return path


def _stranger_key(team: Team) -> Path:
    path = team.home / "stranger.pem"
    path.write_bytes(suit.private_key_pem(suit.generate_private_key("Ed25519")))
    return path


def _bad_pem(team: Team) -> Path:
    path = team.home / "bad.pub.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    return path


def _manifest_prefix(_: Team) -> str:
    return Manifest.objects.get().manifest_digest[:12]


def _tomorrow() -> str:
    return (timezone.now() + dt.timedelta(days=1)).isoformat()


REFUSALS: dict[str, tuple[Callable[[Team], list[Any]], str]] = {
    "self-approval": (
        lambda t: ["release", "approve", RELEASE, "--role", "qa", "--user", t.user("author"),
                   "--key", t.priv("author")],
        "approval.self_approval",
    ),
    "author-signs-twice": (
        lambda t: ["release", "approve", RELEASE, "--role", "author", "--user", t.user("author"),
                   "--key", t.priv("author")],
        "approval.duplicate",
    ),
    "outsider-approves": (
        lambda t: ["release", "approve", RELEASE, "--role", "qa", "--user", t.user("outsider"),
                   "--key", t.priv("outsider")],
        "approval.not_authorized",
    ),
    "operator-approves-as-security": (
        lambda t: ["release", "approve", RELEASE, "--role", "security", "--user",
                   t.user("operator"), "--key", t.priv("operator")],
        "approval.not_authorized",
    ),
    "someone-elses-key": (
        lambda t: ["release", "approve", RELEASE, "--role", "qa", "--user", t.user("qa"),
                   "--key", t.priv("security")],
        "approval.key",
    ),
    "unregistered-key": (
        lambda t: ["release", "approve", RELEASE, "--role", "qa", "--user", t.user("qa"),
                   "--key", _stranger_key(t)],
        "approval.key",
    ),
    "garbage-signature": (
        lambda t: ["release", "approve", RELEASE, "--role", "qa", "--user", t.user("qa"),
                   "--signature", _garbage(t)],
        "approval.bad_signature",
    ),
    "submit-twice": (
        lambda t: ["release", "submit", RELEASE, "--user", t.user("author")],
        "approval.release_state",
    ),
    "envelope-of-unapproved": (
        lambda t: ["release", "envelope", RELEASE, "--out", t.home / "refused.suit"],
        "approval.release_state",
    ),
    "qa-revokes-release": (
        lambda t: ["release", "revoke", RELEASE, "--reason", "dislike", "--user", t.user("qa")],
        "approval.permission_denied",
    ),
    "revoke-without-reason": (
        lambda t: ["release", "revoke", RELEASE, "--reason", " ", "--user", t.user("security")],
        "approval.release_state",
    ),
    "qa-creates-release": (
        lambda t: ["release", "create", "--manifest", _manifest_prefix(t), "--name", "other",
                   "--user", t.user("qa")],
        "approval.permission_denied",
    ),
    "second-release-of-manifest": (
        lambda t: ["release", "create", "--manifest", _manifest_prefix(t), "--name", "other",
                   "--user", t.user("author")],
        "approval.release_exists",
    ),
    "qa-grants-role": (
        lambda t: ["role", "grant", t.user("outsider"), "security", "--user", t.user("qa")],
        "approval.permission_denied",
    ),
    "revoke-role-not-held": (
        lambda t: ["role", "revoke", t.user("outsider"), "qa", "--user", t.user("admin")],
        "approval.permission_denied",
    ),
    "qa-sets-policy": (
        lambda t: ["policy", "set", "qa=1", "--user", t.user("qa")],
        "approval.permission_denied",
    ),
    "zero-threshold-policy": (
        lambda t: ["policy", "set", "qa=0", "--user", t.user("admin")],
        "approval.bad_policy",
    ),
    "policy-for-unknown-role": (
        lambda t: ["policy", "set", "{wizard: 1}", "--user", t.user("admin")],
        "approval.bad_policy",
    ),
    "policy-for-unknown-class": (
        lambda t: ["policy", "set", "qa=1", "--vendor-domain", "acme.example", "--class", "nope",
                   "--user", t.user("admin")],
        "manifest.unknown_device_class",
    ),
    "delegate-to-self": (
        lambda t: ["delegation", "create", "--user", t.user("security"), "--role", "security",
                   "--to", t.user("security"), "--expires", _tomorrow()],
        "approval.delegation",
    ),
    "delegate-a-role-not-held": (
        lambda t: ["delegation", "create", "--user", t.user("outsider"), "--role", "security",
                   "--to", t.user("qa"), "--expires", _tomorrow()],
        "approval.permission_denied",
    ),
    "delegation-already-expired": (
        lambda t: ["delegation", "create", "--user", t.user("security"), "--role", "security",
                   "--to", t.user("qa"), "--expires", "2020-01-01T00:00:00Z"],
        "approval.delegation",
    ),
    "threshold-above-delegatees": (
        lambda t: ["delegation", "create", "--user", t.user("security"), "--role", "security",
                   "--to", t.user("qa"), "--threshold", "2", "--expires", _tomorrow()],
        "approval.delegation",
    ),
    "garbage-public-key": (
        lambda t: ["key", "add", "--user", t.user("qa"), "--public-key", _bad_pem(t)],
        "manifest.invalid_key",
    ),
    "key-registered-twice": (
        lambda t: ["key", "add", "--user", t.user("outsider"), "--public-key", t.pub("qa")],
        "manifest.key_exists",
    ),
    "key-valid-until-in-the-past": (
        lambda t: ["key", "add", "--user", t.user("qa"), "--public-key",
                   _stranger_pub(t), "--valid-until", "2020-01-01T00:00:00Z"],
        "manifest.key_state",
    ),
    "key-revoke-without-reason": (
        lambda t: ["key", "revoke", t.kid("qa"), "--reason", " ", "--user", t.user("qa")],
        "manifest.key_state",
    ),
    "negative-rotation-overlap": (
        lambda t: ["key", "rotate", t.kid("qa"), "--public-key", _stranger_pub(t),
                   "--overlap-hours", "-1", "--user", t.user("qa")],
        "manifest.key_state",
    ),
}  # fmt: skip


def _stranger_pub(team: Team) -> Path:
    path = team.home / "stranger.pub.pem"
    path.write_bytes(suit.public_key_pem(suit.generate_private_key("ES256").public_key()))
    return path


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_command_exits_1_with_its_code_and_writes_nothing(
    team: Team, release: Release, case: str
):
    build, code = REFUSALS[case]
    refused(*build(team), code=code)
    assert not (team.home / "refused.suit").exists()


@pytest.mark.django_db
def test_same_approval_uploaded_twice_is_refused(team: Team, release: Release):
    approve(team, "qa")
    refused(
        "release", "approve", RELEASE, "--role", "qa", "--user", team.user("qa"),
        "--key", team.priv("qa"), code="approval.duplicate",
    )  # fmt: skip


@pytest.mark.django_db
def test_signature_made_for_another_manifest_is_refused(
    team: Team, release: Release, device_class: Any, tmp_path: Path
):
    other = _import_manifest(team, device_class, tmp_path / "other", sequence=6)
    envelope = team.home / "other.suit"
    envelope.write_bytes(other.envelope_bytes)
    cosigned = team.home / "other.qa.suit"
    cli("suit", "sign", envelope, "--key", team.priv("qa"), "--out", cosigned)
    message = refused(
        "release", "approve", RELEASE, "--role", "qa", "--user", team.user("qa"),
        "--signature", cosigned, code="approval.bad_signature",
    )  # fmt: skip
    assert "another manifest" in message


@pytest.mark.django_db
def test_uploaded_envelope_without_a_signature_of_the_signer_is_refused(
    team: Team, release: Release
):
    """An envelope carrying only other people's signatures credits nobody."""
    envelope = team.home / "release.suit"
    envelope.write_bytes(release.manifest.envelope_bytes)
    before = snapshot()
    with pytest.raises(CommandError, match="carries no signature by a key of") as caught:
        cli(
            "release", "approve", RELEASE, "--role", "qa", "--user", team.user("qa"),
            "--signature", envelope,
        )  # fmt: skip
    assert caught.value.returncode == 1
    assert snapshot() == before


@pytest.mark.django_db
def test_approval_of_a_revoked_release_is_refused(team: Team, release: Release):
    cli("release", "revoke", RELEASE, "--reason", "boot loop", "--user", team.user("security"))
    assert show()["status"] == "revoked"
    refused(
        "release", "approve", RELEASE, "--role", "qa", "--user", team.user("qa"),
        "--key", team.priv("qa"), code="approval.release_state",
    )  # fmt: skip
    refused(
        "release", "revoke", RELEASE, "--reason", "again", "--user", team.user("security"),
        code="approval.release_state",
    )  # fmt: skip


@pytest.mark.django_db
def test_unknown_names_are_refused_with_exit_1(team: Team, release: Release):
    for args, message in [
        (["release", "show", "no-such-release"], "no release named 'no-such-release'"),
        (["release", "submit", RELEASE, "--user", "mallory"], "no user named 'mallory'"),
        (["key", "revoke", "ffff", "--reason", "x", "--user", "admin"], "no keys match"),
        (["delegation", "revoke", "999", "--reason", "x", "--user", "admin"], "no delegation"),
        (["release", "create", "--manifest", "ffff", "--name", "x", "--user", "admin"],
         "no manifests match"),
    ]:  # fmt: skip
        before = snapshot()
        with pytest.raises(CommandError, match=message) as caught:
            cli(*args)
        assert caught.value.returncode == 1
        assert snapshot() == before


# --- authorization gaps on key lifecycle (product bug: see report) -------------------------------
@pytest.mark.django_db
def test_outsider_cannot_rotate_someone_elses_key_to_one_they_hold(team: Team, release: Release):
    """Rotation re-registers the *owner's* identity on a key the caller chooses and expires the
    owner's key after the overlap (0 here), withdrawing every approval made with it."""
    approve(team, "qa")
    approve(team, "security")
    assert show()["approved_now"]
    refused(
        "key", "rotate", team.kid("security")[:12], "--public-key", _stranger_pub(team),
        "--overlap-hours", "0", "--user", team.user("outsider"),
        code="approval.permission_denied",
    )  # fmt: skip
    assert show()["approved_now"]


@pytest.mark.django_db
def test_outsider_cannot_revoke_someone_elses_key(team: Team, release: Release):
    approve(team, "qa")
    approve(team, "security")
    refused(
        "key", "revoke", team.kid("security")[:12], "--reason", "because",
        "--user", team.user("outsider"), code="approval.permission_denied",
    )  # fmt: skip
    assert show()["approved_now"]


# --- the other server-side commands -------------------------------------------------------------
@pytest.mark.django_db
def test_author_cannot_approve_after_the_fact_by_signing_their_own_envelope(
    team: Team, release: Release
):
    """`suit sign` by the author and upload as qa: the self-approval rule still holds."""
    envelope = team.home / "release.suit"
    envelope.write_bytes(release.manifest.envelope_bytes)
    cli("suit", "sign", envelope, "--key", team.priv("author"), "--out", team.home / "x.suit")
    refused(
        "release", "approve", RELEASE, "--role", "qa", "--user", team.user("author"),
        "--signature", team.home / "x.suit", code="approval.self_approval",
    )  # fmt: skip


@pytest.mark.django_db
def test_policy_set_and_show_re_evaluate_the_release(team: Team, release: Release):
    approve(team, "qa")
    approve(team, "security")
    assert show()["status"] == "approved"
    output = cli(
        "policy", "set", "{author: 1, qa: 2, security: 1}", "--vendor-domain", "acme.example",
        "--class", "thermo-v2", "--user", team.user("admin"),
    )  # fmt: skip
    assert output.startswith("set ")
    data = show()
    assert (data["status"], data["tally"]["qa"]["missing"]) == ("pending", 1)
    shown = cli("policy", "show", "--vendor-domain", "acme.example", "--class", "thermo-v2")
    lines = shown.splitlines()
    assert any(
        "acme.example/thermo-v2" in line
        and '{"author": 1, "qa": 2, "security": 1}' in line
        and "[device class]" in line
        for line in lines
    )
    assert any('{"security": 2}' in line and "[built-in]" in line for line in lines)
    assert AuditEvent.objects.filter(action="release.approval_lost").count() == 1


def _deputies_approve(team: Team, django_user_model: Any) -> Delegation:
    """Security delegates 2-of-2 to two deputies for the class; QA and both deputies sign."""
    deputies = []
    for name in ("deputy-1", "deputy-2"):
        django_user_model.objects.create_user(username=name, password="x-pass-1")
        priv, pub = keygen(team.home / name, "Ed25519")
        cli("key", "add", "--user", name, "--public-key", pub)
        deputies.append((name, priv))
    output = cli(
        "delegation", "create", "--user", team.user("security"), "--role", "security",
        "--to", "deputy-1,deputy-2", "--threshold", "2", "--expires", _tomorrow(),
        "--class", "acme.example/thermo-v2",
    )  # fmt: skip
    delegation = Delegation.objects.get()
    assert output.strip() == f"delegation {delegation.pk} created"
    approve(team, "qa")
    for name, priv in deputies:
        cli("release", "approve", RELEASE, "--role", "security", "--user", name, "--key", priv)
    return delegation


@pytest.mark.django_db
def test_delegated_security_approval_counts_for_the_delegator(
    team: Team, release: Release, django_user_model: Any
):
    delegation = _deputies_approve(team, django_user_model)
    assert "deputy-1,deputy-2 security 2-of-2" in cli("delegation", "list")
    data = show()
    assert data["approved_now"]
    (credit,) = data["tally"]["security"]["credited"]
    assert credit["via"] == f"delegation:{delegation.pk}"
    assert [s["signer"] for s in credit["signatures"]] == ["deputy-1", "deputy-2"]
    cli("delegation", "revoke", str(delegation.pk), "--reason", "back", "--user", "admin")
    assert not show()["approved_now"]
    assert "revoked" in cli("delegation", "list")


@pytest.mark.django_db
def test_show_names_the_delegator_credited_through_a_delegation(
    team: Team, release: Release, django_user_model: Any
):
    """The credit goes to the delegator (policy.Credit.person); `person` must say who that is,
    as it does for direct credits, not repeat the `via` tag."""
    _deputies_approve(team, django_user_model)
    (credit,) = show()["tally"]["security"]["credited"]
    assert credit["person"] == team.user("security")


@pytest.mark.django_db
def test_key_rotate_keeps_approvals_during_the_overlap(team: Team, release: Release):
    approve(team, "qa")
    approve(team, "security")
    successor = _stranger_pub(team)
    output = cli(
        "key", "rotate", team.kid("security")[:12], "--public-key", successor,
        "--overlap-hours", "2", "--user", team.user("security"),
    )  # fmt: skip
    assert output.strip() == f"rotated to {kid_of(successor)}"
    assert show()["approved_now"]
    listing = cli("key", "list", "--user", team.user("security")).splitlines()
    assert [line.split()[3] for line in listing] == ["rotated", "active"]


@pytest.mark.django_db
def test_role_revoke_withdraws_the_approval_and_is_listed(team: Team, release: Release):
    approve(team, "qa")
    approve(team, "security")
    qa = team.user("qa")
    cli("role", "revoke", qa, "qa", "--user", team.user("admin"))
    assert f"{qa:20} qa" not in cli("role", "list")
    data = show()
    assert (data["status"], data["tally"]["qa"]["missing"]) == ("pending", 1)


@pytest.mark.django_db
def test_audit_verify_against_an_anchor_not_in_the_chain_exits_1(team: Team):
    head_seq, head_hash = cli("audit", "head").split()
    assert int(head_seq) == AuditEvent.objects.count() > 0
    assert cli("audit", "verify", "--anchor", head_hash).startswith("audit chain OK")
    with pytest.raises(CommandError, match="BROKEN") as caught:
        cli("audit", "verify", "--anchor", "f" * 64)
    assert caught.value.returncode == 1


@pytest.mark.django_db
@pytest.mark.parametrize("command", ["release-envelope", "audit-export"])
def test_unwritable_output_path_exits_1_with_a_message(
    team: Team, release: Release, tmp_path: Path, command: str
):
    """Like `suit` (cannot write ...), an output path in a missing directory is a CommandError
    with exit 1, not an OSError traceback."""
    approve(team, "qa")
    approve(team, "security")
    out = tmp_path / "missing-dir" / "out"
    args = {
        "release-envelope": ["release", "envelope", RELEASE, "--out", out],
        "audit-export": ["audit", "export", "--out", out],
    }[command]
    with pytest.raises(CommandError, match="cannot write") as caught:
        cli(*args)
    assert caught.value.returncode == 1


# --- exit status through a real process ---------------------------------------------------------
@pytest.fixture
def manage_py(settings: Any, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs ``manage.py`` in a child process against this test's (committed) database.

    PostgreSQL: the child connects to the test database by name. SQLite: the test database
    lives in memory, so it is copied to a file for the child and copied back afterwards."""
    env = dict(os.environ, FIRMWARE_STORAGE_ROOT=str(settings.FIRMWARE_STORAGE_ROOT))
    connection.ensure_connection()
    is_sqlite = connection.vendor == "sqlite"
    if is_sqlite:
        db_file = tmp_path / "child.sqlite3"
        env.pop("DATABASE_URL", None)
        env["FWUPD_SQLITE_PATH"] = str(db_file)
    else:
        url = urlsplit(os.environ["DATABASE_URL"])
        name = connection.settings_dict["NAME"]
        env["DATABASE_URL"] = urlunsplit(url._replace(path=f"/{name}"))

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        if is_sqlite:
            with sqlite3.connect(db_file) as target:
                connection.connection.backup(target)
            target.close()
        proc = subprocess.run(
            [sys.executable, "manage.py", *map(str, args)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if is_sqlite:
            source = sqlite3.connect(db_file)
            try:
                source.backup(connection.connection)
            finally:
                source.close()
        return proc

    return run


@pytest.mark.django_db(transaction=True)
def test_subprocess_refused_approval_exits_1_with_the_code_on_stderr(
    team: Team, release: Release, manage_py: Callable[..., subprocess.CompletedProcess[str]]
):
    before = snapshot()
    proc = manage_py(
        "release", "approve", RELEASE, "--role", "qa", "--user", team.user("author"),
        "--key", team.priv("author"),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("CommandError: ")
    assert "[approval.self_approval]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot() == before

    proc = manage_py(
        "release", "approve", RELEASE, "--role", "qa", "--user", team.user("qa"),
        "--key", team.priv("qa"),
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert "approval recorded: NOT APPROVED" in proc.stdout
    assert Approval.objects.filter(role="qa").count() == 1
