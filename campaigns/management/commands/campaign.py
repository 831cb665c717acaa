"""``manage.py campaign plan|apply|status [--watch]|pause|resume|abort|promote|reconcile``."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from time import sleep
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from campaigns import engine, planning, services
from campaigns.errors import CampaignError
from campaigns.models import Campaign, CampaignStatus
from campaigns.selectors import (
    campaign_status,
    campaign_timeline,
    describe_start,
    scheduled_for,
)
from campaigns.spec import load_spec_file
from manifests.errors import ManifestError
from manifests.management.cli import user_named


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    try:
        yield
    except (CampaignError, ManifestError) as exc:
        raise CommandError(f"{exc} [{exc.code}]", returncode=1) from exc


# --watch refresh bounds: faster than this only loads the database; slower is not "live".
MIN_INTERVAL = 0.1
MAX_INTERVAL = 3600.0


def _campaign(name: str) -> Campaign:
    campaign = Campaign.objects.filter(name=name).first()
    if campaign is None:
        raise CommandError(f"no campaign named {name!r}", returncode=1)
    return campaign


def delivery_line(profile: str, methods: dict[str, int]) -> str:
    """``delivery image: pull 40, push 2`` (planned devices in a plan, dispatched in a status)."""
    return f"delivery {profile}: pull {methods.get('pull', 0)}, push {methods.get('push', 0)}"


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"between {MIN_INTERVAL} and {MAX_INTERVAL:.0f} seconds, not {text}"
        )
    return value


# Shown in this order (those at zero are left out, but for succeeded and pending).
WATCH_STATES = (
    ("succeeded", "succeeded"),
    ("failed", "failed"),
    ("timed_out", "timed out"),
    ("unreachable", "unreachable"),
    ("in_flight", "in flight"),
    ("pending", "pending"),
    ("skipped", "skipped"),
    ("cancelled", "cancelled"),
)
BAR_WIDTH = 30


def progress_line(data: dict[str, Any]) -> str:
    """``fleet [running] stage 2/3 wave [#########.....................]  31.0%  succeeded
    31, in flight 4, pending 65``: where the campaign stands. The share is of the devices it
    is to update (skipped and cancelled ones are not) that are finished, whatever the result."""
    totals = dict.fromkeys((key for key, _ in WATCH_STATES), 0)
    for stage in data["stages"]:
        for key in totals:
            totals[key] += stage["tally"][key]
    eligible = sum(totals.values()) - totals["skipped"] - totals["cancelled"]
    done = eligible - totals["pending"] - totals["in_flight"]
    share = done / eligible if eligible else 1.0
    if data["status"] == CampaignStatus.COMPLETED:
        share = 1.0
    filled = round(share * BAR_WIDTH)
    stages = data["stages"]
    current = stages[data["current_stage"]] if data["current_stage"] < len(stages) else None
    where = f"stage {data['current_stage'] + 1}/{len(stages)} {current['name']}" if current else ""
    counts = ", ".join(
        f"{label} {totals[key]}"
        for key, label in WATCH_STATES
        if totals[key] or key in ("succeeded", "pending")
    )
    note = ""
    if data.get("scheduled"):
        note = f" — {data['scheduled']}"
    elif data["pause_reason"]:
        note = f" — paused: {data['pause_reason']}"
    return (
        f"{data['campaign']} [{data['status']}] {where} "
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share * 100:5.1f}%  {counts}{note}"
    )


def reconcile_line(report: engine.ReconcileReport, *, was: str) -> str:
    """``campaign fleet: dispatched 40, timed out 2, stage canary completed, now at stage 2
    (stage complete)`` or ``campaign fleet: nothing to do (3/40 succeeded, 38 needed)``: what
    the pass changed, then the stage's standing in the engine's words."""
    changes = report.changes()
    if report.status != was:
        changes.append(f"campaign {report.status}")
    elif report.stages_completed:
        changes.append(f"now at stage {report.stage + 1}")
    why = f" ({report.decision})" if report.decision else ""
    if not changes:
        return f"campaign {report.campaign}: nothing to do{why}"
    return f"campaign {report.campaign}: {', '.join(changes)}{why}"


class Command(BaseCommand):
    help = "Plan, apply and steer staged rollouts."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("plan", help="validate and show cohorts and exclusions; writes nothing")
        p.add_argument("file")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("apply", help="create or revise the campaign (idempotent)")
        p.add_argument("file")
        p.add_argument("--user", required=True)
        p = sub.add_parser(
            "reconcile",
            help="run one reconcile pass now (every running campaign without NAME) and say "
            "what it did",
        )
        p.add_argument("name", nargs="?")
        p.add_argument("--json", action="store_true")
        for name in ("status", "pause", "resume", "abort", "promote", "report"):
            p = sub.add_parser(name)
            p.add_argument("name")
            if name == "status":
                p.add_argument("--json", action="store_true")
                p.add_argument(
                    "--watch",
                    action="store_true",
                    help="follow the campaign with a progress bar until it completes or is "
                    "aborted (Ctrl-C stops watching)",
                )
                p.add_argument(
                    "--interval",
                    type=_interval,
                    default=2.0,
                    help="seconds between refreshes with --watch (default 2)",
                )
            if name in ("pause", "resume", "abort", "promote"):
                p.add_argument("--user", required=True)
            if name in ("pause", "abort"):
                p.add_argument("--reason", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        with refusals():
            if action == "plan":
                self._plan(options)
            elif action == "apply":
                spec = load_spec_file(options["file"])
                campaign, outcome = services.campaign_apply(
                    spec=spec, actor=user_named(options["user"]), source=options["file"]
                )
                planned = {s.name: s.planned_devices for s in campaign.stages.all()}
                waiting = scheduled_for(campaign, now=timezone.now())
                self.stdout.write(
                    f"campaign {campaign.name}: {outcome} (revision "
                    f"{campaign.revision}); stages {planned}"
                    + (f"; {describe_start(waiting)}" if waiting else "")
                )
                if campaign.target_members is not None:
                    self.stdout.write(
                        f"  group {campaign.target_group}: {len(campaign.target_members)} "
                        "device(s), frozen when the campaign was created"
                    )
            elif action == "status":
                if options["watch"]:
                    if options["json"]:
                        raise CommandError("--watch and --json do not combine", returncode=2)
                    self._watch(_campaign(options["name"]), interval=options["interval"])
                    return
                data = campaign_status(_campaign(options["name"]))
                if options["json"]:
                    self.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str))
                else:
                    self._print_status(data)
            elif action == "report":
                self._report(_campaign(options["name"]))
            elif action == "reconcile":
                self._reconcile(options)
            else:
                self._steer(action, options)

    def _plan(self, options: dict[str, Any]) -> None:
        spec = load_spec_file(options["file"])
        plan = planning.campaign_plan(spec=spec, source=options["file"])
        data = plan.as_dict()
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
            return
        what = "release" if data["trust_policy"] is None else "target"
        self.stdout.write(
            f"campaign {data['campaign']}: {what} {data['target']} to {data['device_class']}"
        )
        if data["release_blocked"]:
            blocked = data["release_blocked"]
            kind = "RELEASE" if data["trust_policy"] is None else "TRUST POLICY"
            self.stdout.write(f"  {kind} BLOCKED: {blocked['reason']}: {blocked['detail']}")
        self.stdout.write(f"  delivery {data['delivery']} (method {data['delivery_method']})")
        if spec.start_at is not None:
            self.stdout.write(f"  {describe_start(spec.start_at)} (start_at)")
        for stage in data["stages"]:
            delta = stage["delta"]
            extra = (
                f"delta {delta['devices']} ({delta['bytes_saved']} bytes saved)"
                if data["trust_policy"] is None
                else f"already at v{data['trust_policy']} {stage['already_held']}"
            )
            self.stdout.write(
                f"  stage {stage['name']:20} {stage['devices']:8} devices  "
                f"{delivery_line(data['delivery'], stage['methods'])}  {extra}"
            )
        self.stdout.write(f"  cohort {data['cohort']} devices")
        for reason, count in data["excluded"].items():
            self.stdout.write(f"  excluded {reason:28} {count:8}")
        for state, count in data["server_time_only"].items():
            # Eligible all the same: only the server's use-before check will stand for them.
            self.stdout.write(f"  without a device clock ({state}) {count:8}")
        enforcement = data["threshold_enforcement"]
        self.stdout.write(
            f"  approval thresholds checked on the device {enforcement['device']:8}, "
            f"by the server only {enforcement['server_only']:8} ({enforcement['why']})"
        )
        self.stdout.write("(plan only: nothing was written)")

    def _watch(self, campaign: Campaign, *, interval: float) -> None:
        """Redraw one progress line in place on a terminal; elsewhere (a pipe, a log) print it
        again only when it changed. Returns once the campaign is completed (exit 0) or aborted
        (exit 1); Ctrl-C stops watching with exit 0. Read-only: the workers move it."""
        tty = self.stdout.isatty()
        last = ""
        try:
            while True:
                campaign.refresh_from_db()
                line = progress_line(campaign_status(campaign))
                if tty:
                    self.stdout.write(f"\r\x1b[2K{line}", ending="")
                    self.stdout.flush()
                elif line != last:
                    self.stdout.write(line)
                last = line
                if campaign.status in (CampaignStatus.COMPLETED, CampaignStatus.ABORTED):
                    break
                sleep(interval)
        except KeyboardInterrupt:
            if tty:
                self.stdout.write("")
            self.stdout.write(f"stopped watching campaign {campaign.name} ({campaign.status})")
            return
        if tty:
            self.stdout.write("")
        if campaign.status == CampaignStatus.ABORTED:
            raise CommandError(
                f"campaign {campaign.name} aborted: {campaign.pause_reason or 'see its report'}",
                returncode=1,
            )
        self.stdout.write(f"campaign {campaign.name} completed")

    def _reconcile(self, options: dict[str, Any]) -> None:
        """One pass per campaign, each saying what it did: rollouts sent, re-queued, timed out,
        stages advanced, the campaign paused or completed, or "nothing to do"."""
        if options["name"]:
            campaigns = [_campaign(options["name"])]
        else:
            campaigns = list(
                Campaign.objects.filter(status=CampaignStatus.RUNNING).order_by("name")
            )
            if not campaigns and not options["json"]:
                self.stdout.write("no running campaign: nothing to do")
        results = []
        for campaign in campaigns:
            report = engine.campaign_reconcile(campaign.pk)
            if report is None:
                campaign.refresh_from_db()
                why = (
                    f"{campaign.status}, only running campaigns are reconciled"
                    if campaign.status != CampaignStatus.RUNNING
                    else "another worker holds it"
                )
                results.append({"campaign": campaign.name, "status": campaign.status, "why": why})
                if not options["json"]:
                    self.stdout.write(f"campaign {campaign.name}: nothing to do ({why})")
                continue
            results.append(report.as_dict())
            if not options["json"]:
                self.stdout.write(reconcile_line(report, was=campaign.status))
        if options["json"]:
            self.stdout.write(json.dumps(results, indent=2, sort_keys=True))

    def _steer(self, action: str, options: dict[str, Any]) -> None:
        campaign = _campaign(options["name"])
        actor = user_named(options["user"])
        if action == "pause":
            services.campaign_pause(campaign=campaign, actor=actor, reason=options["reason"])
        elif action == "resume":
            services.campaign_resume(campaign=campaign, actor=actor)
        elif action == "abort":
            services.campaign_abort(
                campaign=campaign, actor=actor, reason=options["reason"] or "aborted by operator"
            )
        else:
            services.campaign_promote(campaign=campaign, actor=actor)
        campaign.refresh_from_db()
        self.stdout.write(f"campaign {campaign.name}: {campaign.status}")

    def _report(self, campaign: Campaign) -> None:
        """Incident report: the campaign's timeline (who did what, thresholds crossed)."""
        self._print_status(campaign_status(campaign))
        self.stdout.write("timeline:")
        for event in campaign_timeline(campaign):
            details = {
                k: v
                for k, v in event["details"].items()
                if k in ("reason", "stage", "revision", "requeued", "by", "cohort", "diff")
            }
            self.stdout.write(
                f"  #{event['seq']:<5} {event['at']} {event['actor']:14} "
                f"{event['action']:26} {json.dumps(details, default=str)}"
            )

    def _print_status(self, data: dict[str, Any]) -> None:
        self.stdout.write(
            f"{data['campaign']} [{data['status']}] "
            f"{'release ' if data['trust_policy'] is None else ''}{data['target']} "
            f"revision {data['revision']}"
            + (f" — paused: {data['pause_reason']}" if data["pause_reason"] else "")
            + (f" — {data['scheduled']}" if data.get("scheduled") else "")
        )
        self.stdout.write(f"  delivery {data['delivery']} (method {data['delivery_method']})")
        if data["server_time_only"]:
            counts = ", ".join(f"{state} {n}" for state, n in data["server_time_only"].items())
            self.stdout.write(
                f"  dispatched without a device clock: {counts} (server's use-before check only)"
            )
        for stage in data["stages"]:
            t = stage["tally"]
            self.stdout.write(
                f"  {'>' if stage['current'] else ' '} {stage['name']:12} {stage['status']:12} "
                f"ok {t['succeeded']:5} failed {t['failed']:4} timeout {t['timed_out']:4} "
                f"unreachable {t['unreachable']:4} in-flight {t['in_flight']:4} "
                f"pending {t['pending']:5} skipped {t['skipped']:4}  "
                f"{delivery_line(data['delivery'], stage['methods'])}"
            )
            if any(stage["payloads"].values()):
                self.stdout.write(
                    f"        delta {stage['payloads']['delta']}, fell back to the full image "
                    f"{stage['payloads']['fallback']}"
                )
            for reason, count in stage["reasons"].items():
                self.stdout.write(f"        {reason:28} {count}")
