"""The console in a real browser (Debian's chromium, headless, driven by Playwright) against a
live server, a gateway on loopback and ~20 simulated devices:

QA signs in and uploads a signature that completes a release's approval; the fleet operator
signs in, creates a campaign from a pasted spec (plan, then apply), watches the canary roll out
until it waits at its gate, hits the emergency stop, sees the stop on the campaign page, promotes
the gate and sees that nothing more is dispatched. Screenshots of the main pages go to
``test-artifacts/screenshots/``.

The beat task is played by a thread calling ``campaign_reconcile`` every half second. Not the
test thread: on the embedded SQLite default the live server shares the test thread's in-memory
connection, and htmx polls arrive while a reconcile pass holds a transaction on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections

from campaigns import engine
from campaigns.models import Campaign, Device, Rollout, RolloutState
from manifests.models import Release, ReleaseStatus
from tests.conftest import REPO_ROOT
from tests.console.world import PASSWORD, World, build_world, make_release, signature, spec_text
from workers.embedded import EmbeddedFleet
from workers.lwm2m.simulator import FleetSpec

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
DEVICES = 20
CANARY = 5  # 25% of 20
TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (/usr/bin/chromium): "
        "run `bash scripts/install-system-deps.sh`",
    ),
]


def _retry_sqlite_locks(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    """SQLite's shared-cache test database refuses a statement at once ("table is locked") while
    another thread writes; such a statement did not run, so run it again."""
    from django.db import OperationalError

    for _ in range(200):
        try:
            return execute(sql, params, many, context)
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.02)
    return execute(sql, params, many, context)


class Beat(threading.Thread):
    """Reconciles the running campaigns every half second, as the Celery beat task does."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="console-test-beat")
        self.halt = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        if connection.vendor == "sqlite":
            connection.execute_wrappers.append(_retry_sqlite_locks)
        try:
            while not self.halt.wait(0.5):
                try:
                    for pk in Campaign.objects.filter(status="running").values_list(
                        "pk", flat=True
                    ):
                        engine.campaign_reconcile(pk)
                except Exception as exc:  # a locked table: the next pass tries again
                    if "locked" not in str(exc):
                        self.errors.append(exc)
        finally:
            connections.close_all()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)


@pytest.fixture
def deployment(
    live_server: Any, eager_celery: None, django_user_model: Any
) -> Iterator[dict[str, Any]]:
    """The world with a release still missing QA's approval, and a fleet on loopback."""
    sqlite = connection.vendor == "sqlite"
    if sqlite:
        connection.execute_wrappers.append(_retry_sqlite_locks)
    world = build_world(django_user_model)
    release = make_release(
        world,
        name="thermo-1.1.0",
        version="1.1.0",
        sequence=5,
        counter=2,
        approvers=(("sec", "security"),),
    )
    fleet = EmbeddedFleet(trust_anchors=[world.author_public_key], fw_poll_seconds=0.3)
    fleet.add(
        FleetSpec(
            count=DEVICES,
            manufacturer="Acme Sensors",
            model="thermo-v2",
            vendor_id=str(world.vendor.uuid),
            class_id=str(world.thermo.uuid),
            version="1.0.0",
            sequence_number=1,
            security_counter=1,
        )
    )
    beat = Beat()
    try:
        fleet.start()
        deadline = time.monotonic() + 60
        while Device.objects.filter(online=True, firmware_version="1.0.0").count() < DEVICES:
            assert time.monotonic() < deadline, "fleet did not register"
            time.sleep(0.2)
        yield {"world": world, "release": release, "fleet": fleet, "beat": beat}
    finally:
        if beat.is_alive():
            beat.stop()
        fleet.stop()
        if sqlite:
            connection.execute_wrappers.remove(_retry_sqlite_locks)
        else:
            _close_stopped_threads_connections()


