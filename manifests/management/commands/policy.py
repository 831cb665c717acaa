"""``manage.py policy set|show``: per-role approval thresholds."""

from __future__ import annotations

import json
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests import services
from manifests.management.cli import device_class_named, service_errors, user_named
from manifests.models import DeviceClass, PolicyKind, ReleasePolicy
from manifests.services.facts import BUILTIN_POLICIES


def _rules(text: str) -> dict[str, Any]:
    """``{qa: 1, security: 2}`` (YAML flow or JSON) or ``qa=1,security=2``."""
    if "=" in text and "{" not in text:
        rules: dict[str, Any] = {}
        for part in text.split(","):
            role, _, number = part.partition("=")
            try:
                rules[role.strip()] = int(number)
            except ValueError:
                raise CommandError(
                    f"threshold {number!r} for {role!r} is not a number", returncode=1
                ) from None
        return rules
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CommandError(f"policy is not valid YAML/JSON: {exc}", returncode=1) from exc
    if not isinstance(value, dict):
        raise CommandError("policy must be a mapping of role to threshold", returncode=1)
    return value


class Command(BaseCommand):
    help = "Set or show release / incident approval policies (per device class or default)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("set")
        p.add_argument("rules", help="e.g. '{author: 1, qa: 1, security: 1}' or qa=1,security=1")
        p.add_argument("--kind", choices=PolicyKind.values, default="normal")
        p.add_argument("--vendor-domain")
        p.add_argument("--class", dest="class_name", help="omit for the global default")
        p.add_argument("--user", required=True, help="admin performing the change")
        p = sub.add_parser("show")
        p.add_argument("--vendor-domain")
        p.add_argument("--class", dest="class_name")

    def handle(self, *args: Any, **options: Any) -> None:
        device_class = None
        if options["class_name"]:
            if not options["vendor_domain"]:
                raise CommandError("--class needs --vendor-domain", returncode=1)
            device_class = device_class_named(options["vendor_domain"], options["class_name"])
        if options["action"] == "set":
            with service_errors():
                policy = services.policy_set(
                    device_class=device_class,
                    kind=options["kind"],
                    rules=_rules(options["rules"]),
                    actor=user_named(options["user"]),
                )
            self.stdout.write(f"set {policy}")
            return
        classes = [device_class] if device_class else list(DeviceClass.objects.all())
        for kind in PolicyKind.values:
            self.stdout.write(self._line(None, kind))
            for cls in classes:
                self.stdout.write(self._line(cls, kind))

    @staticmethod
    def _line(device_class: DeviceClass | None, kind: str) -> str:
        if device_class is None:
            row = ReleasePolicy.objects.filter(device_class__isnull=True, kind=kind).first()
            rules, source = (row.rules, "default") if row else (BUILTIN_POLICIES[kind], "built-in")
            return f"{kind:9} {'(default)':30} {json.dumps(rules, sort_keys=True)} [{source}]"
        rules, source = services.policy_for(device_class, kind)
        return f"{kind:9} {device_class!s:30} {json.dumps(rules, sort_keys=True)} [{source}]"
