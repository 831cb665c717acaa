"""The gateway's own Prometheus metrics, served on ``lwm2m_gateway --metrics-port``.

A gateway is a process of its own (not behind the web tier's ``/metrics``), so it has its own
registry and HTTP listener (``prometheus_client.start_http_server``). Nothing is incremented for
the metrics' sake: the collector reads, when scraped, the counters the gateway already keeps for
its health resource (``Gateway.stats``, the refusal counters, the DTLS listener's handshake
outcomes). Every sample carries the gateway's id as a label.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

GATEWAY_METRICS = (
    "fwupd_gateway_registrations_total",
    "fwupd_gateway_registration_updates_total",
    "fwupd_gateway_registered_devices",
    "fwupd_gateway_refused_total",
    "fwupd_gateway_commands_total",
    "fwupd_gateway_datagrams_received_total",
    "fwupd_gateway_dtls_handshakes_total",
    "fwupd_gateway_dtls_sessions",
)
HANDSHAKE_RESULTS = ("completed", "failed", "dropped")


class GatewayCollector(Collector):
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        gid = str(gw.config.gateway_id)
        stats = dict(gw.stats)

        def counter(name: str, doc: str, value: float) -> Metric:
            family = CounterMetricFamily(name, doc, labels=["gateway"])
            family.add_metric([gid], value)
            return family

        def gauge(name: str, doc: str, value: float) -> Metric:
            family = GaugeMetricFamily(name, doc, labels=["gateway"])
            family.add_metric([gid], value)
            return family

        yield counter(
            "fwupd_gateway_registrations",
            "LwM2M Register requests accepted",
            stats.get("registrations", 0),
        )
        yield counter(
            "fwupd_gateway_registration_updates",
            "LwM2M registration Update requests accepted",
            stats.get("updates", 0),
        )
        yield gauge(
            "fwupd_gateway_registered_devices",
            "Registrations this gateway holds now",
            len(gw.by_id),
        )
        refused = CounterMetricFamily(
            "fwupd_gateway_refused",
            "Requests and datagrams refused, by error code",
            labels=["gateway", "code"],
        )
        for code, n in sorted(dict(gw.guard.counts).items()):
            refused.add_metric([gid, str(code)], n)
        yield refused
        yield counter(
            "fwupd_gateway_commands",
            "Commands (reads, firmware updates) received from the command bus",
            stats.get("commands", 0),
        )
        yield counter(
            "fwupd_gateway_datagrams_received",
            "CoAP datagrams read from the plain-CoAP socket",
            gw.guard.received,
        )
        listener = getattr(gw, "dtls", None)
        if listener is not None:
            outcomes = listener.handshakes
            handshakes = CounterMetricFamily(
                "fwupd_gateway_dtls_handshakes",
                "DTLS handshakes by outcome: completed, failed (an alert ended it), dropped "
                "(timed out, evicted or cut by shutdown)",
                labels=["gateway", "result"],
            )
            for result in HANDSHAKE_RESULTS:
                handshakes.add_metric([gid, result], outcomes.get(result, 0))
            yield handshakes
            yield gauge(
                "fwupd_gateway_dtls_sessions",
                "DTLS sessions open (and handshakes in progress)",
                len(listener.sessions),
            )


def gateway_registry(gateway: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    return registry


def serve(gateway: Any, *, port: int, addr: str) -> tuple[Any, threading.Thread]:
    """Serve the gateway's metrics at http://addr:port/metrics from a daemon thread."""
    server, thread = start_http_server(port, addr=addr, registry=gateway_registry(gateway))
    return server, thread
