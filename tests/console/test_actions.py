"""The console's forms call the services: campaign create (plan, then apply), lifecycle actions,
signature upload, emergency stop and lift, revocation; refusals show as messages."""

from __future__ import annotations

from typing import Any

from campaigns.models import Campaign, CampaignStatus, EmergencyStop, Rollout
from manifests import suit
from manifests.models import Release, ReleaseStatus
from tests.console.world import make_devices, signature, spec_text


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_plan_preview_writes_nothing_then_apply_creates_the_campaign(login: Any, world: Any):
    make_devices(world, 20)
    make_devices(world, 2, prefix="old", device_class=world.thermo_v1)
    client = login("ops")
    text = spec_text("from-console")
    plan = client.post("/campaigns/+new/", {"spec": text, "action": "plan"})
    assert plan.status_code == 200
    assert plan.context["plan"]["cohort"] == 20
    assert plan.context["plan"]["excluded"] == {"class_mismatch": 2}
    assert b'id="apply-button"' in plan.content
    assert not Campaign.objects.exists()
    applied = client.post("/campaigns/+new/", {"spec": text, "action": "apply"}, follow=True)
    campaign = Campaign.objects.get(name="from-console")
    assert applied.redirect_chain[-1][0] == "/campaigns/from-console/"
    assert "campaign from-console created" in _messages(applied)
    assert campaign.revisions.get().source == "console"
    assert b"canary" in applied.content and b"size 25%" in applied.content


def test_spec_errors_are_listed_with_their_field_paths(login: Any, world: Any):
    bad = spec_text("bad", stages="  - name: canary\n    size: 250%\n    colour: red\n")
    response = login("ops").post("/campaigns/+new/", {"spec": bad, "action": "plan"})
    assert response.status_code == 200
    assert [e["path"] for e in response.context["errors"]] == ["stages[0].colour"]
    assert b"campaign.spec_invalid" in response.content
    assert b"<code>stages[0].colour</code>" in response.content
    over = spec_text("bad", stages="  - name: canary\n    size: 250%\n")
    response = login("ops").post("/campaigns/+new/", {"spec": over, "action": "apply"})
    assert [e["path"] for e in response.context["errors"]] == ["stages[0].size"]
    assert not Campaign.objects.exists()


def test_unknown_release_is_a_message_not_a_500(login: Any, world: Any):
    response = login("ops").post(
        "/campaigns/+new/", {"spec": spec_text("x", release="nope-9"), "action": "apply"}
    )
    assert response.status_code == 200
    assert b"no release named" in response.content


def test_pause_resume_abort_through_the_console(login: Any, campaign: Any):
    client = login("ops")
    client.post("/campaigns/thermo-rollout/pause/", {"reason": "looking into it"})
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.PAUSED and campaign.pause_reason == "looking into it"
    # Pausing again: the service refuses; the page says why.
    again = client.post("/campaigns/thermo-rollout/pause/", {}, follow=True)
    assert any("campaign.state" in m for m in _messages(again))
    client.post("/campaigns/thermo-rollout/resume/", {"retry_failed": ["on", "off"]})
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.RUNNING
    client.post("/campaigns/thermo-rollout/abort/", {"reason": "wrong build"})
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.ABORTED
    assert not Rollout.objects.filter(campaign=campaign, state="pending").exists()


def test_promote_by_the_wrong_gate_role_is_a_message(login: Any, campaign: Any):
    # The canary's gate needs a fleet operator: QA may promote in general, not this gate.
    response = login("qa").post("/campaigns/thermo-rollout/promote/", follow=True)
    assert response.status_code == 200
    assert any("campaign.gate" in m for m in _messages(response))
    # QA may not pause at all (operators only): refused before the service.
    assert login("qa").post("/campaigns/thermo-rollout/pause/").status_code == 403


