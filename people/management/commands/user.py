"""``manage.py user add|list|disable|enable``: accounts without the admin site or a shell."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests.management.cli import service_errors, user_named
from people import selectors, services


class Command(BaseCommand):
    help = "Create, list, disable and enable user accounts (admin only; audited)."
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        add = sub.add_parser("add", help="create an account")
        add.add_argument("username")
        add.add_argument("--email", default="")
        add.add_argument(
            "--role",
            action="append",
            default=[],
            dest="roles",
            help="a role to grant (repeat for more)",
        )
        how = add.add_mutually_exclusive_group(required=True)
        how.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input",
        )
        how.add_argument(
            "--no-password",
            action="store_true",
            help="no local password (single sign-on only)",
        )
        add.add_argument(
            "--user",
            help="the admin acting (may be left out only for a server's first admin account)",
        )
        sub.add_parser("list", help="every account, its roles and how it signs in")
        for name in ("disable", "enable"):
            p = sub.add_parser(name)
            p.add_argument("username")
            p.add_argument("--user", required=True, help="the admin acting")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list()
            return
        actor = user_named(options["user"]) if options.get("user") else None
        if action == "add":
            password = None
            if options["password_stdin"]:
                stream = options.get("stdin") or sys.stdin
                password = stream.readline().rstrip("\r\n")
                if not password:
                    raise CommandError("no password on standard input", returncode=1)
            with service_errors():
                user = services.user_create(
                    username=options["username"],
                    email=options["email"],
                    roles=options["roles"],
                    password=password,
                    actor=actor,
                )
            roles = ", ".join(sorted(options["roles"])) or "no role"
            self.stdout.write(f"added {user.get_username()} ({roles})")
            return
        target = user_named(options["username"])
        assert actor is not None  # noqa: S101  (--user is required by the parser)
        with service_errors():
            if action == "disable":
                changed = services.user_disable(user=target, actor=actor)
            else:
                changed = services.user_enable(user=target, actor=actor)
        state = "disabled" if action == "disable" else "enabled"
        self.stdout.write(
            f"{target.get_username()}: {state}" + ("" if changed else f" (was already {state})")
        )

    def _list(self) -> None:
        rows = selectors.user_rows()
        self.stdout.write(f"{'USERNAME':20} {'ROLES':30} {'ACTIVE':6} {'SIGN-IN':9} LAST LOGIN")
        for row in rows:
            last = row.last_login.isoformat(timespec="seconds") if row.last_login else "never"
            self.stdout.write(
                f"{row.username:20} {', '.join(row.roles) or '-':30} "
                f"{'yes' if row.active else 'no':6} {row.sign_in:9} {last}"
            )
