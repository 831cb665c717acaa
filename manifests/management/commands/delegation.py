"""``manage.py delegation create|revoke|list``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests import services
from manifests.management.cli import (
    device_class_named,
    parse_time,
    service_errors,
    user_named,
)
from manifests.models import Delegation


class Command(BaseCommand):
    help = "Delegate approval authority for a scope, with its own threshold and expiry."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("create")
        p.add_argument("--user", required=True, help="the delegator")
        p.add_argument("--role", required=True)
        p.add_argument("--to", required=True, help="comma-separated delegatee usernames")
        p.add_argument("--threshold", type=int, default=1)
        p.add_argument("--expires", required=True, help="ISO 8601")
        p.add_argument(
            "--class",
            dest="classes",
            action="append",
            default=[],
            help="VENDOR_DOMAIN/CLASS (repeat); omit for every class",
        )
        p.add_argument("--group", dest="groups", action="append", default=None)
        p.add_argument("--parent", type=int, help="id of the delegation being sub-delegated")
        p = sub.add_parser("revoke")
        p.add_argument("id", type=int)
        p.add_argument("--reason", required=True)
        p.add_argument("--user", required=True)
        sub.add_parser("list")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            for d in Delegation.objects.select_related("delegator").prefetch_related("delegatees"):
                to = ",".join(sorted(u.get_username() for u in d.delegatees.all()))
                state = "revoked" if d.revoked_at else f"expires {d.expires_at.isoformat()}"
                classes = d.scope_device_classes or "all"
                self.stdout.write(
                    f"{d.pk:4} {d.delegator.get_username()} -> {to} {d.role} "
                    f"{d.threshold}-of-{d.delegatees.count()} classes {classes} "
                    f"groups {d.scope_groups or 'all'} parent {d.parent_id or '-'} {state}"
                )
            return
        if action == "revoke":
            delegation = Delegation.objects.filter(pk=options["id"]).first()
            if delegation is None:
                raise CommandError(f"no delegation {options['id']}", returncode=1)
            with service_errors():
                services.delegation_revoke(
                    delegation=delegation,
                    reason=options["reason"],
                    actor=user_named(options["user"]),
                )
            self.stdout.write(f"delegation {delegation.pk} revoked")
            return
        classes = []
        for item in options["classes"]:
            vendor, _, name = item.partition("/")
            classes.append(device_class_named(vendor, name))
        parent = None
        if options["parent"]:
            parent = Delegation.objects.filter(pk=options["parent"]).first()
            if parent is None:
                raise CommandError(f"no delegation {options['parent']}", returncode=1)
        with service_errors():
            delegation = services.delegation_create(
                delegator=user_named(options["user"]),
                role=options["role"],
                delegatees=[user_named(u.strip()) for u in options["to"].split(",") if u.strip()],
                threshold=options["threshold"],
                expires_at=parse_time(options["expires"], "--expires"),
                scope_device_classes=classes or None,
                scope_groups=options["groups"],
                parent=parent,
            )
        self.stdout.write(f"delegation {delegation.pk} created")
