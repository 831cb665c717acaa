"""Planning on its own (``campaigns.planning``): exclusions with their reasons, and a release that
cannot go out blocks the plan (and so the apply).
"""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from campaigns import engine, planning, services
from campaigns.errors import CampaignStateError
from campaigns.models import (
    Device,
    DeviceCommand,
    Rollout,
    RolloutState,
)
from campaigns.spec import parse_spec
from campaigns.trust_delivery import trust_policy_deliver
from manifests import device_trust, suit
from manifests import services as release_services
from manifests.errors import TrustPolicyStateError
from tests.campaigns.support import (
    Catalog,
    apply,
    make_devices,
    make_release,
    row_counts,
    spec_text,
    states,
)

pytestmark = pytest.mark.django_db


def test_plan_excludes_devices_with_their_reasons(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 5, prefix="ok")
    make_devices(catalog, 2, prefix="v1", device_class=catalog.thermo_v1)
    make_devices(catalog, 1, prefix="newer-counter", security_counter=9)
    make_devices(catalog, 1, prefix="current", firmware_version="1.1.0", sequence_number=5)
    make_devices(catalog, 1, prefix="skewed", clock_offset_seconds=3600.0)
    make_devices(catalog, 1, prefix="gone", online=False, last_seen=now - dt.timedelta(days=3))
    text = spec_text("excl", target_extra="  offline_max: 1d\n")
    plan = planning.campaign_plan(spec=parse_spec(text), now=now)
    assert plan.release_refusal is None
    assert plan.cohort == 5
    assert dict(plan.excluded) == {
        "class_mismatch": 2,
        "rollback_refused_counter": 1,
        "already_current": 1,
        "clock_skew": 1,
        "offline_too_long": 1,
    }
    campaign = apply(catalog, text, now=now)
    skipped = dict(
        Rollout.objects.filter(campaign=campaign, state=RolloutState.SKIPPED).values_list(
            "device__endpoint", "reason"
        )
    )
    assert skipped == {
        "v1-00000": "class_mismatch",
        "v1-00001": "class_mismatch",
        "newer-counter-00000": "rollback_refused_counter",
        "current-00000": "already_current",
        "gone-00000": "offline_too_long",
    }
    assert all(Rollout.objects.get(campaign=campaign, device__endpoint=e).detail for e in skipped)
    # A clock that is off may be fixed: counted as excluded by the plan, the rollout is kept
    # pending with its reason, as the dispatcher does, and goes once the clock is right.
    skewed = Rollout.objects.get(campaign=campaign, device__endpoint="skewed-00000")
    assert (skewed.state, skewed.reason) == (RolloutState.PENDING, "clock_skew")
    assert "clock" in skewed.detail


def test_expired_manifest_blocks_the_plan_and_apply_refuses(catalog: Catalog) -> None:
    now = timezone.now()
    make_devices(catalog, 3)
    make_release(
        catalog,
        name="thermo-1.2.0",
        version="1.2.0",
        sequence=6,
        counter=2,
        payload=b"\x43" * 4096,
        use_before=now + dt.timedelta(hours=1),
    )
    text = spec_text("expired", release="thermo-1.2.0")
    later = now + dt.timedelta(hours=2)
    plan = planning.campaign_plan(spec=parse_spec(text), now=later)
    blocked = plan.as_dict()["release_blocked"]
    assert blocked is not None and blocked["reason"] == "expired_release"
    assert plan.cohort == 0 and plan.excluded == {"expired_release": 3}
    before = row_counts()
    with pytest.raises(CampaignStateError, match="expired_release"):
        services.campaign_apply(spec=parse_spec(text), actor=catalog.ops, now=later)
    assert row_counts() == before
    # Applied while fresh, the manifest expires before dispatch: nothing is sent.
    campaign = apply(catalog, text, now=now)
    report = engine.campaign_reconcile(campaign.pk, now=later)
    assert report is not None and report.dispatched == 0
    assert set(states(campaign).values()) == {RolloutState.SKIPPED}
    assert set(Rollout.objects.filter(campaign=campaign).values_list("reason", flat=True)) == {
        "expired_release"
    }
    assert not DeviceCommand.objects.exists()


def test_copy_columns_cover_every_not_null_rollout_column() -> None:
    """COPY bypasses the model's defaults: a NOT NULL column missing from ``COPY_COLUMNS`` is
    NULL, and on PostgreSQL every ``campaign apply`` failed (device_clock, found against a real
    Anjay client). Checked on any database, so SQLite runs catch the next such column."""
    required = {
        field.column
        for field in Rollout._meta.concrete_fields
        if not field.null and not field.primary_key
    }
    assert required <= set(planning.COPY_COLUMNS), required - set(planning.COPY_COLUMNS)


