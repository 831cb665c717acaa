"""``manage.py campaign plan|apply|status|pause|resume|abort|promote|reconcile``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns import engine, planning, services
from campaigns.errors import CampaignError
from campaigns.models import Campaign
from campaigns.selectors import campaign_status, campaign_timeline
from campaigns.spec import load_spec_file
from manifests.errors import ManifestError
from manifests.management.cli import user_named


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    try:
        yield
    except (CampaignError, ManifestError) as exc:
        raise CommandError(f"{exc} [{exc.code}]", returncode=1) from exc


def _campaign(name: str) -> Campaign:
    campaign = Campaign.objects.filter(name=name).first()
    if campaign is None:
        raise CommandError(f"no campaign named {name!r}", returncode=1)
    return campaign


def delivery_line(profile: str, methods: dict[str, int]) -> str:
    """``delivery image: pull 40, push 2`` (planned devices in a plan, dispatched in a status)."""
    return f"delivery {profile}: pull {methods.get('pull', 0)}, push {methods.get('push', 0)}"


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
        for name in ("status", "pause", "resume", "abort", "promote", "reconcile", "report"):
            p = sub.add_parser(name)
            p.add_argument("name")
            if name == "status":
                p.add_argument("--json", action="store_true")
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
                self.stdout.write(
                    f"campaign {campaign.name}: {outcome} (revision "
                    f"{campaign.revision}); stages {planned}"
                )
                if campaign.target_members is not None:
                    self.stdout.write(
                        f"  group {campaign.target_group}: {len(campaign.target_members)} "
                        "device(s), frozen when the campaign was created"
                    )
            elif action == "status":
                data = campaign_status(_campaign(options["name"]))
                if options["json"]:
                    self.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str))
                else:
                    self._print_status(data)
            elif action == "report":
                self._report(_campaign(options["name"]))
            elif action == "reconcile":
                report = engine.campaign_reconcile(_campaign(options["name"]).pk)
                self.stdout.write(str(report))
            else:
                self._steer(action, options)

    def _plan(self, options: dict[str, Any]) -> None:
        spec = load_spec_file(options["file"])
        plan = planning.campaign_plan(spec=spec, source=options["file"])
        data = plan.as_dict()
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
            return
        self.stdout.write(
            f"campaign {data['campaign']}: release {data['release']} to {data['device_class']}"
        )
        if data["release_blocked"]:
            blocked = data["release_blocked"]
            self.stdout.write(f"  RELEASE BLOCKED: {blocked['reason']}: {blocked['detail']}")
        self.stdout.write(f"  delivery {data['delivery']} (method {data['delivery_method']})")
        for stage in data["stages"]:
            self.stdout.write(
                f"  stage {stage['name']:20} {stage['devices']:8} devices  "
                f"{delivery_line(data['delivery'], stage['methods'])}"
            )
        self.stdout.write(f"  cohort {data['cohort']} devices")
        for reason, count in data["excluded"].items():
            self.stdout.write(f"  excluded {reason:28} {count:8}")
        for state, count in data["server_time_only"].items():
            # Eligible all the same: only the server's use-before check will stand for them.
            self.stdout.write(f"  without a device clock ({state}) {count:8}")
        self.stdout.write("(plan only: nothing was written)")

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
            f"{data['campaign']} [{data['status']}] release {data['release']} "
            f"revision {data['revision']}"
            + (f" — paused: {data['pause_reason']}" if data["pause_reason"] else "")
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
            for reason, count in stage["reasons"].items():
                self.stdout.write(f"        {reason:28} {count}")
