"""``manage.py device clock-trust ENDPOINT --user U [--withdraw]``: accept a device's clock.
``manage.py device provision ENDPOINT --user U [--psk-hex HEX | --psk-stdin]``: register a device
(and its DTLS key) before it first connects."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns import clock
from campaigns.device_services import (
    DeviceRegistryError,
    device_clock_trust,
    device_provision,
)
from campaigns.management.commands.campaign import refusals
from campaigns.psk import PSKError
from manifests.management.cli import user_named


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

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "provision":
            self._provision(options)
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
        with refusals():
            try:
                device = device_provision(
                    endpoint=options["endpoint"], actor=user_named(options["user"]), psk=psk
                )
            except (DeviceRegistryError, PSKError) as exc:
                raise CommandError(f"{exc} [{exc.code}]", returncode=1) from exc
        key = f"DTLS PSK set (identity {device.endpoint})" if psk is not None else "no DTLS key"
        self.stdout.write(f"device {device.endpoint} provisioned; {key}")
