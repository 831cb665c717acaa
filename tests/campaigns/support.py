"""Helpers shared by the campaign tests (the fixtures built on them live in ``conftest.py``).

A ``Catalog`` is the release side of a small deployment (``tests/helpers/deployment.py``):
personas with their roles and keys, a vendor with two device classes, and an approved release
``thermo-1.1.0`` (sequence 5, security counter 2). ``make_release`` adds more releases signed by
the same author, so simulated devices trusting the author's key accept them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import OperationalError
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import rollouts, services
from campaigns.events import CommandResult
from campaigns.models import (
    Campaign,
    CampaignRevision,
    CampaignStage,
    Device,
    DeviceCommand,
    Rollout,
)
from campaigns.spec import parse_spec
from manifests import device_trust, suit
from manifests import services as release_services
from manifests.models import DeviceTrustPolicy, TrustPolicyStatus
from manifests.suit import report as suit_report
from tests.helpers import personas
from tests.helpers.deployment import (
    DEVICE_REPORT_KEY,
    GOOD_PAYLOAD,
    Deployment,
    approve,
    build_deployment,
    make_devices,
    make_release,
    release_from_envelope,
)

__all__ = [
    "GOOD_PAYLOAD",
    "Catalog",
    "approve",
    "build_catalog",
    "committed",
    "deliver_pending_commands",
    "make_devices",
    "make_release",
    "release_from_envelope",
    "retry_locked",
    "spec_text",
    "wait_for",
]

PERSONAS = personas.people("author", "qa", "sec", "sec2", "ops")


# How often a cross-process scenario's beat sends a reconcile tick (``throttled``).
BEAT_SECONDS = 1.5


def retry_locked(fn: Callable[[], Any]) -> Any:
    for _ in range(50):
        try:
            return fn()
        except OperationalError:  # SQLite's shared test database locks tables briefly
            time.sleep(0.05)
    return fn()


def wait_for(
    predicate: Callable[[], bool],
    timeout: float = 60,
    tick: Callable[[], Any] | None = None,
    interval: float = 0.2,
    what: str = "condition",
    progress: Callable[[], Any] | None = None,
    cap: float | None = None,
) -> None:
    """Wait until ``predicate()``, ticking ``tick`` between polls. With ``progress`` (a
    snapshot of how far the work got, e.g. rollout counts by state), ``timeout`` bounds the
    time without progress instead of the whole wait, and ``cap`` (8 x ``timeout`` unless given)
    the whole: on a machine whose CPU is shared with other work, a scenario that keeps moving
    is slow, not stuck, while one that stops moving fails as soon."""
    started = time.monotonic()
    deadline = started + timeout
    limit = started + (cap if cap is not None else 8 * timeout)
    last = retry_locked(progress) if progress is not None else None
    while time.monotonic() < deadline:
        if tick is not None:
            retry_locked(tick)
        if retry_locked(predicate):
            return
        if progress is not None:
            now = retry_locked(progress)
            if now != last:
                last = now
                deadline = min(time.monotonic() + timeout, limit)
        time.sleep(interval)
    if progress is not None:
        raise AssertionError(
            f"{what} not reached: no progress in {timeout} s, or {time.monotonic() - started:.0f}"
            f" s in all (at {last!r})"
        )
    raise AssertionError(f"{what} not reached in {timeout} s")


def throttled(fn: Callable[[], Any], seconds: float = BEAT_SECONDS) -> Callable[[], None]:
    """``fn`` at most once per ``seconds``: a beat for scenarios whose reconcile ticks go to a
    worker process. Ticking at every poll (0.3 s) sent reconciles faster than one loaded solo
    worker ran them (0.8 s each at a load of 20): its queue grew without end and the gateway's
    events queued behind the ticks, so nothing moved. Production's beat ticks every 5 s."""
    last = [float("-inf")]

    def tick() -> None:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            fn()

    return tick


def rollout_progress(rollouts: Any) -> Callable[[], list[tuple[Any, ...]]]:
    """A ``wait_for`` progress snapshot of a campaign's rollouts (counts by stage, state,
    reason, attempts, waits)."""
    return lambda: _rollout_summary(rollouts)


@dataclass
class Catalog(Deployment):
    release: Any = None  # thermo-1.1.0, approved

    @property
    def ops(self) -> Any:
        return self.users["ops"]


def build_catalog(django_user_model: Any) -> Catalog:
    catalog = build_deployment(django_user_model, PERSONAS, password="x-pass-1", cls=Catalog)
    catalog.release = make_release(
        catalog, name="thermo-1.1.0", version="1.1.0", sequence=5, counter=2
    )
    return catalog


