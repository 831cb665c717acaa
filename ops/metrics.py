"""Prometheus metrics of the web process (``/metrics``): computed when scraped.

Nothing here is incremented by the web process itself: rollout counts come from one
``GROUP BY`` over live campaigns' rollouts, campaign counts from a second small one, and the
work done in Celery workers (dispatches, applied device events) and the queue lengths from one
Redis round trip (``ops.tallies``). A scrape therefore costs two queries and one pipeline,
whatever the fleet size. Label values are bounded: campaign names of campaigns not yet finished
(finished ones leave the rollout series), the states and statuses of the models.

The gateway is another process with its own registry and port (``workers.lwm2m.metrics``).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ops import tallies

FINISHED_CAMPAIGN_STATUSES = ("completed", "aborted")

# Every metric name the web process exports, for docs/operations.md and the alert-rule test.
WEB_METRICS = (
    "fwupd_rollouts",
    "fwupd_campaigns",
    "fwupd_dispatches_total",
    "fwupd_device_events_applied_total",
    "fwupd_device_event_lag_seconds",
    "fwupd_device_event_last_applied_timestamp_seconds",
    "fwupd_celery_queue_length",
    "fwupd_metrics_redis_up",
)


class FleetCollector(Collector):
    """Rollouts by state per campaign, campaigns by status, and the workers' tallies."""

    def collect(self) -> Iterator[Metric]:
        from campaigns.models import Campaign, Rollout, RolloutState

        rollouts = GaugeMetricFamily(
            "fwupd_rollouts",
            "Rollouts of each campaign not yet finished, by state",
            labels=["campaign", "state"],
        )
        counts: dict[str, dict[str, int]] = {}
        rows = (
            Rollout.objects.exclude(campaign__status__in=FINISHED_CAMPAIGN_STATUSES)
            .values_list("campaign__name", "state")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for campaign, state, n in rows:
            counts.setdefault(campaign, {})[state] = n
        for campaign in sorted(counts):
            for state in RolloutState.values:  # every state, zeros included: rates need them
                rollouts.add_metric([campaign, state], counts[campaign].get(state, 0))
        yield rollouts

        campaigns = GaugeMetricFamily("fwupd_campaigns", "Campaigns by status", labels=["status"])
        by_status = dict(Campaign.objects.values_list("status").annotate(n=Count("pk")).order_by())
        for status in sorted(set(by_status) | {"running", "paused"}):
            campaigns.add_metric([status], by_status.get(status, 0))
        yield campaigns

        yield from self._tallies()

    def _tallies(self) -> Iterator[Metric]:
        queues = list(settings.METRICS_CELERY_QUEUES)
        snap = tallies.snapshot(queues=queues)
        dispatches = CounterMetricFamily(
            "fwupd_dispatches",
            "Rollouts dispatched to devices (update commands written), by campaign",
            labels=["campaign"],
        )
        for campaign in sorted(snap.dispatches):
            dispatches.add_metric([campaign], snap.dispatches[campaign])
        yield dispatches
        yield CounterMetricFamily(
            "fwupd_device_events_applied",
            "Device events reported by gateways and applied by workers",
            value=snap.events_applied,
        )
        if snap.event_lag_seconds is not None:
            yield GaugeMetricFamily(
                "fwupd_device_event_lag_seconds",
                "Seconds between a gateway seeing the oldest event of the last applied batch "
                "and a worker applying it",
                value=snap.event_lag_seconds,
            )
        if snap.events_last_applied_at is not None:
            yield GaugeMetricFamily(
                "fwupd_device_event_last_applied_timestamp_seconds",
                "Unix time a worker last applied a batch of device events",
                value=snap.events_last_applied_at,
            )
        if snap.redis_ok is not None:
            yield GaugeMetricFamily(
                "fwupd_metrics_redis_up",
                "1 when the broker's Redis answered this scrape (tallies and queue lengths)",
                value=1 if snap.redis_ok else 0,
            )
        if snap.queue_lengths:
            lengths = GaugeMetricFamily(
                "fwupd_celery_queue_length",
                "Tasks waiting in each Celery queue (Redis LLEN)",
                labels=["queue"],
            )
            for queue, length in snap.queue_lengths.items():
                lengths.add_metric([queue], length)
            yield lengths


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(FleetCollector())


def render() -> bytes:
    return generate_latest(REGISTRY)


# --- who may scrape ---------------------------------------------------------------------------
class Refusal(Exception):
    """A scrape refused; ``status`` is 401 (no or wrong token) or 403 (not allowed at all)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_scraper(*, remote_addr: str, authorization: str) -> None:
    """Raise ``Refusal`` unless the scraper may read metrics. ``METRICS_TOKEN`` set: a matching
    ``Authorization: Bearer`` is required; ``METRICS_ALLOWED_NETWORKS`` set: the client address
    must be in one of them; both set: both. Neither set: metrics are off (403), so a deployment
    never publishes its fleet's numbers by accident."""
    token: str | None = settings.METRICS_TOKEN
    networks: list[Any] = list(settings.METRICS_ALLOWED_NETWORKS)
    if not token and not networks:
        raise Refusal(403, "metrics are off: set METRICS_TOKEN or METRICS_ALLOWED_NETWORKS")
    if networks:
        try:
            address: Any = ipaddress.ip_address(remote_addr)
        except ValueError:
            raise Refusal(403, "client address not allowed to read metrics") from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not any(address.version == n.version and address in n for n in networks):
            raise Refusal(403, "client address not allowed to read metrics")
    if token:
        offered = bearer_token(authorization)
        if offered is None:
            raise Refusal(401, "an Authorization: Bearer token is required")
        if not hmac.compare_digest(offered.encode(), token.encode()):
            raise Refusal(401, "wrong metrics token")
