"""``people.services.sso_sign_in`` and the pieces around it, without a provider: how a verified
answer's claims become an account and roles, the group mapping (pure), the settings readers and
the start-up checks of a half-configured provider."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.checks import run_checks

from audit.models import AuditEvent
from config.env import EnvError, envpairs
from manifests.services.access import roles_of
from people.errors import AccountDisabledError, NoMappedRoleError, SignInRefusedError
from people.mapping import SignInPolicy, claim_groups, mapped_roles, role_map_from_pairs
from people.models import ExternalIdentity
from people.services import sso_sign_in

ISSUER = "https://id.example.com"
POLICY = SignInPolicy(
    role_claim="groups",
    role_map=role_map_from_pairs([("fw-qa", "qa"), ("fw-rel", "author"), ("fw-rel", "qa")]),
)


def test_role_map_pairs_merge_per_group() -> None:
    assert POLICY.role_map == {"fw-qa": {"qa"}, "fw-rel": {"author", "qa"}}
    assert POLICY.managed_roles == {"qa", "author"}
    assert SignInPolicy(role_map=POLICY.role_map).managed_roles == frozenset()  # no claim


@pytest.mark.parametrize(
    ("value", "groups"),
    [
        (["fw-qa", "x"], {"fw-qa", "x"}),
        ("fw-qa fw-rel", {"fw-qa", "fw-rel"}),
        ("fw-qa,fw-rel", {"fw-qa", "fw-rel"}),
        (["fw-qa", 7, None], {"fw-qa"}),
        (7, set()),
        (None, set()),
    ],
)
def test_groups_claim_shapes(value: Any, groups: set[str]) -> None:
    assert claim_groups({"groups": value}, "groups") == groups


def test_mapped_roles_ignore_unmapped_groups() -> None:
    assert mapped_roles({"groups": ["fw-rel", "staff"]}, POLICY) == {"author", "qa"}
    assert mapped_roles({"groups": ["staff"]}, POLICY) == frozenset()
    assert mapped_roles({}, POLICY) == frozenset()


def test_envpairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OIDC_ROLE_MAP", " fw-qa = qa, fw-sec=security ")
    assert envpairs("OIDC_ROLE_MAP") == [("fw-qa", "qa"), ("fw-sec", "security")]
    for bad in ("fw-qa", "=qa", "fw-qa="):
        monkeypatch.setenv("OIDC_ROLE_MAP", bad)
        with pytest.raises(EnvError, match="is not KEY=VALUE"):
            envpairs("OIDC_ROLE_MAP")


@pytest.mark.django_db
def test_same_identity_signs_in_to_the_same_account() -> None:
    claims = {"sub": "42", "preferred_username": "alice", "groups": ["fw-qa"]}
    first = sso_sign_in(issuer=ISSUER, claims=claims, policy=POLICY)
    again = sso_sign_in(issuer=ISSUER, claims={**claims, "groups": ["fw-rel"]}, policy=POLICY)
    assert first.pk == again.pk
    assert roles_of(again) == {"author", "qa"}
    assert get_user_model().objects.count() == 1


@pytest.mark.django_db
def test_same_subject_at_another_issuer_is_another_account(django_user_model: Any) -> None:
    claims = {"sub": "42", "preferred_username": "alice"}
    one = sso_sign_in(issuer=ISSUER, claims=claims, policy=POLICY)
    other = sso_sign_in(issuer="https://elsewhere.example", claims=claims, policy=POLICY)
    assert one.pk != other.pk
    # The name is taken, so the second gets a suffix derived from its identity, every time.
    assert other.username.startswith("alice-") and len(other.username) == len("alice-") + 8


@pytest.mark.django_db
def test_existing_local_account_is_never_taken_over_by_username_or_email(
    django_user_model: Any,
) -> None:
    local = django_user_model.objects.create_user(username="alice", email="alice@acme.example")
    user = sso_sign_in(
        issuer=ISSUER,
        claims={"sub": "9", "preferred_username": "alice", "email": "alice@acme.example",
                "email_verified": True},
        policy=POLICY,
    )  # fmt: skip
    assert user.pk != local.pk
    assert not ExternalIdentity.objects.filter(user=local).exists()


@pytest.mark.django_db
def test_matching_by_verified_email_links_the_existing_account_when_configured(
    django_user_model: Any,
) -> None:
    policy = SignInPolicy(match_claim="email")
    local = django_user_model.objects.create_user(username="alice", email="Alice@acme.example")
    claims = {"sub": "9", "email": "alice@acme.example", "email_verified": True}
    assert sso_sign_in(issuer=ISSUER, claims=claims, policy=policy).pk == local.pk
    assert AuditEvent.objects.get().action == "user.link"
    with pytest.raises(SignInRefusedError, match="not verified"):
        sso_sign_in(
            issuer=ISSUER,
            claims={"sub": "10", "email": "bob@acme.example", "email_verified": False},
            policy=policy,
        )


@pytest.mark.django_db
def test_missing_match_claim_is_refused() -> None:
    with pytest.raises(SignInRefusedError, match="no 'sub' claim"):
        sso_sign_in(issuer=ISSUER, claims={"preferred_username": "x"}, policy=POLICY)
    assert not get_user_model().objects.exists()


@pytest.mark.django_db
def test_require_role_refuses_before_writing() -> None:
    policy = SignInPolicy(role_claim="groups", role_map=POLICY.role_map, require_role=True)
    with pytest.raises(NoMappedRoleError):
        sso_sign_in(issuer=ISSUER, claims={"sub": "1", "groups": ["staff"]}, policy=policy)
    assert not get_user_model().objects.exists()
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_disabled_account_is_refused_and_keeps_its_roles() -> None:
    user = sso_sign_in(issuer=ISSUER, claims={"sub": "1", "groups": ["fw-qa"]}, policy=POLICY)
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    events = AuditEvent.objects.count()
    with pytest.raises(AccountDisabledError):
        sso_sign_in(issuer=ISSUER, claims={"sub": "1", "groups": []}, policy=POLICY)
    assert roles_of(user) == {"qa"}
    assert AuditEvent.objects.count() == events


def _sso_settings(settings: Any) -> None:
    settings.OIDC_RP_CLIENT_ID = "console"
    settings.OIDC_RP_CLIENT_SECRET = "s"
    settings.OIDC_OP_DISCOVERY = ISSUER


def _people_errors() -> set[str]:
    return {m.id for m in run_checks() if m.id and m.id.startswith("people.")}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, set()),
        ({"OIDC_RP_CLIENT_SECRET": None}, {"people.E002"}),
        ({"OIDC_OP_DISCOVERY": None}, {"people.E003"}),
        ({"OIDC_RP_SIGN_ALGO": "HS256"}, {"people.E004"}),
        ({"OIDC_ROLE_CLAIM": "groups", "OIDC_ROLE_MAP": {"g": frozenset({"wizard"})}},
         {"people.E005"}),
        ({"OIDC_ROLE_MAP": {"g": frozenset({"qa"})}}, {"people.E006"}),
        ({"OIDC_REQUIRE_ROLE": True}, {"people.E007"}),
        ({"OIDC_RP_CLIENT_ID": None, "CONSOLE_LOCAL_LOGIN": False}, {"people.E001"}),
    ],
    ids=["complete", "no-secret", "no-provider", "symmetric-alg", "unknown-role",
         "map-without-claim", "require-without-map", "nobody-can-sign-in"],
)  # fmt: skip
def test_half_configured_sign_in_fails_the_start_up_checks(
    settings: Any, changes: dict[str, Any], expected: set[str]
) -> None:
    _sso_settings(settings)
    for name, value in changes.items():
        setattr(settings, name, value)
    assert _people_errors() == expected
