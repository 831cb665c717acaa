"""``manage.py device clock-trust ENDPOINT --user U [--withdraw]``: accept a device's clock.
``manage.py device provision ENDPOINT --user U [--psk-hex HEX | --psk-stdin] [--report-key PEM]``:
register a device (its DTLS key, its SUIT report key) before it first connects.
``manage.py device import FILE --user U``: provision devices from CSV, all or nothing.
``manage.py device tag [ENDPOINT ...] [filter] --user U --add/--remove/--set TAGS | --clear``:
change the tags of devices named or selected by a filter (class, version, tag, state, online).
``manage.py device group list|show NAME|create NAME ...|delete NAME --user U``: saved groups."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns import clock, fleet_services
from campaigns.device_services import (
    DeviceRegistryError,
    device_clock_trust,
    device_provision,
)
from campaigns.fleet import (
    FW_STATES,
    DeviceFilter,
    FleetError,
    ImportRejectedError,
    TagChange,
    split_tags,
)
from campaigns.fleet_selectors import group_devices, group_named, groups_with_counts
from campaigns.management.commands.campaign import refusals
from campaigns.psk import PSKError
from manifests.management.cli import user_named


def _filter_options(parser: CommandParser) -> None:
    parser.add_argument("--class", dest="device_class", help="vendor-domain/class-name")
    parser.add_argument("--version", help="installed firmware version (exact)")
    parser.add_argument("--tag", help="devices carrying this tag")
    parser.add_argument("--state", choices=sorted(FW_STATES), help="LwM2M /5/0/3 state")
    online = parser.add_mutually_exclusive_group()
    online.add_argument("--online", dest="online", action="store_const", const=True)
    online.add_argument("--offline", dest="online", action="store_const", const=False)


def _filter_from(options: dict[str, Any]) -> DeviceFilter | None:
    values = {k: options.get(k) for k in ("device_class", "version", "tag", "state", "online")}
    if all(v is None for v in values.values()):
        return None
    return DeviceFilter.parse(values)


def _tags(values: list[str] | None) -> list[str]:
    return [t for value in values or [] for t in split_tags(value)]


class Command(BaseCommand):
    help = "Operator actions on one device of the registry."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser(
            "clock-trust",
            help="dispatch this device although its clock is off (the server's use-before "
            "check still applies); --withdraw to hold it again",
        )
        p.add_argument("endpoint")
        p.add_argument("--user", required=True)
        p.add_argument("--withdraw", action="store_true")
        p = sub.add_parser(
            "provision",
            help="register a device before it first connects (what provisioned admission lets "
            "in), with its DTLS PSK (identity = endpoint); again to rotate the key",
        )
        p.add_argument("endpoint")
        p.add_argument("--user", required=True)
        key = p.add_mutually_exclusive_group()
        key.add_argument("--psk-hex", help="the PSK in hex (visible in the process list)")
        key.add_argument(
            "--psk-stdin", action="store_true", help="read the PSK in hex from standard input"
        )
        p.add_argument(
            "--report-key",
            metavar="PEM_FILE",
            help="the public key (PEM, Ed25519 or P-256) the device signs its SUIT reports "
            "with; a device of a SUIT class is not updated without one",
        )

        p = sub.add_parser(
            "import",
            help="provision devices from a CSV file (endpoint, class, tags, psk_identity, "
            "psk_key); all or nothing, every bad row reported",
        )
        p.add_argument("file", help="the CSV file, or - for standard input")
        p.add_argument("--user", required=True)
        p = sub.add_parser(
            "tag",
            help="add, remove or replace the tags of the devices named, or of those a filter "
            "selects (one audit event for all of them)",
        )
        p.add_argument("endpoints", nargs="*", help="devices by endpoint (or give a filter)")
        p.add_argument("--user", required=True)
        p.add_argument("--add", action="append", help="tags to add (spaces or ; between)")
        p.add_argument("--remove", action="append", help="tags to remove")
        p.add_argument("--set", action="append", help="replace all tags with these")
        p.add_argument("--clear", action="store_true", help="remove every tag")
        _filter_options(p)
        p = sub.add_parser("group", help="saved device groups (campaign targets)")
        groups = p.add_subparsers(dest="group_action", required=True, parser_class=CommandParser)
        groups.add_parser("list", help="every group with its current member count")
        g = groups.add_parser("show", help="a group's definition and current members")
        g.add_argument("name")
        g = groups.add_parser(
            "create", help="a static group (--endpoints) or a saved filter (filter options)"
        )
        g.add_argument("name")
        g.add_argument("--user", required=True)
        g.add_argument("--description", default="")
        g.add_argument("--endpoints", help="comma-separated endpoints of a static group")
        _filter_options(g)
        g = groups.add_parser("delete", help="delete a group (campaigns keep their members)")
        g.add_argument("name")
        g.add_argument("--user", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "provision":
            self._provision(options)
            return
        if action in ("import", "tag", "group"):
            with refusals():
                try:
                    getattr(self, f"_{action}")(options)
                except ImportRejectedError as exc:
                    for error in exc.errors:
                        self.stderr.write(str(error))
                    raise CommandError(f"{exc} [{exc.code}]", returncode=1) from exc
                except FleetError as exc:
                    raise CommandError(f"{exc} [{exc.code}]", returncode=1) from exc
            return
        with refusals():
            try:
                device = device_clock_trust(
                    endpoint=options["endpoint"],
                    actor=user_named(options["user"]),
                    trusted=not options["withdraw"],
                )
            except DeviceRegistryError as exc:
                raise CommandError(f"{exc} [{exc.code}]", returncode=1) from exc
        if device.clock_offset_seconds is None:
            reading = "no clock reading"
        elif device.device_time is not None and device.device_time < clock.CLOCKLESS_BEFORE:
            reading = "no clock (reports a time before 2001)"
        else:
            reading = f"clock {clock.describe_offset(device.clock_offset_seconds)}"
            if device.device_time is not None:
                reading += f" (reports {clock.format_reported(device.device_time)})"
        state = "accepted" if device.clock_trusted_at else "not accepted: held while off"
        self.stdout.write(f"device {device.endpoint}: {reading}; clock {state}")

    def _provision(self, options: dict[str, Any]) -> None:
        text = sys.stdin.readline() if options["psk_stdin"] else options["psk_hex"]
        psk = None
        if text is not None:
            try:
                psk = bytes.fromhex(text.strip())
            except ValueError:
                raise CommandError("the PSK must be hexadecimal", returncode=1) from None
        report_key = None
        if options.get("report_key"):
            try:
                with open(options["report_key"], encoding="ascii") as f:
                    report_key = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(
                    f"cannot read {options['report_key']}: {exc}", returncode=1
                ) from None
        with refusals():
            try:
                device = device_provision(
                    endpoint=options["endpoint"],
                    actor=user_named(options["user"]),
                    psk=psk,
                    report_key=report_key,
                )
            except (DeviceRegistryError, PSKError) as exc:
                raise CommandError(f"{exc} [{exc.code}]", returncode=1) from exc
        key = f"DTLS PSK set (identity {device.endpoint})" if psk is not None else "no DTLS key"
        report = "SUIT report key set" if report_key is not None else "no SUIT report key"
        self.stdout.write(f"device {device.endpoint} provisioned; {key}; {report}")

    def _import(self, options: dict[str, Any]) -> None:
        name = options["file"]
        if name == "-":
            data: bytes = sys.stdin.buffer.read()
        else:
            try:
                with open(name, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise CommandError(f"cannot read {name}: {exc.strerror}", returncode=1) from None
        result = fleet_services.devices_import(
            actor=user_named(options["user"]), data=data, source=name
        )
        self.stdout.write(
            f"imported {result.created} device(s) from {name}; {result.with_psk} with a DTLS PSK"
        )

    def _tag(self, options: dict[str, Any]) -> None:
        replace = _tags(options["set"]) if options["set"] or options["clear"] else None
        if options["clear"] and options["set"]:
            raise CommandError("--clear or --set, not both", returncode=1)
        change = TagChange.build(
            add=_tags(options["add"]), remove=_tags(options["remove"]), replace=replace
        )
        device_filter = _filter_from(options)
        endpoints = options["endpoints"] or None
        if endpoints and device_filter:
            raise CommandError("name devices or give a filter, not both", returncode=1)
        if not endpoints and not device_filter:
            raise CommandError(
                "name devices, or select them with --class/--version/--tag/--state/"
                "--online/--offline",
                returncode=1,
            )
        result = fleet_services.device_tags_change(
            actor=user_named(options["user"]),
            change=change,
            endpoints=endpoints,
            device_filter=device_filter,
        )
        self.stdout.write(
            f"{result.matched} device(s) selected, {result.changed} changed "
            f"({' '.join(f'{k}={v}' for k, v in change.as_dict().items())})"
        )

    def _group(self, options: dict[str, Any]) -> None:
        action = options["group_action"]
        if action == "list":
            for group, count in groups_with_counts():
                how = (
                    "static"
                    if group.kind == "static"
                    else f"filter {DeviceFilter.parse(group.filter)}"
                )
                self.stdout.write(f"{group.name}: {count} device(s), {how}")
            return
        if action == "show":
            group = group_named(options["name"])
            endpoints = list(
                group_devices(group).order_by("endpoint").values_list("endpoint", flat=True)
            )
            how = (
                "static list"
                if group.kind == "static"
                else f"filter {DeviceFilter.parse(group.filter)}"
            )
            self.stdout.write(f"group {group.name}: {how}; {len(endpoints)} device(s) now")
            if group.description:
                self.stdout.write(group.description)
            for endpoint in endpoints:
                self.stdout.write(f"  {endpoint}")
            return
        actor = user_named(options["user"])
        if action == "delete":
            fleet_services.device_group_delete(actor=actor, name=options["name"])
            self.stdout.write(f"group {options['name']} deleted")
            return
        device_filter = _filter_from(options)
        endpoints = None
        if options["endpoints"] is not None:
            if device_filter is not None:
                raise CommandError("--endpoints or a filter, not both", returncode=1)
            endpoints = [e.strip() for e in options["endpoints"].split(",") if e.strip()]
        group = fleet_services.device_group_create(
            actor=actor,
            name=options["name"],
            description=options["description"],
            endpoints=endpoints,
            device_filter=device_filter,
        )
        self.stdout.write(f"group {group.name} created ({group.get_kind_display().lower()})")
