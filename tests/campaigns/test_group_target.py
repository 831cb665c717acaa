"""A campaign targeting a saved device group (``target.group``): the group's members are resolved
and frozen when the campaign is created, recorded on it, and its population never drifts with
the group afterwards (devices joining the group, the group deleted, a revision)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from campaigns import engine, fleet_services, planning, services
from campaigns.errors import SpecError
from campaigns.fleet import DeviceFilter
from campaigns.models import Campaign, Rollout
from campaigns.selectors import spec_of
from campaigns.spec import parse_spec
from tests.campaigns.support import Catalog, make_devices, spec_text

pytestmark = pytest.mark.django_db


def group_spec(name: str = "grp", group: str = "pilot", extra: str = "") -> str:
    return spec_text(name, target_extra=f"  group: {group}\n{extra}")


def rollout_endpoints(campaign: Campaign) -> list[str]:
    return sorted(
        Rollout.objects.filter(campaign=campaign).values_list("device__endpoint", flat=True)
    )


def test_the_group_is_written_in_the_document_only_when_set() -> None:
    plain = parse_spec(spec_text("plain"))
    assert "group" not in plain.to_document()["target"]
    grouped = parse_spec(group_spec())
    assert grouped.target.group == "pilot"
    assert grouped.to_document()["target"]["group"] == "pilot"
    assert parse_spec(grouped.to_document()) == grouped
    assert grouped.digest() != plain.digest()


@pytest.mark.parametrize("bad", ["Pilot", "-pilot", "a" * 64, "a_b"])
def test_a_malformed_group_name_is_refused_at_its_path(bad: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec_text("x", target_extra=f"  group: '{bad}'\n"))
    assert [e.path for e in caught.value.errors] == ["target.group"]


def test_members_are_frozen_at_creation_and_recorded(catalog: Catalog) -> None:
    make_devices(catalog, 6, tags=["eu"])
    make_devices(catalog, 3, prefix="us", tags=["us"])
    fleet_services.device_group_create(
        actor=catalog.ops, name="pilot", device_filter=DeviceFilter.parse({"tag": "eu"})
    )
    campaign, outcome = services.campaign_apply(
        spec=parse_spec(group_spec(extra="  exclude: [dev-00005]\n")), actor=catalog.ops
    )
    assert outcome == "created"
    expected = [f"dev-{i:05d}" for i in range(6)]
    assert campaign.target_group == "pilot" and campaign.target_members == expected
    assert rollout_endpoints(campaign) == expected  # dev-00005 is there, skipped by exclude
    event = AuditEvent.objects.get(action="campaign.create")
    assert event.details["group"] == "pilot" and event.details["group_members"] == 6

    # Devices joining the group later do not join the campaign, even as newcomers of its class.
    make_devices(catalog, 2, prefix="late", tags=["eu"])
    assert engine.enroll_new_devices(campaign, spec_of(campaign), now=timezone.now()) == 0
    assert rollout_endpoints(campaign) == expected

    # Deleting the group changes nothing either; a revision keeps the frozen members.
    fleet_services.device_group_delete(actor=catalog.ops, name="pilot")
    revised, outcome = services.campaign_apply(
        spec=parse_spec(group_spec(extra="  exclude: [dev-00005]\ntimeouts:\n  device: 7m\n")),
        actor=catalog.ops,
    )
    assert outcome == "revised"
    assert rollout_endpoints(revised) == expected
    assert Campaign.objects.get(pk=campaign.pk).target_members == expected


def test_a_static_group_intersects_with_the_include_list(catalog: Catalog) -> None:
    make_devices(catalog, 5)
    fleet_services.device_group_create(
        actor=catalog.ops, name="pilot", endpoints=["dev-00000", "dev-00001", "dev-00002"]
    )
    spec = parse_spec(group_spec(extra="  include: [dev-00001, dev-00002, dev-00004]\n"))
    campaign, _ = services.campaign_apply(spec=spec, actor=catalog.ops)
    assert rollout_endpoints(campaign) == ["dev-00001", "dev-00002"]


def test_a_plan_preview_counts_the_group_as_it_is_now(catalog: Catalog) -> None:
    make_devices(catalog, 4)
    fleet_services.device_group_create(actor=catalog.ops, name="pilot", endpoints=["dev-00003"])
    plan = planning.campaign_plan(spec=parse_spec(group_spec()))
    assert plan.cohort == 1


def test_an_unknown_group_is_a_spec_error_and_writes_nothing(catalog: Catalog) -> None:
    make_devices(catalog, 2)
    with pytest.raises(SpecError) as caught:
        services.campaign_apply(spec=parse_spec(group_spec(group="nope")), actor=catalog.ops)
    assert caught.value.path == "target.group"
    assert not Campaign.objects.exists()


def test_an_empty_group_is_refused(catalog: Catalog) -> None:
    make_devices(catalog, 2, tags=["eu"])
    fleet_services.device_group_create(
        actor=catalog.ops, name="pilot", device_filter=DeviceFilter.parse({"tag": "asia"})
    )
    with pytest.raises(SpecError, match="has no devices"):
        services.campaign_apply(spec=parse_spec(group_spec()), actor=catalog.ops)
    assert not Campaign.objects.exists()


def test_a_revision_cannot_change_or_add_the_group(catalog: Catalog) -> None:
    make_devices(catalog, 3)
    fleet_services.device_group_create(actor=catalog.ops, name="pilot", endpoints=["dev-00000"])
    fleet_services.device_group_create(actor=catalog.ops, name="other", endpoints=["dev-00001"])
    services.campaign_apply(spec=parse_spec(group_spec()), actor=catalog.ops)
    with pytest.raises(SpecError, match="fixed when it is created"):
        services.campaign_apply(spec=parse_spec(group_spec(group="other")), actor=catalog.ops)
    services.campaign_apply(spec=parse_spec(spec_text("plain")), actor=catalog.ops)
    with pytest.raises(SpecError, match="fixed when it is created"):
        services.campaign_apply(
            spec=parse_spec(group_spec(name="plain", group="pilot")), actor=catalog.ops
        )
