"""Run one LwM2M gateway process: ``manage.py lwm2m_gateway --bind HOST:PORT``.

``--reuse-port`` joins the gateways sharing that port (SO_REUSEPORT group: docs/deploy.md).
``--dtls-bind HOST:PORT`` adds a DTLS (PSK) listener; ``--refuse-nosec`` accepts DTLS
registrations only (docs/lwm2m.md, "DTLS"); ``--metrics-port PORT`` serves the gateway's
Prometheus metrics (registrations, DTLS handshakes, refusals: docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Run the LwM2M/CoAP gateway (registrations, Object 5 control, firmware server)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=None, help="HOST:PORT (default: LWM2M_BIND)")
        parser.add_argument("--gateway-id", default=None, help="default: LWM2M_GATEWAY_ID")
        parser.add_argument("--public-uri", default=None, help="coap://host:port devices use")
        parser.add_argument(
            "--dtls-bind",
            default=None,
            help="HOST:PORT of the DTLS (PSK) listener, a specific address (default: "
            "LWM2M_DTLS_BIND; unset: no DTLS)",
        )
        parser.add_argument(
            "--dtls-public-uri", default=None, help="coaps://host:port devices use for DTLS"
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="serve Prometheus metrics on this TCP port (docs/operations.md; default: none)",
        )
        parser.add_argument(
            "--metrics-addr",
            default="127.0.0.1",
            help="address the metrics port listens on (default 127.0.0.1; 0.0.0.0 to be "
            "scraped from other hosts)",
        )
        parser.add_argument(
            "--reuse-port",
            action="store_true",
            help="share --bind's port with the other gateway processes started with this flag "
            "(SO_REUSEPORT: the kernel spreads devices over them by source address; "
            "docs/deploy.md); without it the port must be free",
        )
        parser.add_argument(
            "--refuse-nosec",
            action="store_true",
            help="refuse plain-CoAP registrations (default: LWM2M_ACCEPT_NOSEC)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from workers.lwm2m.bus import bus_for_url, configured_bus_url
        from workers.lwm2m.dtls import DTLSUnavailableError, dtls_missing
        from workers.lwm2m.gateway import Gateway, GatewayConfig
        from workers.lwm2m.ports import PortInUseError

        try:
            config = GatewayConfig.from_settings(
                bind=options["bind"],
                gateway_id=options["gateway_id"],
                dtls_bind=options["dtls_bind"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["public_uri"]:
            config.public_uri = options["public_uri"]
        if options["dtls_public_uri"]:
            config.dtls_public_uri = options["dtls_public_uri"]
        if options["reuse_port"]:
            config.reuse_port = True
        if options["refuse_nosec"]:
            config.accept_nosec = False
        if config.dtls_host is not None and dtls_missing():
            raise CommandError(f"DTLS listener requested but unavailable: {dtls_missing()}")
        if not config.accept_nosec and config.dtls_host is None:
            raise CommandError("NoSec refused but no DTLS listener: no device could register")
        bus_url = configured_bus_url()
        gateway = Gateway(config, bus=bus_for_url(bus_url))

        async def main() -> None:
            try:
                await gateway.start()
            except (DTLSUnavailableError, PortInUseError) as exc:
                await gateway.stop()
                raise CommandError(str(exc)) from None
            if options["metrics_port"] is not None:
                from workers.lwm2m import metrics

                try:
                    server, _thread = metrics.serve(
                        gateway, port=options["metrics_port"], addr=options["metrics_addr"]
                    )
                except OSError as exc:
                    await gateway.stop()
                    raise CommandError(f"metrics port: {exc}") from None
                host, port = server.server_address[:2]
                self.stdout.write(f"metrics on http://{host}:{port}/metrics")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            bus_host = bus_url.split("@")[-1]  # never print credentials
            dtls = f" and {config.dtls_base_uri}" if config.dtls_base_uri else ""
            nosec = "NoSec ACCEPTED" if config.accept_nosec else "NoSec refused"
            self.stdout.write(
                f"gateway {config.gateway_id} on {config.base_uri}{dtls} (bus {bus_host}; "
                f"admission {config.admission}; {nosec})"
            )
            await stop.wait()
            await gateway.stop()

        asyncio.run(main())
