"""``manage.py devclass add|set|list``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests import services
from manifests.management.cli import device_class_named, service_errors, user_named, vendor_named
from manifests.models import (
    DeliveryMethod,
    DeliveryProfile,
    DeltaCompression,
    DeltaPatchType,
    DeviceClass,
    ManifestProfile,
    PayloadFormat,
)


class Command(BaseCommand):
    help = (
        "Register (admin) and list device classes (class ID = UUIDv5 of vendor ID and name); "
        "set how a class's devices take firmware (delivery profile, pull/push) and which SUIT "
        "envelopes they take (manifest profile)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("add")
        p.add_argument("--vendor-domain", required=True)
        p.add_argument("--name", required=True)
        p.add_argument("--component", default="00", help="fixed component id, hex")
        p.add_argument("--payload-format", choices=PayloadFormat.values, default="mcuboot")
        p.add_argument(
            "--delivery",
            choices=DeliveryProfile.values,
            default=DeliveryProfile.IMAGE.value,
            help="what the Package URI names: the image (default), the SUIT envelope, or the "
            "envelope with the payload integrated",
        )
        p.add_argument(
            "--method",
            choices=DeliveryMethod.values,
            default=DeliveryMethod.AUTO.value,
            help="pull or push; auto (default) decides per device from /5/0/9 and /5/0/8",
        )
        p.add_argument(
            "--manifest-profile",
            choices=ManifestProfile.values,
            default=ManifestProfile.EXTENDED.value,
            help="standard: no custom SUIT keys (stock SUIT processors); extended (default): "
            "custom security counter and payload format",
        )
        p.add_argument("--description", default="")
        p.add_argument("--user", required=True, help="username of the acting admin")
        p = sub.add_parser(
            "set", help="change a class's delivery profile and/or manifest profile (admin)"
        )
        p.add_argument("--vendor-domain", required=True)
        p.add_argument("--name", required=True)
        p.add_argument("--delivery", choices=DeliveryProfile.values)
        p.add_argument(
            "--method", choices=DeliveryMethod.values, help="pull/push/auto (default: unchanged)"
        )
        p.add_argument("--manifest-profile", choices=ManifestProfile.values)
        p.add_argument(
            "--delta",
            choices=["on", "off"],
            help="whether the class's devices apply detools deltas (default: unchanged)",
        )
        p.add_argument("--delta-compression", choices=DeltaCompression.values)
        p.add_argument("--delta-patch-type", choices=DeltaPatchType.values)
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
                    delivery=options["delivery"],
                    delivery_method=options["method"],
                    manifest_profile=options["manifest_profile"],
                    description=options["description"],
                    actor=actor,
                )
            self.stdout.write(
                f"device class {device_class} id {device_class.uuid} "
                f"delivery {device_class.delivery} ({device_class.delivery_method}) "
                f"manifest profile {device_class.manifest_profile}"
            )
            return
        if options["action"] == "set":
            if not (
                options["delivery"]
                or options["method"]
                or options["manifest_profile"]
                or options["delta"]
                or options["delta_compression"]
                or options["delta_patch_type"]
            ):
                raise CommandError(
                    "give --delivery, --method, --manifest-profile, --delta, "
                    "--delta-compression and/or --delta-patch-type"
                )
            actor = user_named(options["user"])
            device_class = device_class_named(options["vendor_domain"], options["name"])
            with service_errors():
                device_class = services.device_class_update(
                    device_class=device_class,
                    delivery=options["delivery"],
                    delivery_method=options["method"],
                    manifest_profile=options["manifest_profile"],
                    delta_updates=None if options["delta"] is None else options["delta"] == "on",
                    delta_compression=options["delta_compression"],
                    delta_patch_type=options["delta_patch_type"],
                    actor=actor,
                )
            self.stdout.write(
                f"device class {device_class} delivery {device_class.delivery} "
                f"({device_class.delivery_method}) manifest profile {device_class.manifest_profile}"
                f" deltas {'on' if device_class.delta_updates else 'off'}"
                f" ({device_class.delta_compression}, {device_class.delta_patch_type})"
            )
            return
        for device_class in DeviceClass.objects.select_related("vendor"):
            self.stdout.write(
                f"{device_class!s:40} {device_class.uuid} {device_class.payload_format} "
                f"{device_class.delivery} {device_class.delivery_method} "
                f"{device_class.manifest_profile}"
            )
