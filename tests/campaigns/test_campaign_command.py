"""``manage.py campaign reconcile [NAME]`` says what each pass did, and ``campaign status NAME
--watch`` follows a campaign to its end (through ``call_command``, a non-TTY stream)."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from campaigns import services
from campaigns.models import CommandStatus, DeviceCommand, Rollout, RolloutState
from tests.campaigns.support import Catalog, apply, confirm, make_devices, spec_text

pytestmark = pytest.mark.django_db

TWO_STAGES = "  - name: canary\n    size: 1\n  - name: rest\n    size: rest\n"


def reconcile(*args: str) -> str:
    out = StringIO()
    call_command("campaign", "reconcile", *args, stdout=out)
    return out.getvalue()


def test_reconcile_says_dispatched_then_nothing_to_do(catalog: Catalog) -> None:
    make_devices(catalog, 3)
    apply(catalog, spec_text("c"))
    assert reconcile("c") == "campaign c: dispatched 3 (0/3 succeeded, 3 needed)\n"
    assert reconcile("c") == "campaign c: nothing to do (0/3 succeeded, 3 needed)\n"


def test_reconcile_counts_sent_resent_and_requeued_rollouts(catalog: Catalog) -> None:
    make_devices(catalog, 4)
    campaign = apply(catalog, spec_text("c"))
    reconcile("c")
    commands = list(DeviceCommand.objects.order_by("device__endpoint"))
    # Two reached the gateway; one was lost with its worker a while ago (sent again).
    DeviceCommand.objects.filter(pk__in=[c.pk for c in commands[:2]]).update(
        status=CommandStatus.SENT
    )
    DeviceCommand.objects.filter(pk=commands[2].pk).update(
        created_at=timezone.now() - dt.timedelta(minutes=5)
    )
    # The fourth device was unreachable and is back online: pending again, and sent at once.
    Rollout.objects.filter(campaign=campaign, device=commands[3].device).update(
        state=RolloutState.UNREACHABLE, reason="unreachable", command_id=None
    )
    assert reconcile("c") == (
        "campaign c: dispatched 1, sent to the gateway 2, commands re-sent 1, re-queued 1 "
        "(0/4 succeeded, 4 needed)\n"
    )


def test_reconcile_reports_timeouts_and_the_pause_they_cause(catalog: Catalog) -> None:
    make_devices(catalog, 2)
    campaign = apply(catalog, spec_text("c"))
    reconcile("c")
    first, second = Rollout.objects.filter(campaign=campaign).order_by("device__endpoint")
    confirm(first)
    Rollout.objects.filter(pk=second.pk).update(deadline_at=timezone.now() - dt.timedelta(hours=1))
    line = reconcile("c")
    assert line.startswith("campaign c: timed out 1, campaign paused (")
    assert "success threshold can no longer be reached: 1/2 succeeded" in line
    # Paused: reconciling it again is nothing to do, and says why.
    assert reconcile("c") == (
        "campaign c: nothing to do (paused, only running campaigns are reconciled)\n"
    )


def test_reconcile_reports_the_stage_it_advanced(catalog: Catalog) -> None:
    make_devices(catalog, 3)
    campaign = apply(catalog, spec_text("c", stages=TWO_STAGES))
    assert reconcile("c") == "campaign c: dispatched 1 (0/1 succeeded, 1 needed)\n"
    confirm(Rollout.objects.get(campaign=campaign, state=RolloutState.QUEUED))
    assert reconcile("c") == (
        "campaign c: dispatched 2, stage canary completed, now at stage 2 (stage complete)\n"
    )


def test_reconcile_without_a_name_passes_over_every_running_campaign(catalog: Catalog) -> None:
    make_devices(catalog, 2)
    b = apply(catalog, spec_text("b"))
    a = apply(catalog, spec_text("a"))
    services.campaign_pause(campaign=a, actor=catalog.ops, reason="later")
    assert reconcile() == "campaign b: dispatched 2 (0/2 succeeded, 2 needed)\n"
    data = json.loads(reconcile("--json"))
    assert [(d["campaign"], d["status"], d["dispatched"], d["decision"]) for d in data] == [
        ("b", "running", 0, "0/2 succeeded, 2 needed")
    ]
    services.campaign_pause(campaign=b, actor=catalog.ops, reason="later")
    assert reconcile() == "no running campaign: nothing to do\n"