def test_apply_writes_rows_through_copy_on_postgresql(catalog: Catalog) -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("COPY is the PostgreSQL path")
    make_devices(catalog, 3, prefix="ok")
    make_devices(catalog, 1, prefix="v1", device_class=catalog.thermo_v1)
    campaign = apply(catalog, spec_text("copied"))
    rows = dict(
        Rollout.objects.filter(campaign=campaign).values_list("device__endpoint", "device_clock")
    )
    assert rows == {"ok-00000": "", "ok-00001": "", "ok-00002": "", "v1-00000": ""}


def test_plan_counts_devices_protected_by_device_thresholds_and_by_the_server_only(
    catalog: Catalog,
) -> None:
    make_devices(catalog, 4)
    text = spec_text("enforcement")
    plan = planning.campaign_plan(spec=parse_spec(text)).as_dict()
    assert plan["threshold_enforcement"]["device"] == 0
    assert plan["threshold_enforcement"]["server_only"] == 4
    assert "no released device trust policy" in plan["threshold_enforcement"]["why"]
    sec_kid = suit.kid_for_public_key(catalog.keys["sec"]).hex()
    draft = release_services.trust_policy_draft(
        device_class=catalog.thermo,
        roles={"security": (1, [sec_kid])},
        expires_at=timezone.now() + dt.timedelta(days=30),
        actor=catalog.users["sec"],
    )
    block = device_trust.sign_policy(draft.body_bytes, catalog.keys["sec"])
    release_services.trust_policy_sign(policy=draft, signer=catalog.users["sec"], cose=block)
    plan = planning.campaign_plan(spec=parse_spec(text)).as_dict()
    # Released, but no device has confirmed holding it: the server alone protects them.
    assert plan["threshold_enforcement"]["device"] == 0
    assert plan["threshold_enforcement"]["server_only"] == 4
    Device.objects.update(trust_policy_version=draft.version)
    plan = planning.campaign_plan(spec=parse_spec(text)).as_dict()
    assert plan["threshold_enforcement"]["device"] == 4
    assert plan["threshold_enforcement"]["server_only"] == 0
    release_services.device_class_set_delivery(
        device_class=catalog.thermo, delivery="image", actor=catalog.admin
    )
    plan = planning.campaign_plan(spec=parse_spec(text)).as_dict()
    assert plan["threshold_enforcement"]["server_only"] == 4
    assert "MCUboot" in plan["threshold_enforcement"]["why"]


def test_delivering_a_draft_or_to_an_image_class_is_refused(catalog: Catalog) -> None:
    sec_kid = suit.kid_for_public_key(catalog.keys["sec"]).hex()
    draft = release_services.trust_policy_draft(
        device_class=catalog.thermo,
        roles={"security": (1, [sec_kid])},
        expires_at=timezone.now() + dt.timedelta(days=30),
        actor=catalog.users["sec"],
    )
    with pytest.raises(TrustPolicyStateError, match="not released"):
        trust_policy_deliver(policy=draft, actor=catalog.ops)
    block = device_trust.sign_policy(draft.body_bytes, catalog.keys["sec"])
    release_services.trust_policy_sign(policy=draft, signer=catalog.users["sec"], cose=block)
    release_services.device_class_set_delivery(
        device_class=catalog.thermo, delivery="image", actor=catalog.admin
    )
    with pytest.raises(TrustPolicyStateError, match="image-profile"):
        trust_policy_deliver(policy=draft, actor=catalog.ops)
    assert not DeviceCommand.objects.exists()


def test_trustpolicy_deliver_command_sends_once_and_refuses_a_draft(catalog: Catalog) -> None:
    make_devices(catalog, 3)
    sec_kid = suit.kid_for_public_key(catalog.keys["sec"]).hex()
    draft = release_services.trust_policy_draft(
        device_class=catalog.thermo,
        roles={"security": (1, [sec_kid])},
        expires_at=timezone.now() + dt.timedelta(days=30),
        actor=catalog.users["sec"],
    )
    where = ["--vendor-domain", "acme.example", "--class", "thermo-v2", "--policy-version", "1"]
    with pytest.raises(CommandError, match=r"\[trust_policy.state\]"):
        call_command("trustpolicy_deliver", *where, "--user", "ops", stdout=io.StringIO())
    block = device_trust.sign_policy(draft.body_bytes, catalog.keys["sec"])
    release_services.trust_policy_sign(policy=draft, signer=catalog.users["sec"], cose=block)
    out = io.StringIO()
    call_command("trustpolicy_deliver", *where, "--user", "ops", stdout=out)
    assert "sent to 3 device(s) (0 already had it)" in out.getvalue()
    out = io.StringIO()
    call_command("trustpolicy_deliver", *where, "--user", "ops", stdout=out)
    assert "sent to 0 device(s) (3 already had it)" in out.getvalue()
    assert DeviceCommand.objects.filter(args__delivery="trust-policy").count() == 3