def spec_text(
    name: str,
    *,
    release: str = "thermo-1.1.0",
    device_class: str = "acme.example/thermo-v2",
    stages: str = "  - name: all\n    size: 100%\n",
    extra: str = "",
    target_extra: str = "",
    trust_policy: int | None = None,
) -> str:
    """A campaign spec; with ``trust_policy`` a trust-policy campaign (no release)."""
    target = f"release: {release}" if trust_policy is None else f"trust_policy: {trust_policy}"
    return (
        "apiVersion: fwupd/v1\nkind: Campaign\n"
        f"name: {name}\n{target}\n"
        f"target:\n  device_class: {device_class}\n{target_extra}"
        f"stages:\n{stages}{extra}"
    )


def committed(call: Callable[[], Any], done: Callable[[], bool]) -> None:
    """Run a service on the embedded (eager, SQLite) setup. Its follow-up tasks run eagerly in
    ``on_commit`` and may hit SQLite's shared-cache table lock while the gateway thread writes;
    a broker would redeliver them. So: retry the call only if it did not commit (``done`` is
    false), then send whatever commands its failed follow-ups left pending."""

    def attempt() -> None:
        try:
            call()
        except OperationalError:
            if not done():
                raise

    retry_locked(attempt)
    deliver_pending_commands()


def deliver_pending_commands() -> None:
    from campaigns.models import CommandStatus, DeviceCommand
    from workers.tasks import device_command_task

    pending = retry_locked(
        lambda: [
            str(pk)
            for pk in DeviceCommand.objects.filter(status=CommandStatus.PENDING).values_list(
                "pk", flat=True
            )
        ]
    )
    for command_id in pending:
        retry_locked(lambda c=command_id: device_command_task.run(c))


FLEET_SPEC = """
apiVersion: fwupd/v1
kind: Campaign
name: fleet-rollout
release: thermo-1.1.0
target:
  device_class: acme.example/thermo-v2
stages:
  - name: canary
    size: 5%
    failure_threshold: 20%
    min_finished: 5
  - name: wave
    size: 30%
    failure_threshold: 10%
    min_finished: 10
  - name: all
    size: rest
    failure_threshold: 10%
    min_finished: 20
"""


