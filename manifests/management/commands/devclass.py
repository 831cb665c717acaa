"""``manage.py devclass add|list``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from manifests import services
from manifests.management.cli import service_errors, user_named, vendor_named
from manifests.models import DeviceClass, PayloadFormat


class Command(BaseCommand):
    help = "Register (admin) and list device classes (class ID = UUIDv5 of vendor ID and name)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("add")
        p.add_argument("--vendor-domain", required=True)
        p.add_argument("--name", required=True)
        p.add_argument("--component", default="00", help="fixed component id, hex")
        p.add_argument("--payload-format", choices=PayloadFormat.values, default="mcuboot")
        p.add_argument("--description", default="")
        p.add_argument("--user", required=True, help="username of the acting admin")
        sub.add_parser("list")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "add":
            actor = user_named(options["user"])
            vendor = vendor_named(options["vendor_domain"])
            with service_errors():
                device_class = services.device_class_create(
                    vendor=vendor,
                    name=options["name"],
                    component_id=[options["component"]],
                    payload_format=options["payload_format"],
                    description=options["description"],
                    actor=actor,
                )
            self.stdout.write(f"device class {device_class} id {device_class.uuid}")
            return
        for device_class in DeviceClass.objects.select_related("vendor"):
            self.stdout.write(
                f"{device_class!s:40} {device_class.uuid} {device_class.payload_format}"
            )
