"""``manage.py user add|list|disable|enable``: accounts from the command line. Every refusal
exits 1 with its stable code and writes nothing; every change is in the audit trail; the
server's first admin is the only account made without an acting admin."""

from __future__ import annotations

import io
import re
import shlex
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audit.models import AuditEvent
from manifests.models import RoleAssignment
from manifests.services.access import roles_of
from people.models import ExternalIdentity
from people.selectors import user_rows
from tests.conftest import REPO_ROOT
from tests.helpers import personas

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple 7"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def cli(*args: str, stdin: str | None = None) -> str:
    out = io.StringIO()
    extra = {"stdin": io.StringIO(stdin)} if stdin is not None else {}
    call_command(*args, stdout=out, stderr=io.StringIO(), **extra)
    return out.getvalue()


def counts() -> dict[str, int]:
    return {
        "users": get_user_model().objects.count(),
        "roles": RoleAssignment.objects.count(),
        "active": get_user_model().objects.filter(is_active=True).count(),
        "audit": AuditEvent.objects.count(),
    }


def refused(*args: str, code: str, stdin: str | None = None) -> str:
    before = counts()
    with pytest.raises(CommandError) as caught:
        cli(*args, stdin=stdin)
    assert caught.value.returncode == 1
    assert f"[{code}]" in str(caught.value)
    assert counts() == before
    return str(caught.value)


@pytest.fixture
def admin(django_user_model: Any) -> Any:
    return personas.superuser(django_user_model, password=PASSWORD)


