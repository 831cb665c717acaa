"""A staged rollout end to end: real gateway on loopback, simulated devices that download,
verify, install and reboot, Celery tasks applying their events, the engine reconciling.

The canary's faulty devices trip its failure threshold and pause the campaign; the fault is
cleared, the campaign resumed, and it completes. Devices of another class and devices already on
a newer counter are excluded with their reasons.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import OperationalError
from django.utils import timezone

from campaigns import engine, services
from campaigns.models import Campaign, CampaignStatus, Device, Rollout, RolloutState
from campaigns.spec import parse_spec
from manifests import services as release_services
from manifests import suit
from manifests.images import imgtool
from workers.embedded import EmbeddedFleet
from workers.lwm2m.simulator import Faults, FleetSpec

DEVICES = 24


def retry_locked(fn: Callable[[], Any]) -> Any:
    for _ in range(50):
        try:
            return fn()
        except OperationalError:  # SQLite's shared test database locks tables briefly
            time.sleep(0.05)
    return fn()


def wait_for(
    predicate: Callable[[], bool], timeout: float = 60, tick: Callable[[], Any] | None = None
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick is not None:
            retry_locked(tick)
        if retry_locked(predicate):
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def eager_celery(settings: Any) -> Iterator[None]:
    from config.celery import app

    old = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    settings.LWM2M_COMMAND_BUS_URL = "memory://"
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = old


@pytest.fixture
def world(transactional_db: None, eager_celery: None, django_user_model: Any, tmp_path: Any):
    now = timezone.now()
    earlier = now - dt.timedelta(hours=1)
    admin = django_user_model.objects.create_superuser(username="admin", password="x-pass-1")
    people = {}
    for name, role in [
        ("author", "author"),
        ("qa", "qa"),
        ("sec", "security"),
        ("ops", "fleet_operator"),
    ]:
        user = django_user_model.objects.create_user(username=name, password="x-pass-1")
        key = suit.generate_private_key("ES256")
        release_services.role_grant(user=user, role=role, actor=admin, now=earlier)
        release_services.signing_key_register(
            owner=user,
            public_key_pem=suit.public_key_pem(key.public_key()).decode(),
            valid_from=earlier,
        )
        people[name] = (user, key)
    vendor = release_services.vendor_create(name="Acme Sensors", domain="acme.example")
    thermo = release_services.device_class_create(vendor=vendor, name="thermo-v2")
    release_services.device_class_create(vendor=vendor, name="thermo-v1")
    image = release_services.image_upload(
        data=imgtool.build_image(b"\x42" * 8192, version="1.1.0", security_counter=2),
        uploaded_by=people["author"][0],
    )
    envelope = suit.create_envelope(
        suit.ManifestParams(
            vendor_id=vendor.uuid,
            class_id=thermo.uuid,
            sequence_number=5,
            version="1.1.0",
            security_counter=2,
            image_digest=bytes.fromhex(image.sha256),
            image_size=image.size,
            uri=None,
            use_before=now + dt.timedelta(days=30),
            component_id=thermo.component_id_bytes,
            payload_format="mcuboot",
        ),
        keys=[people["author"][1]],
    )
    manifest = release_services.manifest_import(envelope=envelope, created_by=people["author"][0])
    release = release_services.release_create(
        manifest=manifest, name="thermo-1.1.0", actor=people["author"][0]
    )
    release_services.release_submit(release=release, actor=people["author"][0])
    for name, role in [("qa", "qa"), ("sec", "security")]:
        block = suit.sign_manifest_digest(envelope, key=people[name][1])
        release_services.release_approve(
            release=release, signer=people[name][0], role=role, cose=block
        )
    common = {
        "manufacturer": "Acme Sensors",
        "vendor_id": str(vendor.uuid),
        "sequence_number": 1,
        "security_counter": 1,
    }
    embedded = EmbeddedFleet(trust_anchors=[people["author"][1].public_key()])
    embedded.add(FleetSpec(count=DEVICES, model="thermo-v2", class_id=str(thermo.uuid), **common))
    embedded.add(
        FleetSpec(
            count=2,
            model="thermo-v1",
            prefix="old",
            class_id=str(suit.class_id(vendor.uuid, "thermo-v1")),
            **common,
        )
    )
    embedded.start()
    try:
        wait_for(
            lambda: (
                Device.objects.filter(online=True, firmware_version="1.0.0").count() == DEVICES + 2
            )
        )
        yield {"embedded": embedded, "ops": people["ops"][0], "release": release, "thermo": thermo}
    finally:
        embedded.stop()


SPEC = """
apiVersion: fwupd/v1
kind: Campaign
name: thermo-rollout
release: thermo-1.1.0
target:
  device_class: acme.example/thermo-v2
