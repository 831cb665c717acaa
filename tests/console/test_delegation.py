"""Signing through a delegation in the console: the approvals inbox lists what a delegatee can
still add (labelled with the delegator), the release page offers the delegated role, and the
upload goes through ``release_approve``. What the service would refuse, or the evaluator would
ignore, is not listed: a revoked, expired or out-of-scope delegation, the author's own release,
a delegation whose delegator already counts, a chain broken above the delegatee."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from audit.models import AuditEvent
from manifests import services, suit
from manifests.models import Approval, Delegation, Release, ReleaseStatus
from tests.console.world import PASSWORD, World, signature

PENDING = "thermo-1.2.0"  # author and security have signed; qa is missing


@pytest.fixture
def dana(world: World, django_user_model: Any) -> Any:
    """A person without any role, with a registered signing key."""
    user = django_user_model.objects.create_user(username="dana", password=PASSWORD)
    key = suit.generate_private_key("ES256")
    services.signing_key_register(
        owner=user,
        public_key_pem=suit.public_key_pem(key.public_key()).decode(),
        valid_from=timezone.now() - dt.timedelta(hours=1),
    )
    world.users["dana"], world.keys["dana"] = user, key
    return user


def delegate(world: World, delegator: str, role: str, *delegatees: str, **kw: Any) -> Delegation:
    kw.setdefault("expires_at", timezone.now() + dt.timedelta(days=1))
    return services.delegation_create(
        delegator=world.users[delegator],
        role=role,
        delegatees=[world.users[d] for d in delegatees],
        threshold=1,
        **kw,
    )


def inbox(client: Any) -> list[tuple[str, str, list[str]]]:
    response = client.get("/releases/")
    assert response.status_code == 200
    return [(i["release"].name, i["role"], i["delegators"]) for i in response.context["inbox"]]


def upload(client: Any, world: World, persona: str, role: str) -> Any:
    sig = signature(world, world.releases[PENDING], persona)
    return client.post(
        f"/releases/{PENDING}/approve/",
        {"signature": SimpleUploadedFile("s.cose", sig), "role": role},
        follow=True,
    )


def test_a_roleless_delegatee_sees_the_release_and_signs_it_in_the_delegated_role(
    world: World, dana: Any, login: Any
):
    delegation = delegate(world, "qa", "qa", "dana")
    client = login("dana")
    assert inbox(client) == [(PENDING, "qa", ["qa"])]
    listing = client.get("/releases/").content.decode()
    assert "via delegation from qa" in listing
    page = client.get(f"/releases/{PENDING}/")
    assert page.context["approve_choices"] == [{"role": "qa", "delegators": ["qa"]}]
    assert '<option value="qa" selected>qa (via delegation from qa)</option>' in (
        page.content.decode()
    )
    done = upload(client, world, "dana", "qa")
    assert any("approval recorded as qa" in str(m) for m in done.context["messages"])
    release = Release.objects.get(name=PENDING)
    assert release.status == ReleaseStatus.APPROVED
    credited = done.context["data"]["tally"]["qa"]["credited"]
    assert [(c["person"], c["via"]) for c in credited] == [("qa", f"delegation:{delegation.pk}")]
    assert credited[0]["signatures"][0]["signer"] == "dana"
    assert inbox(client) == []
    # Dana holds no role: the rest of the console stays closed, and says where to go.
    dashboard = client.get("/")
    assert dashboard.status_code == 403
    assert b'id="delegated-roles"' in dashboard.content and b"/releases/" in dashboard.content


def test_a_delegatee_with_other_roles_sees_the_delegated_item_too(world: World, login: Any):
    delegate(world, "qa", "qa", "ops")
    assert inbox(login("ops")) == [(PENDING, "qa", ["qa"])]


@pytest.mark.parametrize("how", ["revoked", "expired", "out_of_scope"])
def test_a_dead_or_out_of_scope_delegation_lists_nothing_and_is_refused(
    world: World, dana: Any, login: Any, how: str
):
    if how == "expired":
        then = timezone.now() - dt.timedelta(minutes=30)
        delegate(world, "qa", "qa", "dana", now=then, expires_at=then + dt.timedelta(minutes=20))
    elif how == "out_of_scope":
        delegate(world, "qa", "qa", "dana", scope_device_classes=[world.thermo_v1])
    else:
        services.delegation_revoke(
            delegation=delegate(world, "qa", "qa", "dana"), reason="left", actor=world.users["qa"]
        )
    client = login("dana")
    events = AuditEvent.objects.count()
    if how == "out_of_scope":
        # The delegation is live, so the pages open; the service refuses this release.
        assert inbox(client) == []
        assert client.get(f"/releases/{PENDING}/").context["approve_choices"] == []
        refused = upload(client, world, "dana", "qa")
        assert any("approval.not_authorized" in str(m) for m in refused.context["messages"])
    else:
        assert client.get("/releases/").status_code == 403
        assert client.get(f"/releases/{PENDING}/").status_code == 403
        assert upload(client, world, "dana", "qa").status_code == 403
    assert not Approval.objects.filter(signer=world.users["dana"]).exists()
    assert AuditEvent.objects.count() == events


def test_the_author_is_not_offered_their_own_release_through_a_delegation(world: World, login: Any):
    delegate(world, "qa", "qa", "author")
    client = login("author")
    assert inbox(client) == []
    page = client.get(f"/releases/{PENDING}/")
    assert all(c["role"] == "author" for c in page.context["approve_choices"])
    refused = upload(client, world, "author", "qa")
    assert any("approval.self_approval" in str(m) for m in refused.context["messages"])


def test_a_delegation_whose_delegator_already_counts_is_not_listed(
    world: World, dana: Any, login: Any
):
    # Two security approvals needed; sec has signed, so sec's delegation can add nothing more.
    services.policy_set(
        device_class=world.thermo,
        kind="normal",
        rules={"author": 1, "qa": 1, "security": 2},
        actor=world.admin,
    )
    delegate(world, "sec", "security", "dana")
    assert inbox(login("dana")) == []


def test_a_sub_delegation_under_a_revoked_parent_is_not_listed(world: World, dana: Any, login: Any):
    parent = delegate(world, "qa", "qa", "ops")
    services.delegation_create(
        delegator=world.users["ops"],
        role="qa",
        delegatees=[world.users["dana"]],
        threshold=1,
        expires_at=parent.expires_at,
        parent=parent,
    )
    client = login("dana")
    assert inbox(client) == [(PENDING, "qa", ["ops"])]  # the chain qa -> ops -> dana holds
    services.delegation_revoke(delegation=parent, reason="ops left", actor=world.users["qa"])
    # release_approve would still take dana's signature (her own link is live), but the policy
    # would ignore it: the chain above her is broken. So the inbox does not ask for it.
    assert inbox(client) == []


def test_a_person_already_counted_is_not_asked_again_in_another_role(world: World, login: Any):
    # sec counts as security on the pending release; a qa signature of theirs would be ignored
    # (every person counts once per release), so qa is not asked of them.
    services.role_grant(user=world.users["sec"], role="qa", actor=world.admin)
    assert inbox(login("sec")) == []
    assert inbox(login("qa")) == [(PENDING, "qa", [])]
