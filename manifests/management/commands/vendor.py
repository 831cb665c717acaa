"""``manage.py vendor add|list``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from manifests import services
from manifests.management.cli import service_errors, user_named
from manifests.models import Vendor


class Command(BaseCommand):
    help = "Register (admin) and list vendors (vendor ID = UUIDv5 of the domain)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("add")
        p.add_argument("--name", required=True)
        p.add_argument("--domain", required=True)
        p.add_argument("--user", required=True, help="username of the acting admin")
        sub.add_parser("list")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "add":
            actor = user_named(options["user"])
            with service_errors():
                vendor = services.vendor_create(
                    name=options["name"], domain=options["domain"], actor=actor
                )
            self.stdout.write(f"vendor {vendor.domain} id {vendor.uuid}")
            return
        for vendor in Vendor.objects.all():
            self.stdout.write(f"{vendor.domain:30} {vendor.uuid} {vendor.name}")
