"""Run a simulated device fleet: ``manage.py simulate_fleet --devices N --class NAME``.

Vendor and class come from the registry (``--class`` is a DeviceClass name); the devices' trust
anchors are the active signing keys' public keys, as a vendor would provision them.

``--dtls``: each device gets a random PSK (kept in the state file, like a key in the device's
flash; identity = endpoint), provisioned on the server through ``device_psk_set``, and talks
to the gateway's DTLS listener (``--server coaps://...``, default from LWM2M_DTLS_BIND).

Each SUIT device gets its own report key (Ed25519, kept in the state file); its public key is
registered with the device on the server (``device_report_keys_register``), as provisioning would.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Simulate N LwM2M devices that update like SUIT processors on MCUboot."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--devices", type=int, default=10)
        parser.add_argument("--class", dest="class_name", required=True)
        parser.add_argument("--server", default=None, help="coap://host:port of the gateway")
        parser.add_argument("--state-file", default=None, help="JSON state (survives restarts)")
        parser.add_argument("--prefix", default="sim")
        parser.add_argument("--fw-version", dest="fw_version", default="1.0.0")
        parser.add_argument("--lifetime", type=int, default=300)
        parser.add_argument(
            "--queue-mode",
            action="store_true",
            help="devices register in queue mode (they sleep between registration updates)",
        )
        parser.add_argument(
            "--fault",
            action="append",
            default=[],
            help="fault for every device (download_drop, digest_mismatch, no_space, boot_fail, "
            "offline=SECONDS, slow_link=SECONDS, clock_skew=SECONDS, wrong_class); "
            "NAME@RATE draws it per device with that probability",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--dtls",
            action="store_true",
            help="per-device PSKs (provisioned as DevicePSK), register and download over coaps",
        )
        parser.add_argument("--duration", type=float, default=0, help="seconds; 0 = until ^C")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings

        from manifests import suit
        from manifests.models import DeviceClass, KeyStatus, SigningKey
        from manifests.selectors import current_trust_policy
        from workers.lwm2m.simulator import Faults, Fleet, FleetSpec

        device_class = (
            DeviceClass.objects.select_related("vendor")
            .filter(name=options["class_name"])
            .order_by("pk")
            .first()
        )
        if device_class is None:
            raise CommandError(f"no device class named {options['class_name']!r}")
        anchors = [
            suit.load_public_key_pem(k.public_key_pem.encode())
            for k in SigningKey.objects.filter(status=KeyStatus.ACTIVE).order_by("pk")
        ]
        fixed, rates = [], {}
        for spec in options["fault"]:
            name, at, rate = spec.partition("@")
            if at:
                rates[name] = float(rate)
            else:
                fixed.append(name)
        try:
            faults = Faults.parse(fixed)
            for name in rates:
                Faults.parse([name])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["dtls"]:
            server = options["server"] or (
                f"coaps://{settings.LWM2M_DTLS_BIND}" if settings.LWM2M_DTLS_BIND else None
            )
            if server is None or not server.startswith("coaps://"):
                raise CommandError("--dtls needs --server coaps://HOST:PORT or LWM2M_DTLS_BIND")
        else:
            server = (
                options["server"] or f"coap://127.0.0.1:{settings.LWM2M_BIND.rpartition(':')[2]}"
            )
        state_file = Path(
            options["state_file"] or Path(settings.VAR_DIR) / f"fleet-{options['prefix']}.json"
        )
        state_file.parent.mkdir(parents=True, exist_ok=True)
        fleet = Fleet(server_uri=server, trust_anchors=anchors, state_file=state_file)
        # New devices are provisioned, as at manufacture, with the class's released trust policy.
        policy = current_trust_policy(device_class)
        fleet.load_or_create(
            FleetSpec(
                count=options["devices"],
                manufacturer=device_class.vendor.name,
                model=device_class.name,
                vendor_id=str(device_class.vendor.uuid),
                class_id=str(device_class.uuid),
                prefix=options["prefix"],
                version=options["fw_version"],
                lifetime=options["lifetime"],
                payload_format=device_class.payload_format,
                manifest_profile=device_class.manifest_profile,
                component_id=list(device_class.component_id) or ["00"],
                dtls=options["dtls"],
                queue_mode=options["queue_mode"],
                trust_policy=bytes(policy.document).hex() if policy and policy.document else "",
            ),
            faults=faults,
            fault_rates=rates,
            seed=options["seed"],
        )
        from campaigns.device_services import device_report_keys_register

        report_keys = fleet.report_keys()
        device_report_keys_register(keys=report_keys, actor="simulate_fleet")
        self.stdout.write(f"{len(report_keys)} SUIT report keys registered")
        if options["dtls"]:
            from campaigns.device_services import device_psk_set

            psks = fleet.psks()
            for endpoint, key in psks.items():
                device_psk_set(endpoint=endpoint, key=key)
            self.stdout.write(f"{len(psks)} DTLS PSKs provisioned (identity = endpoint)")

        async def main() -> None:
            await fleet.start()
            self.stdout.write(f"{len(fleet.devices)} devices started against {server}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            if options["duration"]:
                loop.call_later(options["duration"], stop.set)
            await stop.wait()
            await fleet.stop()
            self.stdout.write(f"state saved to {state_file}")

        asyncio.run(main())