def test_first_admin_needs_no_acting_user_and_is_audited() -> None:
    out = cli("user", "add", "root", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert "added root (admin)" in out
    root = get_user_model().objects.get(username="root")
    assert root.check_password(PASSWORD)
    assert roles_of(root) == {"admin"}
    events = list(AuditEvent.objects.order_by("seq").values_list("actor", "action", "object_id"))
    assert events == [("bootstrap", "user.create", "root"), ("bootstrap", "role.grant", "root")]


def test_first_account_must_be_an_admin() -> None:
    refused("user", "add", "alice", "--role", "qa", "--no-password", code="people.actor_required")


def test_once_an_admin_exists_an_admin_must_act(admin: Any) -> None:
    refused("user", "add", "alice", "--no-password", code="people.actor_required")
    refused(
        "user", "add", "root2", "--role", "admin", "--no-password", code="people.actor_required"
    )


def test_admin_adds_a_user_with_roles(admin: Any) -> None:
    out = cli(
        "user", "add", "alice", "--email", "alice@acme.example", "--role", "author",
        "--role", "qa", "--password-stdin", "--user", "admin", stdin=PASSWORD,
    )  # fmt: skip
    assert "added alice (author, qa)" in out
    alice = get_user_model().objects.get(username="alice")
    assert alice.email == "alice@acme.example"
    assert alice.check_password(PASSWORD)
    assert roles_of(alice) == {"author", "qa"}
    actions = list(
        AuditEvent.objects.filter(object_id="alice").values_list("actor", "action", "details")
    )
    assert actions == [
        ("admin", "user.create", {"email": "alice@acme.example", "roles": ["author", "qa"],
                                  "password": True}),
        ("admin", "role.grant", {"role": "author"}),
        ("admin", "role.grant", {"role": "qa"}),
    ]  # fmt: skip


def test_no_password_user_cannot_sign_in_with_any_password(admin: Any, client: Any) -> None:
    cli("user", "add", "dave", "--no-password", "--user", "admin")
    dave = get_user_model().objects.get(username="dave")
    assert not dave.has_usable_password()
    response = client.post("/login/", {"username": "dave", "password": ""})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize(
    ("args", "stdin", "code"),
    [
        (["admin", "--no-password"], None, "people.user_exists"),
        (["ADMIN", "--no-password"], None, "people.user_exists"),
        (["bob", "--role", "qa", "--role", "wizard", "--no-password"], None, "people.unknown_role"),
        (["bob", "--password-stdin"], "bob\n", "people.weak_password"),
        (["bob", "--password-stdin"], "12345678\n", "people.weak_password"),
        (["bob smith", "--no-password"], None, "people.invalid_user"),
        (["bob", "--email", "not-an-address", "--no-password"], None, "people.invalid_user"),
    ],
    ids=["existing", "existing-other-case", "unknown-role", "too-short", "numeric", "bad-name",
         "bad-email"],
)  # fmt: skip
def test_bad_user_add_is_refused(admin: Any, args: list[str], stdin: str | None, code: str) -> None:
    refused("user", "add", *args, "--user", "admin", stdin=stdin, code=code)


def test_user_add_by_a_non_admin_is_refused(admin: Any, django_user_model: Any) -> None:
    django_user_model.objects.create_user(username="qa")
    refused("user", "add", "bob", "--no-password", "--user", "qa",
            code="approval.permission_denied")  # fmt: skip


def test_password_on_stdin_must_not_be_empty(admin: Any) -> None:
    before = counts()
    with pytest.raises(CommandError, match="no password on standard input"):
        cli("user", "add", "bob", "--password-stdin", "--user", "admin", stdin="\n")
    assert counts() == before


def test_password_choice_is_required_and_exclusive(admin: Any) -> None:
    with pytest.raises(CommandError):
        cli("user", "add", "bob", "--user", "admin")
    with pytest.raises(CommandError):
        cli("user", "add", "bob", "--no-password", "--password-stdin", "--user", "admin")
    assert not get_user_model().objects.filter(username="bob").exists()


def test_list_shows_roles_state_and_sign_in(admin: Any, django_user_model: Any) -> None:
    cli("user", "add", "alice", "--role", "author", "--password-stdin", "--user", "admin",
        stdin=PASSWORD)  # fmt: skip
    cli("user", "add", "dave", "--role", "fleet_operator", "--no-password", "--user", "admin")
    cli("user", "disable", "dave", "--user", "admin")
    sso = django_user_model.objects.create_user(username="erin")
    sso.set_unusable_password()
    sso.save()
    ExternalIdentity.objects.create(
        user=sso, issuer="https://id.example", subject="1", created_at=sso.date_joined,
        last_sign_in=sso.date_joined,
    )  # fmt: skip
    lines = cli("user", "list").splitlines()
    assert lines[0].split() == ["USERNAME", "ROLES", "ACTIVE", "SIGN-IN", "LAST", "LOGIN"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert re.match(r"admin\s+admin\s+yes\s+local\s+never$", rows["admin"])
    assert re.match(r"alice\s+author\s+yes\s+local\s+never$", rows["alice"])
    assert re.match(r"dave\s+fleet_operator\s+no\s+none\s+never$", rows["dave"])
    assert re.match(r"erin\s+-\s+yes\s+sso\s+never$", rows["erin"])


def test_user_list_queries_do_not_grow_with_users(
    admin: Any, django_user_model: Any, django_assert_max_num_queries: Any
) -> None:
    for n in range(30):
        user = django_user_model.objects.create_user(username=f"user{n}")
        RoleAssignment.objects.create(user=user, role="qa", granted_at=user.date_joined)
    with django_assert_max_num_queries(3):
        rows = user_rows()
    assert len(rows) == 31
    assert rows[-1].roles == ("qa",)


def test_disable_and_enable_are_audited_and_idempotent(admin: Any, django_user_model: Any) -> None:
    django_user_model.objects.create_user(username="bob")
    assert "bob: disabled" in cli("user", "disable", "bob", "--user", "admin")
    assert not django_user_model.objects.get(username="bob").is_active
    before = AuditEvent.objects.count()
    assert "(was already disabled)" in cli("user", "disable", "bob", "--user", "admin")
    assert AuditEvent.objects.count() == before
    assert "bob: enabled" in cli("user", "enable", "bob", "--user", "admin")
    assert django_user_model.objects.get(username="bob").is_active
    actions = list(AuditEvent.objects.filter(object_id="bob").values_list("actor", "action"))
    assert actions == [("admin", "user.disable"), ("admin", "user.enable")]


def test_disabling_the_last_active_superuser_is_refused(admin: Any) -> None:
    message = refused("user", "disable", "admin", "--user", "admin", code="people.last_admin")
    assert "last active superuser or admin" in message


def test_an_admin_may_be_disabled_while_another_admin_remains(
    admin: Any, django_user_model: Any
) -> None:
    cli("user", "add", "root2", "--role", "admin", "--no-password", "--user", "admin")
    cli("user", "disable", "admin", "--user", "root2")
    # root2 is now the last one: an admin role grant counts as a superuser does.
    refused("user", "disable", "root2", "--user", "root2", code="people.last_admin")
    # A disabled superuser is no admin: it cannot act any more.
    refused("user", "enable", "admin", "--user", "admin", code="approval.permission_denied")


def test_disable_by_a_non_admin_is_refused(admin: Any, django_user_model: Any) -> None:
    django_user_model.objects.create_user(username="bob")
    django_user_model.objects.create_user(username="qa")
    refused("user", "disable", "bob", "--user", "qa", code="approval.permission_denied")


def test_unknown_user_is_refused(admin: Any) -> None:
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        cli("user", "disable", "ghost", "--user", "admin")


def test_disabled_user_cannot_sign_in_to_the_console(admin: Any, client: Any) -> None:
    cli("user", "add", "bob", "--role", "qa", "--password-stdin", "--user", "admin",
        stdin=PASSWORD)  # fmt: skip
    signed_in = client.post("/login/", {"username": "bob", "password": PASSWORD})
    assert signed_in.status_code == 302
    assert client.get("/releases/").status_code == 200
    cli("user", "disable", "bob", "--user", "admin")
    # The open session stops working at its next request...
    page = client.get("/releases/")
    assert page.status_code == 302
    assert page["Location"].startswith("/login/")
    # ...and the password no longer signs in.
    again = client.post("/login/", {"username": "bob", "password": PASSWORD})
    assert again.status_code == 200
    assert b"didn't match" in again.content
    assert client.get("/releases/").status_code == 302
    cli("user", "enable", "bob", "--user", "admin")
    assert client.post("/login/", {"username": "bob", "password": PASSWORD}).status_code == 302


def test_disabled_users_api_tokens_stop_working(admin: Any, django_user_model: Any) -> None:
    bob = django_user_model.objects.create_user(username="bob")
    RoleAssignment.objects.create(user=bob, role="qa", granted_at=bob.date_joined)
    token = Token.objects.create(user=bob)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.get("/api/me/").status_code == 200
    cli("user", "disable", "bob", "--user", "admin")
    refused_call = api.get("/api/me/")
    assert refused_call.status_code == 401
    cli("user", "enable", "bob", "--user", "admin")
    assert api.get("/api/me/").status_code == 200


def _readme_people_lines() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("A release's life, from the command line", 1)[1].split("```sh", 1)[1]
    block = block.split("```", 1)[0]
    return [
        line.split("  #", 1)[0].strip()
        for line in block.splitlines()
        if line.startswith("manage.py user ")
    ]


def test_readme_release_life_people_commands_work_on_an_empty_server() -> None:
    """The README's walkthrough starts with its people; they exist with the roles its later
    commands act with (admin: vendor/devclass; alice: author; bob: qa; carol: security; dave:
    fleet_operator)."""
    lines = _readme_people_lines()
    assert len(lines) >= 6
    for line in lines:
        command, _, redirect = line.partition("<")
        stdin = f"pass-for-{redirect.strip()}-77\n" if redirect else None
        cli(*shlex.split(command)[1:], stdin=stdin)
    expected = {
        "admin": {"admin"},
        "alice": {"author"},
        "bob": {"qa"},
        "carol": {"security"},
        "dave": {"fleet_operator"},
    }
    users = {user.username: user for user in get_user_model().objects.all()}
    assert {name: roles_of(users[name]) for name in expected} == expected
    assert users["alice"].check_password("pass-for-alice.pass-77")
    assert not users["dave"].has_usable_password()