def few_hundred_scenario(
    embedded: Any,
    catalog: Catalog,
    *,
    fleet_size: int,
    reconcile: Callable[[int], Any],
    interval: float = 0.2,
) -> None:
    """The issue's scale scenario on a started fleet of ``fleet_size`` thermo-v2 devices and 4
    of another class: three faulty canary devices trip the canary's failure threshold and pause
    the campaign, nothing beyond the canary moves; the canary's devices still in flight end
    (a faulty one fails), the fault clears, the operator resumes, and the campaign completes
    with every device updated exactly once, twice for the devices that had failed.
    ``reconcile(campaign_id)`` is the beat's tick (in process, or a task sent to a worker).

    The pause trips on the first failure that reaches the stage's threshold (one of the first
    five devices to end), so when it trips the other faulty devices may still be installing.
    The operator resumes only once the canary has nothing in flight: a faulty device whose
    failure arrived after the resume (its boot had failed before the fault was cleared) would
    rightly pause the campaign again, which is not what this scenario is about."""
    from campaigns import services
    from campaigns.models import (
        IN_FLIGHT_STATES,
        Campaign,
        CampaignStatus,
        Device,
        Rollout,
        RolloutState,
    )
    from campaigns.spec import parse_spec
    from workers.lwm2m.simulator import Faults

    spec = parse_spec(FLEET_SPEC, source="fleet.yaml")
    campaign, _ = services.campaign_apply(spec=spec, actor=catalog.ops, source="fleet.yaml")
    rollouts = Rollout.objects.filter(campaign=campaign)
    canary = sorted(
        rollouts.filter(stage=0, state=RolloutState.PENDING).values_list(
            "device__endpoint", flat=True
        )
    )
    assert len(canary) == -(-fleet_size * 5 // 100)  # ceil(5%)
    faulty = canary[:3]
    embedded.set_faults(faulty, Faults(boot_fail=True))

    def status() -> str:
        return str(Campaign.objects.get(pk=campaign.pk).status)

    def tick() -> None:
        reconcile(campaign.pk)

    moved = rollout_progress(rollouts)
    wait_for(
        lambda: status() == CampaignStatus.PAUSED,
        timeout=120, tick=tick, interval=interval, what="canary pause", progress=moved,
    )  # fmt: skip
    wait_for(
        lambda: not rollouts.filter(stage=0, state__in=IN_FLIGHT_STATES).exists(),
        timeout=120, tick=tick, interval=interval, what="the paused canary's devices ended",
        progress=moved,
    )  # fmt: skip
    assert status() == CampaignStatus.PAUSED
    assert (
        not rollouts.filter(stage__gt=0)
        .exclude(state__in=[RolloutState.PENDING, RolloutState.SKIPPED])
        .exists()
    )
    failed = set(
        rollouts.filter(state=RolloutState.FAILED).values_list("device__endpoint", flat=True)
    )
    assert failed and failed <= set(faulty), failed
    embedded.set_faults(faulty, Faults())
    services.campaign_resume(campaign=Campaign.objects.get(pk=campaign.pk), actor=catalog.ops)
    try:
        wait_for(
            lambda: status() == CampaignStatus.COMPLETED,
            timeout=180, tick=tick, interval=interval, what="campaign completed",
            progress=moved, cap=900,
        )  # fmt: skip
    except AssertionError:
        print(status(), _rollout_summary(rollouts))
        raise
    assert rollouts.filter(state=RolloutState.SUCCEEDED).count() == fleet_size
    assert rollouts.filter(state=RolloutState.SKIPPED, reason="class_mismatch").count() == 4
    assert Device.objects.filter(firmware_version="1.1.0").count() == fleet_size
    for endpoint, attempts in rollouts.filter(state=RolloutState.SUCCEEDED).values_list(
        "device__endpoint", "attempts"
    ):
        assert attempts == (2 if endpoint in failed else 1), endpoint
        assert embedded.fleet.devices[endpoint].state.version == "1.1.0", endpoint


def _rollout_summary(rollouts: Any) -> list[tuple[Any, ...]]:
    """Rollouts grouped by stage, state, reason, attempts and waits, with their counts."""
    from django.db.models import Count

    return list(
        rollouts.values_list("stage", "state", "reason", "attempts", "waits")
        .annotate(n=Count("id"))
        .order_by("stage", "state")
    )


# --- helpers of the engine-level tests ------------------------------------------------------
def apply(catalog: Catalog, text: str, *, now: dt.datetime | None = None) -> Campaign:
    campaign, outcome = services.campaign_apply(
        spec=parse_spec(text, source="spec.yaml"), actor=catalog.ops, now=now
    )
    assert outcome == "created"
    return campaign


def signed_report(
    rollout: Rollout,
    *,
    key: Any = DEVICE_REPORT_KEY,
    nonce: bytes | None = None,
    manifest_digest: bytes | None = None,
    failure_code: str | None = None,
) -> str:
    """The SUIT report (hex) a device signs for the rollout's current attempt; each keyword
    replaces what an honest device would sign."""
    args = DeviceCommand.objects.get(pk=rollout.command_id).args
    content = suit_report.SUITReport(
        manifest_digest=manifest_digest or bytes.fromhex(rollout.manifest.manifest_digest),
        nonce=nonce or bytes.fromhex(args["report_nonce"]),
        failure=None if failure_code is None else suit_report.failure_for(failure_code),
    )
    return suit_report.sign_report(content, key).hex()


def sign_trust_policy(catalog: Catalog, policy: DeviceTrustPolicy, persona: str) -> None:
    block = device_trust.sign_policy(policy.body_bytes, catalog.keys[persona])
    release_services.trust_policy_sign(policy=policy, signer=catalog.users[persona], cose=block)


def release_trust_policy(
    catalog: Catalog,
    *,
    security: tuple[str, ...] = ("sec", "sec2"),
    signers: tuple[str, ...] = ("sec",),
    expires_at: dt.datetime | None = None,
) -> DeviceTrustPolicy:
    """The next released trust policy of thermo-v2: author, qa and the ``security`` keys (1 of
    each role), signed by ``signers`` (enough for a first policy and for a rotation that keeps
    a current security key)."""

    def kid(persona: str) -> str:
        return suit.kid_for_public_key(catalog.keys[persona]).hex()

    draft = release_services.trust_policy_draft(
        device_class=catalog.thermo,
        roles={
            "author": (1, [kid("author")]),
            "qa": (1, [kid("qa")]),
            "security": (1, [kid(p) for p in security]),
        },
        expires_at=expires_at or timezone.now() + dt.timedelta(days=365),
        actor=catalog.users["sec"],
    )
    for persona in signers:
        sign_trust_policy(catalog, draft, persona)
    draft.refresh_from_db()
    assert draft.status == TrustPolicyStatus.RELEASED, draft
    return draft


def confirm(rollout: Rollout, *, now: dt.datetime | None = None) -> None:
    """The device rebooted into the manifest's version and the gateway reported success, with
    the device's signed SUIT report of the attempt."""
    rollout.refresh_from_db()
    Device.objects.filter(pk=rollout.device_id).update(firmware_version=rollout.manifest.version)
    rollouts.rollouts_apply_event(
        event=CommandResult(
            command_id=str(rollout.command_id), ok=True, suit_report=signed_report(rollout)
        ),
        now=now,
    )


def states(campaign: Campaign) -> dict[str, str]:
    return dict(Rollout.objects.filter(campaign=campaign).values_list("device__endpoint", "state"))


def row_counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (
            Campaign,
            CampaignRevision,
            CampaignStage,
            Rollout,
            DeviceCommand,
            AuditEvent,
        )
    }
