"""``manage.py campaign reconcile [NAME]`` says what each pass did, and ``campaign status NAME
--watch`` follows a campaign to its end (through ``call_command``, a non-TTY stream)."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from campaigns import engine, services
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


def drive(campaign: Any) -> Any:
    """Stands in for the wait between two refreshes: the world moves on meanwhile (the engine
    passes once; every device sent a command reports success)."""

    def world_moves(seconds: float) -> None:
        assert seconds == 0.5
        engine.campaign_reconcile(campaign.pk)
        for rollout in Rollout.objects.filter(campaign=campaign, state=RolloutState.QUEUED):
            confirm(rollout)

    return world_moves


def test_watch_prints_a_progress_line_per_change_until_completed(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_devices(catalog, 3)
    campaign = apply(catalog, spec_text("c", stages=TWO_STAGES))
    monkeypatch.setattr("campaigns.management.commands.campaign.sleep", drive(campaign))
    out = StringIO()
    call_command("campaign", "status", "c", "--watch", "--interval", "0.5", stdout=out)
    assert out.getvalue().splitlines() == [
        "c [running] stage 1/2 canary [..............................]   0.0%  "
        "succeeded 0, pending 3",
        "c [running] stage 1/2 canary [##########....................]  33.3%  "
        "succeeded 1, pending 2",
        "c [running] stage 2/2 rest [##############################] 100.0%  "
        "succeeded 3, pending 0",
        "c [completed] stage 2/2 rest [##############################] 100.0%  "
        "succeeded 3, pending 0",
        "campaign c completed",
    ]


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_redraws_in_place_on_a_terminal_and_stops_on_ctrl_c(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_devices(catalog, 2)
    apply(catalog, spec_text("c"))

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("campaigns.management.commands.campaign.sleep", interrupted)
    out = Terminal()
    call_command("campaign", "status", "c", "--watch", stdout=out)  # no error: exit 0
    assert out.getvalue() == (
        "\r\x1b[2Kc [running] stage 1/1 all [..............................]   0.0%  "
        "succeeded 0, pending 2\n"
        "stopped watching campaign c (running)\n"
    )


def test_watch_of_an_aborted_campaign_ends_with_exit_1(catalog: Catalog) -> None:
    make_devices(catalog, 1)
    campaign = apply(catalog, spec_text("c"))
    services.campaign_abort(campaign=campaign, actor=catalog.ops, reason="bad batch")
    out = StringIO()
    with pytest.raises(CommandError, match="campaign c aborted") as info:
        call_command("campaign", "status", "c", "--watch", stdout=out)
    assert info.value.returncode == 1
    assert out.getvalue().startswith("c [aborted] stage 1/1 all [")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--watch", "--json"], "--watch and --json do not combine"),
        (["--watch", "--interval", "0"], "between 0.1 and 3600 seconds, not 0"),
        (["--watch", "--interval", "soon"], "not a number of seconds: 'soon'"),
    ],
)
def test_watch_refuses_bad_options(catalog: Catalog, args: list[str], message: str) -> None:
    apply(catalog, spec_text("c"))
    with pytest.raises(CommandError, match=message):
        call_command("campaign", "status", "c", *args, stdout=StringIO())
