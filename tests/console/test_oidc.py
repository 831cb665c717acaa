"""Single sign-on against a real OpenID Connect provider: django-oauth-toolkit's, started by the
test in its own process with an RSA key made here (tests/console/oidc_provider/), the console
under ``live_server``, and a ``requests`` session following the real redirects: console ->
provider's authorize -> provider's login form -> authorize (consent skipped for this client) ->
console's callback -> console page.

Covered: the first sign-in creates the user with the mapped roles; a later sign-in after the
provider's groups changed adds and removes roles (audited); an ID token for another audience or
signed by another key is refused, and so is one carrying another sign-in's nonce; a replayed
or missing state is refused; OIDC_REQUIRE_ROLE refuses a user no group maps; a disabled account
cannot sign in through the provider, and its open session ends; password sign-in can be turned
off; and the same sign-in in Debian's chromium, driven by Playwright.
"""

from __future__ import annotations

import html
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from manifests.services.access import roles_of
from people.mapping import role_map_from_pairs
from people.models import ExternalIdentity
from people.services import user_disable
from tests.conftest import REPO_ROOT
from tests.console.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.helpers import personas

CLIENT_ID = "fwupd-console"
CLIENT_SECRET = "console-secret-for-tests-only"
PASSWORD = "idp-password-1"
STARTUP_SECONDS = 60


