"""Trust-policy campaigns through the services, planning and the engine (registry rows, events
fed as the gateway would): the target is exactly one of a release and a policy, rollback and
image-profile attempts are refused at plan, devices already at the version are shown per stage,
success rests on the device's signed report naming the policy, and devices refusing the policy
trip the stage's failure threshold."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from campaigns import engine, planning, rollouts, services
from campaigns.errors import (
    CampaignStateError,
    SpecError,
    TrustPolicyRollbackError,
    UnknownTrustPolicyError,
)
from campaigns.events import CommandResult
from campaigns.models import Campaign, CampaignStatus, Device, DeviceCommand, Rollout, RolloutState
from campaigns.selectors import campaign_status
from campaigns.spec import parse_spec
from campaigns.trust_delivery import trust_policy_apply_event
from manifests import services as release_services
from manifests import suit
from manifests.models import DeviceTrustPolicy
from manifests.suit import report as suit_report
from tests.campaigns.support import (
    Catalog,
    apply,
    make_devices,
    release_trust_policy,
    spec_text,
)
from tests.helpers.deployment import DEVICE_REPORT_KEY

pytestmark = pytest.mark.django_db

CANARY = (
    "  - name: canary\n    size: 4\n    failure_threshold: 50%\n    min_finished: 2\n"
    "  - name: rest\n    size: rest\n"
)


def _policy_report(
    rollout: Rollout, policy: DeviceTrustPolicy, *, digest: str = "", failure: str = ""
) -> str:
    args = DeviceCommand.objects.get(pk=rollout.command_id).args
    content = suit_report.SUITReport(
        manifest_digest=bytes.fromhex(digest or policy.sha256),
        nonce=bytes.fromhex(args["report_nonce"]),
        failure=suit_report.failure_for(failure) if failure else None,
    )
    return suit_report.sign_report(content, DEVICE_REPORT_KEY).hex()


def _answer(rollout: Rollout, *, ok: bool, report: str, now: dt.datetime) -> None:
    """The gateway's result for the rollout's command, applied as the event task does."""
    rollout.refresh_from_db()
    event = CommandResult(
        command_id=str(rollout.command_id),
        ok=ok,
        suit_report=report,
        error="" if ok else f"{rollout.device.endpoint}: update failed with result 5",
        result={} if ok else {"phase": "failed", "result": 5},
        permanent=not ok,
    )
    rollouts.rollouts_apply_event(event=event, now=now)
    trust_policy_apply_event(event=event, now=now)


def test_a_spec_names_exactly_one_target() -> None:
    both = spec_text("both", trust_policy=2).replace(
        "trust_policy: 2", "release: x\ntrust_policy: 2"
    )
    neither = spec_text("neither").replace("release: thermo-1.1.0\n", "")
    for text in (both, neither):
        with pytest.raises(SpecError) as info:
            parse_spec(text)
        assert [e.path for e in info.value.errors] == ["release"]


def test_a_spec_naming_a_trust_policy_keeps_it_in_its_canonical_document() -> None:
    spec = parse_spec(spec_text("rotate", trust_policy=3))
    document = spec.to_document()
    assert document["trust_policy"] == 3 and "release" not in document
    assert parse_spec(document) == spec
    # A release campaign's document is unchanged: no trust_policy key, the same digest.
    assert "trust_policy" not in parse_spec(spec_text("plain")).to_document()


def test_the_database_refuses_a_campaign_with_both_or_neither_target(catalog: Catalog) -> None:
    policy = release_trust_policy(catalog)
    campaign = apply(catalog, spec_text("one-target"))
    for release, trust_policy in ((catalog.release, policy), (None, None)):
        with pytest.raises(IntegrityError), transaction.atomic():
            Campaign.objects.filter(pk=campaign.pk).update(
                release=release, trust_policy=trust_policy
            )


def test_unknown_or_draft_trust_policy_is_refused(catalog: Catalog) -> None:
    with pytest.raises(UnknownTrustPolicyError):
        services.campaign_apply(
            spec=parse_spec(spec_text("none", trust_policy=1)), actor=catalog.ops
        )
    release_services.trust_policy_draft(
        device_class=catalog.thermo,
        roles={"security": (1, [suit.kid_for_public_key(catalog.keys["sec"]).hex()])},
        expires_at=timezone.now() + dt.timedelta(days=30),
        actor=catalog.users["sec"],
    )
    with pytest.raises(UnknownTrustPolicyError, match="draft"):
        services.campaign_apply(
            spec=parse_spec(spec_text("draft", trust_policy=1)), actor=catalog.ops
        )
    assert not Campaign.objects.exists()


def test_rollback_to_an_older_trust_policy_is_refused_at_plan(catalog: Catalog) -> None:
    release_trust_policy(catalog)
    release_trust_policy(catalog)
    make_devices(catalog, 5)
    spec = parse_spec(spec_text("back-to-v1", trust_policy=1))
    plan = planning.campaign_plan(spec=spec).as_dict()
    assert plan["release_blocked"]["reason"] == "trust_policy_superseded"
    assert "v2" in plan["release_blocked"]["detail"]
    assert plan["excluded"] == {"trust_policy_superseded": 5}
    with pytest.raises(TrustPolicyRollbackError, match="rollback"):
        services.campaign_apply(spec=spec, actor=catalog.ops)
    assert not Campaign.objects.exists()


def test_image_profile_class_cannot_take_a_trust_policy_campaign(catalog: Catalog) -> None:
    release_trust_policy(catalog)
    make_devices(catalog, 3)
    type(catalog.thermo).objects.filter(pk=catalog.thermo.pk).update(delivery="image")
    spec = parse_spec(spec_text("mcuboot", trust_policy=1))
    plan = planning.campaign_plan(spec=spec).as_dict()
    assert plan["excluded"] == {"image_profile_no_policy": 3}
    with pytest.raises(CampaignStateError, match="image-profile"):
        services.campaign_apply(spec=spec, actor=catalog.ops)


def test_plan_shows_per_stage_the_devices_already_at_the_version(catalog: Catalog) -> None:
    release_trust_policy(catalog)
    release_trust_policy(catalog)
    make_devices(catalog, 8, prefix="new", trust_policy_version=1)
    make_devices(catalog, 3, prefix="held", trust_policy_version=2)
    make_devices(catalog, 2, prefix="later", trust_policy_version=3)
    plan = planning.campaign_plan(
        spec=parse_spec(spec_text("rotate", trust_policy=2, stages=CANARY)), salt="s"
    )
    data = plan.as_dict()
    assert (data["trust_policy"], data["release"], data["target"]) == (2, None, "trust policy v2")
    assert [s["devices"] for s in data["stages"]] == [4, 4]
    assert sum(s["already_held"] for s in data["stages"]) == 3
    assert data["excluded"] == {"trust_policy_held": 3, "trust_policy_rollback": 2}
    rows = {Device.objects.get(pk=r.device_id).endpoint: r for r in plan.rows}
    assert rows["later-00000"].detail.endswith("which the device refuses")


def test_success_is_the_devices_confirmed_install_of_the_policy(catalog: Catalog) -> None:
    now = timezone.now()
    release_trust_policy(catalog)
    v2 = release_trust_policy(catalog)
    make_devices(catalog, 3, trust_policy_version=1)
    campaign = apply(catalog, spec_text("rotate", trust_policy=2), now=now)
    assert engine.campaign_reconcile(campaign.pk, now=now).dispatched == 3
    first, second, third = Rollout.objects.filter(campaign=campaign).order_by("pk")
    _answer(first, ok=True, report=_policy_report(first, v2), now=now)
    # A success whose report names another document is no success, and records nothing.
    _answer(second, ok=True, report=_policy_report(second, v2, digest="ab" * 32), now=now)
    # A success over /5/0/5 with no report at all neither.
    _answer(third, ok=True, report="", now=now)
    for rollout in (first, second, third):
        rollout.refresh_from_db()
    assert (first.state, first.report_verdict) == (RolloutState.SUCCEEDED, "verified")
    assert (second.state, second.reason) == (RolloutState.FAILED, "report_wrong_manifest")
    assert (third.state, third.reason) == (RolloutState.FAILED, "report_missing")
    held = dict(Device.objects.values_list("pk", "trust_policy_version"))
    assert held == {first.device_id: 2, second.device_id: 1, third.device_id: 1}
    status = campaign_status(campaign)
    assert (status["target"], status["trust_policy"], status["release"]) == (
        "trust policy v2",
        2,
        None,
    )


def test_devices_refusing_the_policy_pause_the_campaign_at_the_threshold(
    catalog: Catalog,
) -> None:
    now = timezone.now()
    v1 = release_trust_policy(catalog)
    make_devices(catalog, 10)
    campaign = apply(catalog, spec_text("first-policy", trust_policy=1, stages=CANARY), now=now)
    assert engine.campaign_reconcile(campaign.pk, now=now).dispatched == 4
    canary = list(Rollout.objects.filter(campaign=campaign, stage=0).select_related("device"))
    for rollout in canary[:2]:
        report = _policy_report(rollout, v1, failure="device.untrusted_manifest")
        _answer(rollout, ok=False, report=report, now=now)
    report = engine.campaign_reconcile(campaign.pk, now=now + dt.timedelta(seconds=1))
    assert report is not None and report.status == CampaignStatus.PAUSED
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.PAUSED and campaign.paused_by_engine
    assert "canary" in campaign.pause_reason
    refused = Rollout.objects.get(pk=canary[0].pk)
    assert (refused.state, refused.reason, refused.fw_result) == (
        RolloutState.FAILED,
        "integrity_check_failed",
        5,
    )
    assert "device report: failure" in refused.detail
    assert not Device.objects.filter(trust_policy_version__isnull=False).exists()
    # Nothing of the second stage was sent.
    assert not Rollout.objects.filter(campaign=campaign, stage=1, command_id__isnull=False).exists()


def test_a_later_policy_released_while_running_pauses_the_campaign(catalog: Catalog) -> None:
    now = timezone.now()
    release_trust_policy(catalog)
    make_devices(catalog, 4)
    campaign = apply(catalog, spec_text("rotate", trust_policy=1), now=now)
    release_trust_policy(catalog)
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.decision == "trust policy superseded"
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.PAUSED
    assert "v2" in campaign.pause_reason
    assert not DeviceCommand.objects.exists()


def test_a_campaigns_kind_cannot_change_on_revision(catalog: Catalog) -> None:
    release_trust_policy(catalog)
    make_devices(catalog, 2)
    apply(catalog, spec_text("kind"))
    with pytest.raises(SpecError) as info:
        services.campaign_apply(
            spec=parse_spec(spec_text("kind", trust_policy=1)), actor=catalog.ops
        )
    assert "kind" in str(info.value)


def test_cli_plan_shows_the_target_and_the_devices_already_at_the_version(
    catalog: Catalog, tmp_path: Path
) -> None:
    release_trust_policy(catalog)
    release_trust_policy(catalog)
    make_devices(catalog, 6, prefix="new", trust_policy_version=1)
    make_devices(catalog, 2, prefix="held", trust_policy_version=2)
    path = tmp_path / "rotate.yaml"
    path.write_text(spec_text("rotate", trust_policy=2, stages=CANARY))
    out = StringIO()
    call_command("campaign", "plan", str(path), stdout=out)
    text = out.getvalue()
    assert "campaign rotate: target trust policy v2 to acme.example/thermo-v2" in text
    assert "already at v2" in text
    assert "excluded trust_policy_held" in text
    assert not Campaign.objects.exists()


def test_api_creates_a_trust_policy_campaign_and_refuses_a_rollback(catalog: Catalog) -> None:
    release_trust_policy(catalog)
    release_trust_policy(catalog)
    make_devices(catalog, 3, trust_policy_version=1)
    client = APIClient()
    client.force_login(catalog.ops)
    plan = client.post(
        "/api/campaign-plans/", {"document": spec_text("rotate", trust_policy=2)}, format="json"
    )
    assert plan.status_code == 200, plan.content
    assert (plan.json()["trust_policy"], plan.json()["release"]) == (2, None)
    created = client.post(
        "/api/campaigns/", {"document": spec_text("rotate", trust_policy=2)}, format="json"
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["campaign"]["trust_policy"] == 2
    assert body["campaign"]["release"] is None
    assert body["campaign"]["target"] == "trust policy v2"
    assert body["status"]["target"] == "trust policy v2"
    back = client.post(
        "/api/campaigns/", {"document": spec_text("back", trust_policy=1)}, format="json"
    )
    assert back.status_code == 409
    assert back.json()["code"] == "campaign.trust_policy_rollback"
    unknown = client.post(
        "/api/campaigns/", {"document": spec_text("nine", trust_policy=9)}, format="json"
    )
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "campaign.unknown_trust_policy"
    assert list(Campaign.objects.values_list("name", flat=True)) == ["rotate"]
    for url in ("/campaigns/rotate/", "/campaigns/", "/"):
        page = client.get(url)
        assert page.status_code == 200, url
        assert b"trust policy v2" in page.content, url


def test_an_expired_trust_policy_is_refused_at_plan_and_pauses_a_running_campaign(
    catalog: Catalog,
) -> None:
    now = timezone.now()
    release_trust_policy(catalog, expires_at=now + dt.timedelta(hours=1))
    make_devices(catalog, 3)
    campaign = apply(catalog, spec_text("short-lived", trust_policy=1), now=now)
    later = now + dt.timedelta(hours=2)
    report = engine.campaign_reconcile(campaign.pk, now=later)
    assert report is not None and report.decision == "trust policy expired"
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.PAUSED
    assert not DeviceCommand.objects.exists()
    plan = planning.campaign_plan(
        spec=parse_spec(spec_text("too-late", trust_policy=1)), now=later
    ).as_dict()
    assert plan["release_blocked"]["reason"] == "trust_policy_expired"
    with pytest.raises(CampaignStateError, match="trust_policy_expired"):
        services.campaign_apply(
            spec=parse_spec(spec_text("too-late", trust_policy=1)), actor=catalog.ops, now=later
        )
