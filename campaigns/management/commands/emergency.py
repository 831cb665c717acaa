"""``manage.py emergency stop|lift|list``: halt dispatching now, globally or in a scope."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns import services
from campaigns.management.commands.campaign import refusals
from campaigns.models import EmergencyStop
from manifests.management.cli import device_class_named, user_named
from manifests.models import Release


class Command(BaseCommand):
    help = "Emergency stop: halt all dispatching (or one release / device class) at once."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("stop")
        p.add_argument("--reason", required=True)
        p.add_argument("--user", required=True)
        scope = p.add_mutually_exclusive_group()
        scope.add_argument("--release", help="stop only this release's campaigns")
        scope.add_argument("--class", dest="device_class", help="VENDOR_DOMAIN/CLASS")
        p = sub.add_parser("lift")
        p.add_argument("id", type=int)
        p.add_argument("--user", required=True)
        sub.add_parser("list")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        with refusals():
            if action == "stop":
                release = device_class = None
                if options["release"]:
                    release = Release.objects.filter(name=options["release"]).first()
                    if release is None:
                        raise CommandError(f"no release {options['release']!r}", returncode=1)
                if options["device_class"]:
                    vendor, _, name = options["device_class"].partition("/")
                    device_class = device_class_named(vendor, name)
                stop = services.emergency_stop(
                    actor=user_named(options["user"]),
                    reason=options["reason"],
                    release=release,
                    device_class=device_class,
                )
                self.stdout.write(f"EMERGENCY STOP {stop.pk} active ({stop.scope})")
            elif action == "lift":
                stop = EmergencyStop.objects.filter(pk=options["id"]).first()
                if stop is None:
                    raise CommandError(f"no emergency stop {options['id']}", returncode=1)
                services.emergency_lift(stop=stop, actor=user_named(options["user"]))
                self.stdout.write(f"emergency stop {stop.pk} lifted")
            else:
                for stop in EmergencyStop.objects.order_by("-created_at"):
                    state = (
                        f"lifted {stop.lifted_at:%Y-%m-%d %H:%M}" if stop.lifted_at else "ACTIVE"
                    )
                    self.stdout.write(f"{stop.pk:4} {stop.scope:12} {state:24} {stop.reason}")