def _close_stopped_threads_connections() -> None:
    """The gateway's threads have stopped but their PostgreSQL sessions stay open (Django keeps
    a connection per thread). One left inside a transaction would hold locks the next test's
    flush waits for: end those. Idle sessions stay: the live server hands one of them to the
    next test's main thread (ending it would fail that test); ``_end_leftover_sessions`` in
    ``tests/console/conftest.py`` ends them before the test database is dropped. Only sessions
    on this worker's own test database, other than this one, are touched."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND state <> 'idle'"
        )


@pytest.fixture
def browser_page(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; the ORM calls the test makes
    # between browser steps are ordinary blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            base_url=live_server.url, viewport={"width": 1280, "height": 900}
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("dialog", lambda dialog: dialog.accept())  # the confirmations
        try:
            yield page
        finally:
            context.close()
            browser.close()


def _sign_in(page: Any, username: str) -> None:
    from playwright.sync_api import expect

    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    # Not wait_for_url("**/"): the login page's own URL matches that before the POST lands.
    expect(page.locator("header .who")).to_contain_text(f"{username} (")


def _sign_out(page: Any) -> None:
    page.click("header button:has-text('Sign out')")
    page.wait_for_url("**/login/")


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _count(page: Any, stage: str, what: str) -> int:
    return int(page.inner_text(f"#live tr[data-stage='{stage}'] td[data-count='{what}']"))


def test_approve_create_watch_and_emergency_stop_in_the_browser(
    deployment: dict[str, Any], browser_page: Any, tmp_path: Path
):
    from playwright.sync_api import expect

    page = browser_page
    world: World = deployment["world"]
    release = deployment["release"]
    started = time.monotonic()

    # --- QA completes the approval by uploading a signature -----------------------------------
    _sign_in(page, "qa")
    page.click("header a:has-text('Releases')")
    expect(page.locator("#inbox")).to_contain_text("thermo-1.1.0")
    page.click("#inbox a:has-text('thermo-1.1.0')")
    expect(page.locator("#missing")).to_contain_text("qa (1 more)")
    sig = tmp_path / "qa.cose"
    sig.write_bytes(signature(world, release, "qa"))
    page.set_input_files("#signature-file", str(sig))
    page.select_option("#approve-role", "qa")
    page.click("#approve-button")
    expect(page.locator("#release-status")).to_have_text("approved")
    expect(page.locator("#approved-now")).to_contain_text("Approved now")
    expect(page.locator("#tally tr[data-role='qa']")).to_contain_text("qa at")
    assert Release.objects.get(pk=release.pk).status == ReleaseStatus.APPROVED
    _shot(page, "release")
    _sign_out(page)

    # --- the fleet operator creates a campaign from a spec --------------------------------------
    _sign_in(page, "ops")
    page.goto("/campaigns/+new/")
    page.fill(
        "#spec-input",
        spec_text("thermo-browser"),  # canary 25% behind a fleet_operator gate, then the rest
    )
    page.click("#plan-button")
    expect(page.locator("#plan")).to_contain_text(f"{DEVICES} device(s) in the cohort")
    assert not Campaign.objects.filter(name="thermo-browser").exists()  # a plan writes nothing
    _shot(page, "campaign-plan")
    page.click("#apply-button")
    page.wait_for_url("**/campaigns/thermo-browser/")
    expect(page.locator("ul.messages")).to_contain_text("campaign thermo-browser created")

    # --- watch it progress (htmx refreshes the live block every 2 s) ---------------------------
    deployment["beat"].start()
    expect(page.locator("#live tr[data-stage='canary'] td[data-count='succeeded']")).to_have_text(
        str(CANARY), timeout=TIMEOUT_MS
    )
    expect(
        page.locator("#live tr[data-stage='canary'] td[data-role='stage-status']")
    ).to_contain_text("waiting_gate", timeout=TIMEOUT_MS)
    assert _count(page, "all", "pending") == DEVICES - CANARY
    assert _count(page, "all", "in_flight") == 0
    # The device table refreshes itself too: no reload since the campaign was created.
    expect(page.locator("#devices td[data-role='state']", has_text="succeeded")).to_have_count(
        CANARY, timeout=TIMEOUT_MS
    )
    _shot(page, "campaign")
    page.goto("/")
    expect(page.locator("#alerts")).to_contain_text("waiting at its gate")
    expect(
        page.locator("#campaigns .campaign-card[data-campaign='thermo-browser']")
    ).to_be_visible()
    _shot(page, "dashboard")

    # --- emergency stop -----------------------------------------------------------------------
    page.goto("/incident/")
    page.fill("#stop-reason", "field reports of reboot loops")
    page.click("#stop-button")
    expect(page.locator("#stop-banner")).to_contain_text("field reports of reboot loops")
    expect(page.locator("#active-stops")).to_contain_text("Everything")
    _shot(page, "incident")
    page.goto("/campaigns/thermo-browser/")
    expect(page.locator("#campaign-stopped")).to_be_visible()

    # Promoting the gate moves the campaign to the next stage, but the stop holds dispatch.
    page.click("#action-promote")
    expect(page.locator("ul.messages")).to_contain_text("promote done")
    expect(page.locator("#current-stage")).to_have_text("2", timeout=TIMEOUT_MS)
    time.sleep(3)  # several reconcile passes
    page.reload()
    assert _count(page, "all", "in_flight") == 0
    assert _count(page, "all", "succeeded") == 0
    assert _count(page, "all", "pending") == DEVICES - CANARY
    campaign = Campaign.objects.get(name="thermo-browser")
    assert not Rollout.objects.filter(
        campaign=campaign, stage=1, state__in=[RolloutState.QUEUED, RolloutState.DISPATCHED]
    ).exists()
    expect(page.locator("#campaign-status")).to_have_text("running")
    _shot(page, "campaign-stopped")

    # --- the audit trail recorded all of it and verifies ---------------------------------------
    page.goto("/audit/")
    expect(page.locator("#chain-status")).to_contain_text("verified")
    for action in ("release.approve", "campaign.create", "emergency.stop", "campaign.promote"):
        expect(page.locator("#events")).to_contain_text(action)
    _shot(page, "audit")
    updated = Rollout.objects.filter(campaign=campaign, state="succeeded").first()
    page.goto(f"/devices/{updated.device.endpoint}/")
    expect(page.locator("#fw-version")).to_have_text("1.1.0")
    expect(page.locator("#history")).to_contain_text("thermo-browser")
    _shot(page, "device")
    assert not deployment["beat"].errors, deployment["beat"].errors
    print(f"browser scenario took {time.monotonic() - started:.1f} s")
