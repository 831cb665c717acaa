"""Run one LwM2M gateway process: ``manage.py lwm2m_gateway --bind HOST:PORT``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run the LwM2M/CoAP gateway (registrations, Object 5 control, firmware server)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=None, help="HOST:PORT (default: LWM2M_BIND)")
        parser.add_argument("--gateway-id", default=None, help="default: LWM2M_GATEWAY_ID")
        parser.add_argument("--public-uri", default=None, help="coap://host:port devices use")

    def handle(self, *args: Any, **options: Any) -> None:
        from workers.lwm2m.bus import bus_for_url, configured_bus_url
        from workers.lwm2m.gateway import Gateway, GatewayConfig

        config = GatewayConfig.from_settings(bind=options["bind"], gateway_id=options["gateway_id"])
        if options["public_uri"]:
            config.public_uri = options["public_uri"]
        bus_url = configured_bus_url()
        gateway = Gateway(config, bus=bus_for_url(bus_url))

        async def main() -> None:
            await gateway.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            bus_host = bus_url.split("@")[-1]  # never print credentials
            self.stdout.write(f"gateway {config.gateway_id} on {config.base_uri} (bus {bus_host})")
            await stop.wait()
            await gateway.stop()

        asyncio.run(main())
