"""A gateway and a simulated fleet running inside this process (the embedded default).

``make demo`` and the end-to-end tests use this to exercise the real paths: the aiocoap gateway
on loopback serving firmware from the database and image store, device events applied through
``device_events_task`` (eager without a broker), and simulated devices doing real block-wise
downloads, signature checks and reboots.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaigns.device_services import device_report_keys_register
from workers.lwm2m.bus import bus_for_url, configured_bus_url
from workers.lwm2m.gateway import (
    CeleryEventSink,
    DjangoFirmwareSource,
    Gateway,
    GatewayConfig,
    GatewayThread,
)
from workers.lwm2m.simulator import Faults, Fleet, FleetSpec

logger = logging.getLogger(__name__)


def _quiet_late_responses(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """aiocoap reports a response that arrives for an already-finished request (a simulated
    device's retransmission racing its own timeout) as an error in a callback; it is harmless
    and expected under load, so it is logged at debug level, everything else as usual."""
    if isinstance(context.get("exception"), asyncio.InvalidStateError):
        logger.debug("late CoAP response ignored: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


class _LateResponseFilter(logging.Filter):
    """Drops aiocoap's log record for the same harmless race (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.InvalidStateError)


# Filters apply where a record is made, not to records of child loggers: each one by name.
for _name in ("coap-server", "coap", "coap-server.blockwise-requester", "coap.blockwise-requester"):
    logging.getLogger(_name).addFilter(_LateResponseFilter())


@dataclass
class EmbeddedFleet:
    trust_anchors: list[Any]
    gateway_id: str = "gw-embedded"
    fw_poll_seconds: float = 0.3
    state_file: Path | None = None
    thread: GatewayThread | None = None
    fleet: Fleet | None = None
    specs: list[tuple[FleetSpec, Faults | None, dict[str, float] | None]] = field(
        default_factory=list
    )

    def add(
        self,
        spec: FleetSpec,
        *,
        faults: Faults | None = None,
        fault_rates: dict[str, float] | None = None,
    ) -> None:
        self.specs.append((spec, faults, fault_rates))

    def start(
        self,
        *,
        register_timeout: float = 60,
        register_concurrency: int = 200,
        request_timeout: float = 5,
    ) -> EmbeddedFleet:
        """Start the gateway, then the devices (``register_concurrency`` opening their sockets
        and registering at once), and wait until every device holds a registration."""
        gateway = Gateway(
            GatewayConfig(
                gateway_id=self.gateway_id,
                port=0,
                fw_poll_seconds=self.fw_poll_seconds,
                request_timeout=request_timeout,
                # Simulated devices are not in the registry until they register.
                admission="open",
            ),
            bus=bus_for_url(configured_bus_url()),
            sink=CeleryEventSink(),
            firmware=DjangoFirmwareSource(),
        )
        self.thread = GatewayThread(gateway)
        self.thread.loop.set_exception_handler(_quiet_late_responses)
        self.thread.start()
        self.fleet = Fleet(
            server_uri=gateway.config.base_uri,
            trust_anchors=self.trust_anchors,
            state_file=self.state_file,
        )
        for seed, (spec, faults, rates) in enumerate(self.specs):
            self.fleet.load_or_create(spec, faults=faults, fault_rates=rates, seed=seed)
        # Provisioning, as a factory does it: each SUIT device's report key is registered
        # with its endpoint before it ever connects.
        device_report_keys_register(keys=self.fleet.report_keys(), actor="simulator")
        self.thread.call(
            self.fleet.start(concurrency=register_concurrency), timeout=register_timeout
        )
        self.thread.call(self.fleet.wait_registered(register_timeout), timeout=register_timeout + 5)
        return self

    def set_faults(self, endpoints: Iterable[str], faults: Faults) -> None:
        if self.fleet is None:
            raise RuntimeError("the fleet is not started")
        for endpoint in endpoints:
            self.fleet.devices[endpoint].state.faults = faults

    def stop(self) -> None:
        if self.thread is not None and self.fleet is not None:
            self.thread.call(self.fleet.stop(deregister=False))
        if self.thread is not None:
            self.thread.stop()