stages:
  - name: canary
    size: 25%
    failure_threshold: 30%
    min_finished: 2
  - name: wave
    size: 50%
  - name: all
    size: rest
timeouts:
  device: 2m
"""


def test_staged_rollout_pauses_on_canary_failures_and_completes_after_resume(world):
    embedded, ops = world["embedded"], world["ops"]
    # One device already carries a newer security counter: rollback refused, excluded.
    Device.objects.filter(endpoint="sim-00023").update(security_counter=9)
    spec = parse_spec(SPEC, source="spec.yaml")
    plan = services.campaign_plan(spec=spec)
    assert plan.cohort == DEVICES - 1
    assert plan.excluded == {"rollback_refused_counter": 1, "class_mismatch": 2}
    campaign, outcome = services.campaign_apply(spec=spec, actor=ops, source="spec.yaml")
    assert outcome == "created"
    assert services.campaign_apply(spec=spec, actor=ops)[1] == "unchanged"
    canary = list(
        Rollout.objects.filter(campaign=campaign, stage=0, state=RolloutState.PENDING).values_list(
            "device__endpoint", flat=True
        )
    )
    assert len(canary) == 6
    embedded.set_faults(canary[:2], Faults(boot_fail=True))

    def reconcile() -> None:
        engine.campaign_reconcile(campaign.pk)

    def status() -> str:
        return Campaign.objects.get(pk=campaign.pk).status

    wait_for(lambda: status() == CampaignStatus.PAUSED, timeout=90, tick=reconcile)
    paused = Campaign.objects.get(pk=campaign.pk)
    assert paused.current_stage == 0 and "canary" in paused.pause_reason
    failed = Rollout.objects.filter(campaign=campaign, state=RolloutState.FAILED)
    assert set(failed.values_list("reason", flat=True)) == {"update_failed"}
    assert set(failed.values_list("fw_result", flat=True)) == {8}
    # Nothing beyond the canary was dispatched while it was failing.
    assert (
        not Rollout.objects.filter(campaign=campaign, stage__gt=0)
        .exclude(state__in=[RolloutState.PENDING, RolloutState.SKIPPED])
        .exists()
    )

    embedded.set_faults(canary[:2], Faults())
    services.campaign_resume(campaign=paused, actor=ops)
    wait_for(lambda: status() == CampaignStatus.COMPLETED, timeout=180, tick=reconcile)

    rollouts = Rollout.objects.filter(campaign=campaign)
    assert rollouts.filter(state=RolloutState.SUCCEEDED).count() == DEVICES - 1
    skipped = sorted(rollouts.filter(state=RolloutState.SKIPPED).values_list("reason", flat=True))
    assert skipped == ["class_mismatch", "class_mismatch", "rollback_refused_counter"]
    assert (
        Device.objects.filter(device_class=world["thermo"], firmware_version="1.1.0").count()
        == DEVICES - 1
    )
    assert Device.objects.filter(endpoint__startswith="old", firmware_version="1.0.0").count() == 2
    # Each device got exactly one command per attempt: never dispatched twice concurrently.
    for rollout in rollouts.filter(state=RolloutState.SUCCEEDED):
        assert rollout.device.commands.filter(operation="fw_update").count() == rollout.attempts
