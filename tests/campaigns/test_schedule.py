"""A campaign's scheduled start (``start_at`` in the spec): parsed with its offset into one
canonical UTC spelling, nothing dispatched before it whoever calls the engine, shown as
"scheduled for ..." by the CLI, the API and the console, and fixed once dispatch has begun."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import engine, services
from campaigns.errors import CampaignStartedError, SpecError
from campaigns.models import CampaignRevision, CampaignStatus, DeviceCommand, RolloutState
from campaigns.spec import parse_spec
from tests.campaigns.support import Catalog, apply, make_devices, spec_text, states

BASE = spec_text("sched")


def _at(moment: dt.datetime) -> str:
    return f"start_at: '{moment.isoformat()}'\n"


def test_start_at_keeps_the_instant_in_one_canonical_utc_spelling() -> None:
    spec = parse_spec(BASE + "start_at: 2026-12-08T09:00:00+01:00\n")
    assert spec.start_at == dt.datetime(2026, 12, 8, 8, 0, tzinfo=dt.UTC)
    assert spec.to_document()["start_at"] == "2026-12-08T08:00:00Z"
    assert parse_spec(spec.to_document()) == spec
    same = parse_spec(BASE + "start_at: 2026-12-08T08:00:00Z\n")
    assert same.digest() == spec.digest()


def test_a_spec_without_start_at_keeps_its_digest() -> None:
    """Campaigns applied before start_at existed: re-applying their file stays "unchanged"."""
    document = parse_spec(BASE).to_document()
    assert "start_at" not in document
    assert parse_spec(BASE + "start_at: null\n").digest() == parse_spec(BASE).digest()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2026-12-08T09:00:00", "UTC offset"),  # whose 09:00?
        ("2026-12-08", "UTC offset"),
        ("tomorrow", "UTC offset"),
        ("2026-12-08T09:00:00.250Z", "UTC offset"),  # whole seconds only
        ("2026-13-08T09:00:00Z", "not an ISO-8601 timestamp"),
        ("2026-02-30T09:00:00+01:00", "not an ISO-8601 timestamp"),
    ],
)
def test_a_start_at_without_offset_or_not_a_time_is_refused(value: str, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(BASE + f"start_at: '{value}'\n")
    assert [(e.path, reason in e.reason) for e in info.value.errors] == [("start_at", True)]


@pytest.mark.django_db
def test_nothing_is_dispatched_before_start_at_then_everything_may_go(catalog: Catalog) -> None:
    now = timezone.now().replace(microsecond=0)
    start = now + dt.timedelta(hours=2)
    make_devices(catalog, 4)
    campaign = apply(catalog, BASE + _at(start), now=now)
    # The first stage (its ramp, its unreachable clock) begins at the scheduled start.
    campaign.refresh_from_db()
    assert campaign.ramp_started_at == start
    assert campaign.stages.get(index=0).started_at == start

    for moment in (now, start - dt.timedelta(seconds=1)):
        report = engine.campaign_reconcile(campaign.pk, now=moment)
        assert report is not None and report.dispatched == 0
        assert report.decision == f"scheduled for {start:%Y-%m-%d %H:%M} UTC"
    assert not DeviceCommand.objects.exists()
    assert set(states(campaign).values()) == {RolloutState.PENDING}

    report = engine.campaign_reconcile(campaign.pk, now=start)
    assert report is not None and report.dispatched == 4
    assert set(states(campaign).values()) == {RolloutState.QUEUED}


@pytest.mark.django_db
def test_resume_before_the_start_still_waits_and_ramps_from_the_start(catalog: Catalog) -> None:
    now = timezone.now().replace(microsecond=0)
    start = now + dt.timedelta(hours=1)
    make_devices(catalog, 2)
    campaign = apply(catalog, BASE + _at(start), now=now)
    services.campaign_pause(campaign=campaign, actor=catalog.ops, reason="check", now=now)
    resumed = services.campaign_resume(campaign=campaign, actor=catalog.ops, now=now)
    assert resumed.ramp_started_at == start
    report = engine.campaign_reconcile(campaign.pk, now=now + dt.timedelta(minutes=5))
    assert report is not None and report.dispatched == 0


@pytest.mark.django_db
def test_start_at_may_move_before_dispatch_begins(catalog: Catalog) -> None:
    now = timezone.now().replace(microsecond=0)
    make_devices(catalog, 2)
    campaign = apply(catalog, BASE + _at(now + dt.timedelta(hours=3)), now=now)
    later = now + dt.timedelta(hours=5)
    revised, outcome = services.campaign_apply(
        spec=parse_spec(BASE + _at(later)), actor=catalog.ops, now=now
    )
    assert (outcome, revised.revision, revised.ramp_started_at) == ("revised", 2, later)
    assert revised.stages.get(index=0).started_at == later
    assert CampaignRevision.objects.get(campaign=campaign, revision=2).diff == [
        {
            "path": "start_at",
            "before": f"{now + dt.timedelta(hours=3):%Y-%m-%dT%H:%M:%SZ}",
            "after": f"{later:%Y-%m-%dT%H:%M:%SZ}",
        }
    ]
    # Dropping the schedule before the start means: start now.
    unscheduled, _ = services.campaign_apply(spec=parse_spec(BASE), actor=catalog.ops, now=now)
    assert unscheduled.ramp_started_at == now
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 2


@pytest.mark.django_db
@pytest.mark.parametrize("change", ["later", "remove", "add"])
def test_changing_start_at_after_dispatch_has_begun_is_refused(
    catalog: Catalog, change: str
) -> None:
    now = timezone.now().replace(microsecond=0)
    start = now + dt.timedelta(hours=1)
    make_devices(catalog, 2)
    first = BASE if change == "add" else BASE + _at(start)
    campaign = apply(catalog, first, now=now)
    begun = now if change == "add" else start
    engine.campaign_reconcile(campaign.pk, now=begun)
    assert DeviceCommand.objects.count() == 2
    new = {
        "later": BASE + _at(start + dt.timedelta(days=1)),
        "remove": BASE,
        "add": BASE + _at(begun + dt.timedelta(days=1)),
    }[change]
    events = AuditEvent.objects.count()
    with pytest.raises(CampaignStartedError, match="start time cannot change") as info:
        services.campaign_apply(
            spec=parse_spec(new), actor=catalog.ops, now=begun + dt.timedelta(minutes=1)
        )
    assert info.value.code == "campaign.already_started"
    campaign.refresh_from_db()
    assert campaign.revision == 1 and AuditEvent.objects.count() == events
    # Other changes with the same start_at are still revisions.
    other = first + "description: steady\n"
    _, outcome = services.campaign_apply(
        spec=parse_spec(other), actor=catalog.ops, now=begun + dt.timedelta(minutes=1)
    )
    assert outcome == "revised"


@pytest.mark.django_db
def test_a_campaign_whose_start_passed_without_dispatch_cannot_be_rescheduled(
    catalog: Catalog,
) -> None:
    """The start came while no device was online: dispatch may begin at any pass now, so the
    start is as fixed as if something had been sent."""
    now = timezone.now().replace(microsecond=0)
    make_devices(catalog, 1, online=False)
    apply(catalog, BASE + _at(now + dt.timedelta(minutes=10)), now=now)
    with pytest.raises(CampaignStartedError):
        services.campaign_apply(
            spec=parse_spec(BASE + _at(now + dt.timedelta(days=1))),
            actor=catalog.ops,
            now=now + dt.timedelta(minutes=11),
        )


@pytest.mark.django_db
def test_status_says_scheduled_for_in_the_cli_and_the_api(
    catalog: Catalog, client: Any, tmp_path: Any
) -> None:
    start = (timezone.now() + dt.timedelta(days=2)).replace(microsecond=0)
    make_devices(catalog, 1)
    campaign = apply(catalog, BASE + _at(start))
    out = StringIO()
    call_command("campaign", "status", campaign.name, stdout=out)
    expected = f"scheduled for {start:%Y-%m-%d %H:%M} UTC"
    assert f"sched [running] release thermo-1.1.0 revision 1 — {expected}" in out.getvalue()
    path = tmp_path / "sched.yaml"
    path.write_text(BASE + _at(start))
    out = StringIO()
    call_command("campaign", "plan", str(path), stdout=out)
    assert f"  {expected} (start_at)\n" in out.getvalue()
    out = StringIO()
    call_command("campaign", "apply", str(path), "--user", catalog.ops.username, stdout=out)
    assert (
        out.getvalue()
        == f"campaign sched: unchanged (revision 1); stages {{'all': 1}}; {expected}\n"
    )
    client.force_login(catalog.ops)
    body = client.get(f"/api/campaigns/{campaign.name}/status/").json()
    assert (body["scheduled"], body["start_at"]) == (expected, start.isoformat())
    page = client.get(f"/campaigns/{campaign.name}/").content.decode()
    assert f'<strong id="campaign-scheduled">{expected}</strong>' in page
    listing = client.get("/campaigns/").content.decode()
    assert f'<span class="muted" data-role="scheduled">{expected}</span>' in listing
    preview = client.post("/campaigns/+new/", {"spec": BASE + _at(start), "action": "plan"})
    assert f'<p id="plan-scheduled"><strong>{expected}</strong> (start_at)' in preview.text


@pytest.mark.django_db
def test_a_finished_campaign_is_not_scheduled(catalog: Catalog) -> None:
    from campaigns.selectors import scheduled_for

    now = timezone.now().replace(microsecond=0)
    campaign = apply(catalog, BASE + _at(now + dt.timedelta(days=1)), now=now)
    assert scheduled_for(campaign, now=now) is not None
    assert scheduled_for(campaign, now=now + dt.timedelta(days=1)) is None
    services.campaign_abort(campaign=campaign, actor=catalog.ops, reason="no", now=now)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.ABORTED
    assert scheduled_for(campaign, now=now) is None


@pytest.mark.django_db
def test_the_api_refuses_a_new_start_after_dispatch_with_409_and_the_code(
    catalog: Catalog, client: Any
) -> None:
    make_devices(catalog, 1)
    campaign = apply(catalog, BASE)
    engine.campaign_reconcile(campaign.pk)
    client.force_login(catalog.ops)
    later = (timezone.now() + dt.timedelta(days=1)).replace(microsecond=0)
    response = client.put(
        f"/api/campaigns/{campaign.name}/",
        {"document": BASE + _at(later)},
        content_type="application/json",
    )
    assert response.status_code == 409, response.content
    assert response.json()["code"] == "campaign.already_started"
    campaign.refresh_from_db()
    assert campaign.revision == 1 and "start_at" not in campaign.spec
