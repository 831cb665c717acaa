"""``manage.py role grant|revoke|list``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from manifests import services
from manifests.management.cli import service_errors, user_named
from manifests.models import Role, RoleAssignment


class Command(BaseCommand):
    help = "Grant and revoke roles (admin only); list who holds what."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        for name in ("grant", "revoke"):
            p = sub.add_parser(name)
            p.add_argument("username")
            p.add_argument("role", choices=Role.values)
            p.add_argument("--user", required=True, help="the admin acting")
        sub.add_parser("list")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            rows = RoleAssignment.objects.filter(revoked_at__isnull=True).select_related("user")
            for row in rows.order_by("user__username", "role"):
                self.stdout.write(f"{row.user.get_username():20} {row.role}")
            return
        target, actor = user_named(options["username"]), user_named(options["user"])
        with service_errors():
            if action == "grant":
                services.role_grant(user=target, role=options["role"], actor=actor)
            else:
                services.role_revoke(user=target, role=options["role"], actor=actor)
        self.stdout.write(f"{action} {options['role']} for {target.get_username()}: done")