def test_uploading_a_raw_cose_signature_completes_the_approval(login: Any, world: Any):
    from django.core.files.uploadedfile import SimpleUploadedFile

    release = world.releases["thermo-1.2.0"]
    client = login("qa")
    inbox = client.get("/releases/")
    assert [i["release"].name for i in inbox.context["inbox"]] == ["thermo-1.2.0"]
    page = client.get("/releases/thermo-1.2.0/")
    assert page.context["missing"] == {"qa": 1}
    upload = SimpleUploadedFile("qa.cose", signature(world, release, "qa"))
    done = client.post(
        "/releases/thermo-1.2.0/approve/", {"signature": upload, "role": "qa"}, follow=True
    )
    assert Release.objects.get(pk=release.pk).status == ReleaseStatus.APPROVED
    assert any("approval recorded as qa" in m for m in _messages(done))
    assert b"Approved now" in done.content
    tally = done.context["data"]["tally"]["qa"]["credited"][0]["signatures"][0]
    assert tally["signer"] == "qa" and tally["kid"] == world.users["qa"].signing_keys.get().kid
    assert client.get("/releases/").context["inbox"] == []


def test_uploading_an_envelope_from_suit_sign_takes_the_signers_block(login: Any, world: Any):
    from django.core.files.uploadedfile import SimpleUploadedFile

    release = world.releases["thermo-1.2.0"]
    envelope = suit.add_signatures(
        bytes(release.manifest.envelope_bytes), [signature(world, release, "qa")]
    )
    login("qa").post(
        "/releases/thermo-1.2.0/approve/",
        {"signature": SimpleUploadedFile("signed.suit", envelope), "role": "qa"},
    )
    assert Release.objects.get(pk=release.pk).status == ReleaseStatus.APPROVED


def test_bad_and_duplicate_signatures_are_refused_with_their_codes(login: Any, world: Any):
    from django.core.files.uploadedfile import SimpleUploadedFile

    release = world.releases["thermo-1.1.0"]
    client = login("sec")
    garbage = client.post(
        "/releases/thermo-1.1.0/approve/",
        {"signature": SimpleUploadedFile("x.cose", b"\x00garbage"), "role": "security"},
        follow=True,
    )
    assert any("approval.bad_signature" in m for m in _messages(garbage))
    again = client.post(
        "/releases/thermo-1.1.0/approve/",
        {
            "signature": SimpleUploadedFile("s.cose", signature(world, release, "sec")),
            "role": "security",
        },
        follow=True,
    )
    # sec already approved thermo-1.1.0 as security with this key
    assert any("approval.duplicate" in m for m in _messages(again))
    # The author cannot approve their own release as QA (and holds no QA role).
    author = login("author").post(
        "/releases/thermo-1.2.0/approve/",
        {
            "signature": SimpleUploadedFile("a.cose", signature(world, release, "author")),
            "role": "qa",
        },
        follow=True,
    )
    assert any("approval." in m for m in _messages(author))


def test_emergency_stop_shows_everywhere_and_only_security_lifts(login: Any, campaign: Any):
    ops = login("ops")
    stopped = ops.post(
        "/incident/stop/", {"scope": "global", "reason": "bricked units in the field"}, follow=True
    )
    stop = EmergencyStop.objects.get()
    assert stop.scope == "global" and stop.created_by.username == "ops"
    assert b"EMERGENCY STOP in force" in stopped.content
    page = ops.get("/campaigns/thermo-rollout/live/")
    assert b'id="campaign-stopped"' in page.content
    assert b"emergency stop" in ops.get("/").content
    assert ops.post(f"/incident/stops/{stop.pk}/lift/").status_code == 403
    login("sec").post(f"/incident/stops/{stop.pk}/lift/")
    stop.refresh_from_db()
    assert stop.lifted_at is not None and stop.lifted_by.username == "sec"
    assert b"EMERGENCY STOP in force" not in ops.get("/").content


def test_a_stop_without_a_reason_is_refused_with_a_message(login: Any, campaign: Any):
    response = login("ops").post("/incident/stop/", {"scope": "global", "reason": " "}, follow=True)
    assert any("campaign.emergency_stop" in m for m in _messages(response))
    assert not EmergencyStop.objects.exists()


