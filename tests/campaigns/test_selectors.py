"""Campaign selectors (``campaigns.selectors``): the tallies the stage thresholds are judged on,
the reasons per stage, and the status report, in a number of queries that does not grow with
the fleet."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns import selectors, services
from campaigns.models import Rollout, RolloutState
from campaigns.spec import parse_spec
from tests.campaigns.support import Catalog, make_devices, spec_text

pytestmark = pytest.mark.django_db

TWO_STAGES = "  - name: canary\n    size: 4\n  - name: rest\n    size: rest\n"


def _campaign(catalog: Catalog, devices: int, *, name: str = "tally", prefix: str = "dev") -> Any:
    make_devices(catalog, devices, prefix=prefix)
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text(name, stages=TWO_STAGES)), actor=catalog.ops
    )
    return campaign


def _set(campaign: Any, stage: int, state: str, count: int, reason: str = "") -> None:
    ids = list(
        Rollout.objects.filter(campaign=campaign, stage=stage, state=RolloutState.PENDING)
        .order_by("pk")
        .values_list("pk", flat=True)[:count]
    )
    assert len(ids) == count
    Rollout.objects.filter(pk__in=ids).update(state=state, reason=reason)


def test_stage_tally_counts_each_state_of_its_stage_only(catalog: Catalog) -> None:
    campaign = _campaign(catalog, 10)
    _set(campaign, 0, RolloutState.SUCCEEDED, 1)
    _set(campaign, 0, RolloutState.FAILED, 1, "integrity_check_failed")
    _set(campaign, 0, RolloutState.DOWNLOADING, 1)
    _set(campaign, 1, RolloutState.TIMED_OUT, 2, "timed_out")
    canary = selectors.stage_tally(campaign, 0)
    assert (canary.total, canary.pending, canary.in_flight) == (4, 1, 1)
    assert (canary.succeeded, canary.failed, canary.timed_out) == (1, 1, 0)
    rest = selectors.stage_tally(campaign, 1)
    assert (rest.total, rest.pending, rest.timed_out) == (6, 4, 2)
    assert selectors.stage_reasons(campaign) == {
        0: {"failed:integrity_check_failed": 1},
        1: {"timed_out:timed_out": 2},
    }


def test_status_report_queries_do_not_grow_with_the_fleet(
    catalog: Catalog, django_assert_max_num_queries: Any
) -> None:
    small = _campaign(catalog, 6)
    with django_assert_max_num_queries(12) as small_queries:
        report = selectors.campaign_status(small)
    assert [s["planned"] for s in report["stages"]] == [4, 2]
    big = _campaign(catalog, 54, name="bigger", prefix="more")  # the 6 earlier devices and 54 more
    with django_assert_max_num_queries(len(small_queries.captured_queries)):
        report = selectors.campaign_status(big)
    assert [s["planned"] for s in report["stages"]] == [4, 56]
