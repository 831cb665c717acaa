"""``manage.py trustpolicy``: security drafts a class's policy, exports the body, signs it
offline with a key file, uploads the signature; the released document is exported and is what a
device accepts. Refusals exit 1 with the stable code and write nothing."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from manifests import device_trust, suit
from manifests.models import DeviceTrustPolicy
from tests.manifests.test_releases import NOW, team  # noqa: F401

pytestmark = pytest.mark.django_db


def cli(*args: str | Path) -> str:
    out = io.StringIO()
    call_command(*map(str, args), stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_trust_policy_drafted_signed_offline_and_exported(team, device_class, tmp_path):  # noqa: F811
    where = ["--vendor-domain", device_class.vendor.domain, "--class", device_class.name]
    sec = team["security"]
    kid = suit.kid_for_public_key(sec.private_key).hex()
    qa_kid = suit.kid_for_public_key(team["qa"].private_key).hex()
    expires = (NOW + dt.timedelta(days=3650)).isoformat()
    out = cli(
        "trustpolicy", "draft", *where, "--role", f"security=1:{kid}",
        "--role", f"qa=1:{qa_kid}", "--expires", expires, "--user", sec.user.username,
    )  # fmt: skip
    assert "drafted trust policy v1" in out
    body, key, block, doc = (tmp_path / n for n in ("body", "key.pem", "sig", "policy.cbor"))
    cli("trustpolicy", "body", *where, "--version", "1", "--out", body)
    key.write_bytes(suit.private_key_pem(sec.private_key))
    cli("trustpolicy", "sign-body", "--body", body, "--key", key, "--out", block)
    user = ["--user", sec.user.username]
    cli("trustpolicy", "sign", *where, "--version", "1", "--signature", block, *user)
    assert "v1 released" in cli("trustpolicy", "show", *where)
    cli("trustpolicy", "export", *where, "--version", "1", "--out", doc)
    policy = device_trust.accept_initial(doc.read_bytes(), class_id=device_class.uuid, now=NOW)
    assert set(policy.roles) == {"security", "qa"}


@pytest.mark.parametrize(
    "role", ["security", "security=x:ab", "qa=1:" + "ab" * 32], ids=["no-kids", "nan", "unknown"]
)
def test_malformed_trust_policy_draft_exits_1_and_writes_nothing(team, device_class, role):  # noqa: F811
    where = ["--vendor-domain", device_class.vendor.domain, "--class", device_class.name]
    with pytest.raises(CommandError) as info:
        cli(
            "trustpolicy", "draft", *where, "--role", role, "--expires", "2030-01-01",
            "--user", team["security"].user.username,
        )  # fmt: skip
    assert info.value.returncode == 1
    assert not DeviceTrustPolicy.objects.exists()


def test_release_of_a_draft_short_of_its_threshold_exits_1_with_the_device_rule(
    team,  # noqa: F811
    device_class,
    tmp_path,
):
    where = ["--vendor-domain", device_class.vendor.domain, "--class", device_class.name]
    sec, qa = team["security"], team["qa"]
    kids = ",".join(suit.kid_for_public_key(p.private_key).hex() for p in (sec, qa))
    expires = (NOW + dt.timedelta(days=3650)).isoformat()
    user = ["--user", sec.user.username]
    cli("trustpolicy", "draft", *where, "--role", f"security=2:{kids}", "--expires", expires, *user)
    with pytest.raises(CommandError) as info:
        cli("trustpolicy", "release", *where, "--version", "1", *user)
    assert info.value.returncode == 1 and "trust_policy.not_accepted" in str(info.value)
    assert DeviceTrustPolicy.objects.get().status == "draft"
    for persona in (sec, qa):
        block = tmp_path / persona.user.username
        block.write_bytes(
            device_trust.sign_policy(
                DeviceTrustPolicy.objects.get().body_bytes, persona.private_key
            )
        )
        cli(
            "trustpolicy", "sign", *where, "--version", "1", "--signature", block,
            "--user", persona.user.username,
        )  # fmt: skip
    out = cli("trustpolicy", "release", *where, "--version", "1", *user)
    assert "released trust policy v1" in out  # idempotent: already released by the signature