def test_revoking_a_release_aborts_its_campaign(login: Any, campaign: Any, world: Any):
    release = world.releases["thermo-1.1.0"]
    assert login("ops").post("/incident/revoke/", {"release": release.pk}).status_code == 403
    login("sec").post("/incident/revoke/", {"release": release.pk, "reason": "bad flash driver"})
    assert Release.objects.get(pk=release.pk).status == ReleaseStatus.REVOKED
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.ABORTED


def test_rollback_launch_refuses_a_release_that_is_not_a_rollback(
    login: Any, campaign: Any, world: Any
):
    release = world.releases["thermo-1.1.0"]
    form = {"rollback": release.pk, "from_release": release.pk}
    assert login("qa").post("/incident/rollback/", form).status_code == 403
    response = login("ops").post("/incident/rollback/", form, follow=True)
    assert any("is not a rollback release" in m for m in _messages(response))
    assert Campaign.objects.count() == 1
    page = login("ops").get("/incident/").content.decode()
    assert 'action="/incident/rollback/"' in page


def test_audit_page_reports_the_verified_chain(login: Any, campaign: Any):
    response = login("auditor").get("/audit/")
    assert response.context["verdict"].ok
    assert b"Hash chain <strong>verified</strong>" in response.content
    assert len(response.context["events"]) <= 200
    assert response.context["events"][0].action == "campaign.create"


def test_device_page_shows_identity_and_rollout_history(login: Any, campaign: Any):
    response = login("auditor").get("/devices/dev-00003/")
    assert response.context["device"].firmware_version == "1.0.0"
    assert [r.campaign.name for r in response.context["rollouts"]] == ["thermo-rollout"]
    assert login("auditor").get("/devices/nope/").status_code == 404


def test_dashboard_alerts_name_the_paused_campaign_gate_and_pending_release(
    login: Any, campaign: Any
):
    from campaigns import services

    services.campaign_pause(campaign=campaign, actor=campaign.created_by, reason="threshold")
    alerts = login("qa").get("/").context["alerts"]
    kinds = {(a["kind"], a["arg"]) for a in alerts}
    assert ("paused", "thermo-rollout") in kinds
    assert ("approval", "thermo-1.2.0") in kinds
    assert any("yours is needed" in a["text"] for a in alerts)


def test_dashboard_query_count_is_bounded(login: Any, campaign: Any, django_assert_max_num_queries):
    client = login("ops")
    with django_assert_max_num_queries(40):
        client.get("/partials/campaigns/")


def test_the_console_shows_which_devices_went_without_a_device_clock(login: Any, campaign: Any):
    """A clockless device's rollout says it was dispatched under the server's use-before check
    alone (device table and live panel); a device whose clock is off says how far off it is."""
    from django.utils import timezone

    from campaigns import engine
    from campaigns.models import Device, Rollout

    now = timezone.now()
    first, other = Rollout.objects.filter(campaign=campaign, stage=0).order_by("bucket")[:2]
    clockless, off = first.device.endpoint, other.device.endpoint
    Device.objects.filter(endpoint=clockless).update(device_time=40.0, clock_offset_seconds=-1e9)
    ahead = 43 * 365 * 86400.0
    Device.objects.filter(endpoint=off).update(
        device_time=now.timestamp() + ahead, clock_offset_seconds=ahead
    )
    engine.campaign_reconcile(campaign.pk, now=now)
    client = login("auditor")
    table = client.get("/campaigns/thermo-rollout/devices/").content.decode()
    row = table[table.index(f'data-device="{clockless}"') :].split("</tr>", 1)[0]
    assert '<td data-role="clock" title="dispatched under the server' in row
    assert ">clockless</td>" in row
    live = client.get("/campaigns/thermo-rollout/live/").content.decode()
    assert "Dispatched without a device clock" in live and "clockless 1" in live
    devices = client.get(f"/devices/?q={off}").content.decode()
    assert "off (43 years ahead)" in devices
    assert client.get(f"/devices/{clockless}/").context["clock"] == "clockless"


