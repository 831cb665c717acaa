"""``manage.py rollback prepare|create|launch``: incident roll-forward to an earlier good image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns import rollback
from campaigns.management.commands.campaign import refusals
from manifests import services as release_services
from manifests import suit
from manifests.management.cli import parse_time, user_named
from manifests.models import FirmwareImage, Release


def _release(name: str) -> Release:
    release = (
        Release.objects.select_related("manifest__device_class__vendor").filter(name=name).first()
    )
    if release is None:
        raise CommandError(f"no release named {name!r}", returncode=1)
    return release


def _plan(options: dict[str, Any]) -> rollback.RollbackPlan:
    image = None
    if options.get("image_sha256"):
        image = FirmwareImage.objects.filter(sha256=options["image_sha256"].lower()).first()
        if image is None:
            raise CommandError(f"no uploaded image {options['image_sha256']}", returncode=1)
    return rollback.rollback_prepare(bad_release=_release(options["from_release"]), image=image)


class Command(BaseCommand):
    help = "Roll back by rolling forward: prepare, sign and launch a rollback release."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("prepare", help="show the roll-forward parameters and affected devices")
        p.add_argument("--from-release", required=True)
        p.add_argument("--image-sha256", help="a re-signed image of the good firmware")
        p = sub.add_parser("create", help="sign (locally, with your key) and submit the release")
        p.add_argument("--from-release", required=True)
        p.add_argument("--image-sha256")
        p.add_argument("--key", required=True, help="the author's PRIV.pem")
        p.add_argument("--user", required=True, help="the author")
        p.add_argument("--name", help="rollback release name (default: rollback-<bad>)")
        p.add_argument("--expires", help="ISO 8601 use-before (default: 30 days)")
        p = sub.add_parser("launch", help="campaign of the approved rollback to affected devices")
        p.add_argument("--release", required=True, help="the approved rollback release")
        p.add_argument("--from-release", required=True)
        p.add_argument("--user", required=True)
        p.add_argument(
            "--campaign",
            help="campaign name (default: the release name made valid, e.g. rb-1-2-0-campaign)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with refusals():
            getattr(self, f"_{options['action']}")(options)

    def _prepare(self, options: dict[str, Any]) -> None:
        plan = _plan(options)
        self.stdout.write(
            json.dumps(
                {
                    "from_release": plan.bad_release.name,
                    "roll_forward_to": plan.version,
                    "image": plan.image.sha256,
                    "sequence_number": plan.sequence_number,
                    "security_counter": plan.security_counter,
                    "affected_devices": len(plan.affected_endpoints),
                },
                indent=2,
            )
        )

    def _create(self, options: dict[str, Any]) -> None:
        plan = _plan(options)
        author = user_named(options["user"])
        try:
            key = suit.load_private_key_pem(Path(options["key"]).read_bytes())
        except (OSError, suit.SUITError) as exc:
            raise CommandError(f"{options['key']}: {exc}", returncode=1) from exc
        use_before = (
            parse_time(options["expires"], "--expires")
            if options["expires"]
            else rollback.default_use_before()
        )
        envelope = suit.create_envelope(plan.params(use_before=use_before), keys=[key])
        manifest = release_services.manifest_import(envelope=envelope, created_by=author)
        name = options["name"] or f"rollback-{plan.bad_release.name}"[:200]
        release = release_services.release_create(
            manifest=manifest,
            name=name,
            kind="rollback",
            actor=author,
            notes=f"roll-forward from {plan.bad_release.name} to {plan.version}",
        )
        verdict = release_services.release_submit(release=release, actor=author)
        self.stdout.write(
            f"rollback release {release.name} (sequence {plan.sequence_number}, "
            f"counter {plan.security_counter}) submitted: {verdict.summary()}"
        )

    def _launch(self, options: dict[str, Any]) -> None:
        campaign, outcome, plan = rollback.rollback_launch(
            rollback_release=_release(options["release"]),
            bad_release=_release(options["from_release"]),
            actor=user_named(options["user"]),
            name=options["campaign"],
        )
        self.stdout.write(
            f"campaign {campaign.name}: {outcome}, {len(plan.affected_endpoints)} affected devices"
        )