@dataclass
class Provider:
    issuer: str
    base: str
    env: dict[str, str]
    tamper_dir: Path
    process: subprocess.Popen[bytes]

    def user(self, name: str, *groups: str) -> None:
        """Create the provider's user or replace its groups (password ``PASSWORD``)."""
        subprocess.run(
            [sys.executable, "-m", "tests.console.oidc_provider.serve", "user", name, PASSWORD,
             *groups],
            env=self.env, cwd=REPO_ROOT, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_provider(workdir: Path, redirect_uri: str, *, issuer: str | None = None) -> Provider:
    """A provider process with a fresh RSA key; ``issuer`` lets it claim another's name."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = workdir / "key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    tamper = workdir / "tamper"
    tamper.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "OIDC_TEST_DB": str(workdir / "idp.sqlite3"),
        "OIDC_TEST_KEY_FILE": str(key_file),
        "OIDC_TEST_ISSUER": issuer or f"{base}/o",
        "OIDC_TEST_TAMPER_DIR": str(tamper),
        "OIDC_TEST_PORT": str(port),
    }
    log = (workdir / "provider.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.console.oidc_provider.serve", "serve", str(port),
         CLIENT_ID, CLIENT_SECRET, redirect_uri],
        env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    provider = Provider(env["OIDC_TEST_ISSUER"], base, env, tamper, process)
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            if requests.get(f"{base}/o/.well-known/openid-configuration", timeout=2).ok:
                return provider
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            provider.stop()
            raise RuntimeError(
                "the test identity provider did not start:\n"
                + (workdir / "provider.log").read_text(errors="replace")
            )
        time.sleep(0.2)


@pytest.fixture(scope="session")
def provider(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    started = start_provider(tmp_path_factory.mktemp("idp-a"), f"{live_server.url}/oidc/callback/")
    yield started
    started.stop()


@pytest.fixture(scope="session")
def impostor(
    live_server: Any, provider: Provider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Provider]:
    """A second provider with its own key that claims the first one's issuer name."""
    started = start_provider(
        tmp_path_factory.mktemp("idp-b"),
        f"{live_server.url}/oidc/callback/",
        issuer=provider.issuer,
    )
    yield started
    started.stop()


@pytest.fixture
def sso(settings: Any, provider: Provider, live_server: Any) -> Provider:
    """The console configured for the provider through discovery, groups mapped to roles."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_OP_DISCOVERY = provider.issuer
    settings.OIDC_PROVIDER_NAME = "Test IdP"
    settings.OIDC_ROLE_CLAIM = "groups"
    settings.OIDC_ROLE_MAP = role_map_from_pairs(
        [("fw-qa", "qa"), ("fw-sec", "security"), ("fw-ops", "fleet_operator")]
    )
    settings.OIDC_REQUIRE_ROLE = False
    for claim in ("aud", "nonce"):
        (provider.tamper_dir / claim).unlink(missing_ok=True)
    return provider


@dataclass
class SignIn:
    session: requests.Session
    response: requests.Response

    @property
    def callback_url(self) -> str:
        return next(
            r.headers["Location"]
            for r in self.response.history
            if "/oidc/callback/" in r.headers.get("Location", "")
        )

    @property
    def landed(self) -> str:
        return self.response.url


def sign_in(console: str, username: str, *, next_page: str = "/releases/") -> SignIn:
    """The whole flow, as a browser does it."""
    session = requests.Session()
    login_page = session.get(f"{console}/login/?next={next_page}", timeout=30)
    link = re.search(r'href="(/oidc/authenticate/[^"]*)"', login_page.text)
    assert link, login_page.text
    form = session.get(console + link.group(1).replace("&amp;", "&"), timeout=30)
    assert "/accounts/login/" in form.url, form.url
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert csrf
    done = session.post(
        form.url,
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": csrf.group(1)},
        headers={"Referer": form.url},
        timeout=30,
    )
    return SignIn(session, done)


def console_user(console: str, session: requests.Session) -> str | None:
    """Who the console thinks this session is (None: sent to the login page)."""
    page = session.get(f"{console}/releases/", timeout=30)
    if "/login/" in page.url:
        return None
    match = re.search(r'<span class="who">(\S+) ', page.text)
    return match.group(1) if match else "(no name)"


def refusal(sign: SignIn) -> str:
    assert sign.landed.split("?")[0].endswith("/login/"), sign.landed
    match = re.search(r'<li class="error">([^<]*)</li>', sign.response.text)
    assert match, sign.response.text
    return html.unescape(match.group(1))


@pytest.mark.django_db(transaction=True)
def test_first_sign_in_creates_the_user_with_mapped_roles_and_a_later_one_follows_groups(
    sso: Provider, live_server: Any
) -> None:
    sso.user("alice", "fw-qa", "staff")
    page = requests.get(f"{live_server.url}/login/", timeout=30)
    assert "Sign in with Test IdP" in page.text
    assert 'name="password"' in page.text  # local sign-in stays

    first = sign_in(live_server.url, "alice")
    assert first.landed == f"{live_server.url}/releases/"
    alice = get_user_model().objects.get(username="alice")
    assert roles_of(alice) == {"qa"}
    assert not alice.has_usable_password()
    identity = ExternalIdentity.objects.get(user=alice)
    assert (identity.issuer, identity.claim) == (sso.issuer, "sub")
    assert console_user(live_server.url, first.session) == "alice"

    # The provider moves alice from QA to security and operations.
    sso.user("alice", "fw-sec", "fw-ops")
    second = sign_in(live_server.url, "alice")
    assert second.landed == f"{live_server.url}/releases/"
    assert get_user_model().objects.filter(username="alice").count() == 1
    assert roles_of(alice) == {"security", "fleet_operator"}
    source = f"oidc:{sso.issuer}"
    events = list(
        AuditEvent.objects.filter(object_id="alice")
        .order_by("seq")
        .values_list("actor", "action", "details__role")
    )
    assert events == [
        (source, "user.create", None),
        (source, "role.grant", "qa"),
        (source, "role.grant", "fleet_operator"),
        (source, "role.grant", "security"),
        (source, "role.revoke", "qa"),
    ]


@pytest.mark.django_db(transaction=True)
def test_provider_groups_do_not_touch_roles_an_admin_granted(
    sso: Provider, live_server: Any, django_user_model: Any
) -> None:
    """Only the roles in OIDC_ROLE_MAP follow the provider; an auditor grant made by an admin
    stays after a sign-in with no mapped group."""
    from manifests.services import role_grant

    sso.user("bob", "fw-qa")
    sign_in(live_server.url, "bob")
    bob = get_user_model().objects.get(username="bob")
    admin = personas.superuser(django_user_model)
    role_grant(user=bob, role="auditor", actor=admin)
    sso.user("bob")
    sign_in(live_server.url, "bob")
    assert roles_of(bob) == {"auditor"}


@pytest.mark.django_db(transaction=True)
def test_user_without_mapped_groups_signs_in_with_no_role(sso: Provider, live_server: Any) -> None:
    sso.user("carl", "marketing")
    done = sign_in(live_server.url, "carl")
    assert done.landed == f"{live_server.url}/releases/"
    assert done.response.status_code == 403  # what a user with no role sees
    assert roles_of(get_user_model().objects.get(username="carl")) == frozenset()


@pytest.mark.django_db(transaction=True)
def test_require_role_refuses_a_user_without_mapped_groups(
    sso: Provider, live_server: Any, settings: Any
) -> None:
    settings.OIDC_REQUIRE_ROLE = True
    sso.user("carl", "marketing")
    done = sign_in(live_server.url, "carl")
    assert "[people.no_mapped_role]" in refusal(done)
    assert console_user(live_server.url, done.session) is None
    assert not get_user_model().objects.filter(username="carl").exists()
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_id_token_for_another_audience_is_refused(sso: Provider, live_server: Any) -> None:
    sso.user("alice", "fw-qa")
    (sso.tamper_dir / "aud").write_text("some-other-client")
    done = sign_in(live_server.url, "alice")
    assert "Audience doesn't match" in refusal(done)
    assert console_user(live_server.url, done.session) is None
    assert not get_user_model().objects.exists()


@pytest.mark.django_db(transaction=True)
def test_id_token_for_another_sign_in_is_refused(sso: Provider, live_server: Any) -> None:
    """A token whose nonce is not the one this sign-in sent (one replayed from another
    sign-in) is refused although the provider signed it."""
    sso.user("alice", "fw-qa")
    (sso.tamper_dir / "nonce").write_text("nonce-of-another-sign-in")
    done = sign_in(live_server.url, "alice")
    assert "Nonce verification failed" in refusal(done)
    assert console_user(live_server.url, done.session) is None
    assert not get_user_model().objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("verify_kid", "reason"),
    [(True, "Could not find a valid JWKS"), (False, "Signature verification failed")],
    ids=["key-id-unknown", "signature-wrong"],
)
def test_id_token_signed_by_another_key_is_refused(
    sso: Provider, impostor: Provider, live_server: Any, settings: Any,
    verify_kid: bool, reason: str,
) -> None:  # fmt: skip
    """The impostor calls itself by the real provider's issuer name and runs the whole flow,
    but the console takes keys only from the real provider's JWKS."""
    settings.OIDC_VERIFY_KID = verify_kid
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{impostor.base}/o/authorize/"
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{impostor.base}/o/token/"
    settings.OIDC_OP_USER_ENDPOINT = f"{impostor.base}/o/userinfo/"
    impostor.user("mallory", "fw-sec")
    done = sign_in(live_server.url, "mallory")
    assert reason in refusal(done)
    assert console_user(live_server.url, done.session) is None
    assert not get_user_model().objects.exists()


@pytest.mark.django_db(transaction=True)
def test_replayed_or_missing_state_is_refused(sso: Provider, live_server: Any) -> None:
    sso.user("alice", "fw-qa")
    done = sign_in(live_server.url, "alice")
    callback = done.callback_url
    assert "state=" in callback and "code=" in callback
    # Replayed in the same browser: the state was used up by the first callback.
    # (alice stays signed in as she was; the replayed answer itself is refused.)
    replay = done.session.get(callback, timeout=30)
    assert replay.history[0].headers["Location"] == "/login/"
    assert "does not belong to this browser session" in replay.text
    # Replayed from another browser, which never started a sign-in.
    stranger = requests.Session()
    foreign = stranger.get(callback, timeout=30)
    assert "does not belong to this browser session" in foreign.text
    assert console_user(live_server.url, stranger) is None
    # Without a state at all.
    bare = stranger.get(re.sub(r"&?state=[^&]*", "", callback), timeout=30)
    assert "/login/" in bare.url
    assert "the sign-in answer carries no state" in bare.text
    assert console_user(live_server.url, stranger) is None


@pytest.mark.django_db(transaction=True)
def test_disabled_user_cannot_sign_in_through_sso(
    sso: Provider, live_server: Any, django_user_model: Any
) -> None:
    sso.user("alice", "fw-qa")
    first = sign_in(live_server.url, "alice")
    assert console_user(live_server.url, first.session) == "alice"
    admin = personas.superuser(django_user_model)
    alice = get_user_model().objects.get(username="alice")
    user_disable(user=alice, actor=admin)
    # The open session ends at its next request...
    assert console_user(live_server.url, first.session) is None
    # ...and signing in again through the provider is refused, roles left as they were.
    sso.user("alice", "fw-sec")
    again = sign_in(live_server.url, "alice")
    assert "[people.account_disabled]" in refusal(again)
    assert console_user(live_server.url, again.session) is None
    assert roles_of(alice) == {"qa"}


@pytest.mark.django_db(transaction=True)
def test_password_sign_in_can_be_turned_off(
    sso: Provider, live_server: Any, settings: Any, django_user_model: Any, client: Any
) -> None:
    from django.contrib.auth import authenticate

    settings.CONSOLE_LOCAL_LOGIN = False
    django_user_model.objects.create_user(username="local", password="local-password-9")
    page = client.get("/login/")
    assert b"Sign in with Test IdP" in page.content
    assert b'name="password"' not in page.content
    posted = client.post("/login/", {"username": "local", "password": "local-password-9"})
    assert posted.status_code == 403
    assert b"Password sign-in is turned off" in posted.content
    assert client.get("/releases/").status_code == 302
    # No password is accepted anywhere (the admin site signs in through the same backends).
    assert authenticate(username="local", password="local-password-9") is None
    sso.user("alice", "fw-qa")
    assert console_user(live_server.url, sign_in(live_server.url, "alice").session) == "alice"


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
@pytest.mark.django_db(transaction=True)
def test_sign_in_with_the_provider_in_a_browser(
    sso: Provider, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The button on the login page, the provider's form, and back to the page asked for."""
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    sso.user("alice", "fw-qa")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(base_url=live_server.url)
            page.set_default_timeout(30_000)
            page.goto("/releases/")
            page.wait_for_url("**/login/?next=/releases/")
            page.click("text=Sign in with Test IdP")
            page.wait_for_url(f"{sso.base}/accounts/login/**")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{live_server.url}/releases/")
            expect(page.locator("header .who")).to_contain_text("alice (qa)")
        finally:
            browser.close()