def _paused_with_failures(client: Any, campaign: Any) -> None:
    Rollout.objects.filter(campaign=campaign, stage=0).update(state="failed", reason="fw_result_8")
    client.post("/campaigns/thermo-rollout/pause/", {"reason": "canary failures"})


def test_resume_with_the_box_ticked_retries_failed_devices(login: Any, campaign: Any):
    client = login("ops")
    _paused_with_failures(client, campaign)
    failed = Rollout.objects.filter(campaign=campaign, state="failed").count()
    assert failed > 0
    # A browser sends the ticked checkbox and then the hidden "off" that follows it.
    client.post("/campaigns/thermo-rollout/resume/", {"retry_failed": ["on", "off"]})
    assert not Rollout.objects.filter(campaign=campaign, state="failed").exists()
    assert Rollout.objects.filter(campaign=campaign, stage=0, state="pending").count() == failed


def test_resume_with_the_box_cleared_keeps_failed_devices_failed(login: Any, campaign: Any):
    client = login("ops")
    _paused_with_failures(client, campaign)
    failed = Rollout.objects.filter(campaign=campaign, state="failed").count()
    client.post("/campaigns/thermo-rollout/resume/", {"retry_failed": ["off"]})
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.RUNNING
    assert Rollout.objects.filter(campaign=campaign, state="failed").count() == failed


def _rollback_ready(world: Any) -> Any:
    """thermo-1.2.0 reached three devices; an approved roll-forward to 1.1.0 exists."""
    from manifests import services as release_services
    from tests.console.world import approve, make_devices, make_release

    make_devices(world, 3, prefix="hit", firmware_version="1.2.0", security_counter=2)
    # The incident policy wants two security signatures: QA's person also holds security.
    release_services.role_grant(user=world.users["qa"], role="security", actor=world.admin)
    rollback_release = make_release(
        world,
        name="rollback-thermo-1.2.0-r2",
        version="1.1.0",
        sequence=7,
        counter=2,
        kind="rollback",
        approvers=(),
        image=world.releases["thermo-1.1.0"].manifest.image,
    )
    approve(world, rollback_release, "sec", "security")
    approve(world, rollback_release, "qa", "security")
    assert rollback_release.status == ReleaseStatus.APPROVED
    return rollback_release


def test_rollback_launch_of_a_dotted_release_derives_a_valid_campaign_name(login: Any, world: Any):
    rollback_release = _rollback_ready(world)
    bad = world.releases["thermo-1.2.0"]
    form = {"rollback": rollback_release.pk, "from_release": bad.pk, "campaign": ""}
    response = login("ops").post("/incident/rollback/", form, follow=True)
    assert response.redirect_chain[-1][0] == "/campaigns/rollback-thermo-1-2-0-r2-campaign/"
    campaign = Campaign.objects.get(name="rollback-thermo-1-2-0-r2-campaign")
    assert campaign.release == rollback_release
    assert set(
        Rollout.objects.filter(campaign=campaign).values_list("device__endpoint", flat=True)
    ) == {
        "hit-00000",
        "hit-00001",
        "hit-00002",
    }


def test_rollback_launch_takes_the_campaign_name_from_the_form(login: Any, world: Any):
    rollback_release = _rollback_ready(world)
    bad = world.releases["thermo-1.2.0"]
    page = login("ops").get("/incident/").content.decode()
    assert 'name="campaign"' in page
    form = {"rollback": rollback_release.pk, "from_release": bad.pk, "campaign": "thermo-rb"}
    login("ops").post("/incident/rollback/", form)
    assert Campaign.objects.get(name="thermo-rb").release == rollback_release
    bad_name = {**form, "campaign": "Not Valid"}
    response = login("ops").post("/incident/rollback/", bad_name, follow=True)
    assert any(
        m.startswith("name: 'Not Valid' is not a name of 1 to 63 lowercase letters")
        for m in _messages(response)
    )
    assert Campaign.objects.count() == 1
