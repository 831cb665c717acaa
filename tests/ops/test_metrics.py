"""/metrics: who may scrape it, and what it says (rollouts by state per campaign in one GROUP BY,
campaigns by status, dispatches and applied device events counted by the workers, event lag,
queue lengths), with real PostgreSQL and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from campaigns import engine, services
from campaigns.models import CampaignStatus, Rollout, RolloutState
from config.env import envopt
from ops import metrics, tallies
from tests.campaigns.support import Catalog, apply, build_catalog, make_devices, spec_text
from workers.tasks import device_events_task

TOKEN = "s3cret-metrics-token-0123456789"


@pytest.fixture(autouse=True)
def _metrics_off(settings: Any) -> Iterator[None]:
    settings.METRICS_TOKEN = None
    settings.METRICS_ALLOWED_NETWORKS = []
    yield


@pytest.fixture
def catalog(db: None, django_user_model: Any) -> Catalog:
    return build_catalog(django_user_model)


def scrape(**headers: Any) -> Any:
    return Client().get("/metrics", **headers)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


# --- who may scrape ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_metrics_are_off_until_a_token_or_network_is_configured() -> None:
    response = scrape()
    assert response.status_code == 403
    assert "METRICS_TOKEN" in response.json()["error"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("authorization", "why"),
    [
        (None, "required"),
        ("Bearer wrong-token", "wrong"),
        (f"Basic {TOKEN}", "required"),
        ("Bearer ", "required"),
    ],
)
def test_scrape_without_the_right_bearer_token_is_refused(
    settings: Any, authorization: str | None, why: str
) -> None:
    settings.METRICS_TOKEN = TOKEN
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = scrape(**headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert why in response.json()["error"]
    assert b"fwupd_" not in response.content


@pytest.mark.django_db
def test_scrape_with_the_token_is_served(settings: Any) -> None:
    settings.METRICS_TOKEN = TOKEN
    response = scrape(HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_HOST="10.0.0.7")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"# TYPE fwupd_rollouts gauge" in response.content


@pytest.mark.django_db
def test_scrape_from_outside_the_allowed_networks_is_refused(settings: Any) -> None:
    import ipaddress

    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    assert scrape(REMOTE_ADDR="10.20.30.40").status_code == 200
    assert scrape(REMOTE_ADDR="::ffff:10.20.30.40").status_code == 200
    assert scrape(REMOTE_ADDR="192.168.1.5").status_code == 403
    assert scrape(REMOTE_ADDR="not-an-address").status_code == 403
    # Both configured: both are required.
    settings.METRICS_TOKEN = TOKEN
    assert scrape(REMOTE_ADDR="10.20.30.40").status_code == 401
    assert (
        scrape(REMOTE_ADDR="10.20.30.40", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    )
    assert (
        scrape(REMOTE_ADDR="192.168.1.5", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 403
    )


def test_metrics_token_can_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "metrics-token"
    secret.write_text(TOKEN + "\n")
    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    monkeypatch.setenv("METRICS_TOKEN_FILE", str(secret))
    assert envopt("METRICS_TOKEN") == TOKEN


# --- what it says ------------------------------------------------------------------------------
def test_rollouts_by_state_per_campaign_and_dispatches(
    catalog: Catalog, settings: Any, django_assert_num_queries: Any
) -> None:
    settings.METRICS_TOKEN = TOKEN
    now = timezone.now()
    make_devices(catalog, 6)
    live = apply(catalog, spec_text("metrics-live"), now=now)
    report = engine.campaign_reconcile(live.pk, now=now)
    assert report is not None and report.dispatched == 6
    done = apply(catalog, spec_text("metrics-done"), now=now)
    services.abort_campaign(done, actor=catalog.ops, reason="test", now=now)
    Rollout.objects.filter(campaign=live, device__endpoint="dev-00001").update(
        state=RolloutState.FAILED
    )

    with django_assert_num_queries(2):  # one GROUP BY for rollouts, one for campaigns
        body = metrics.render().decode()
    found = samples(body)
    assert value(found, "fwupd_rollouts", campaign="metrics-live", state="queued") == 5
    assert value(found, "fwupd_rollouts", campaign="metrics-live", state="failed") == 1
    assert value(found, "fwupd_rollouts", campaign="metrics-live", state="succeeded") == 0
    assert not any(labels and ("campaign", "metrics-done") in labels for _, labels in found)
    assert value(found, "fwupd_campaigns", status=CampaignStatus.RUNNING) == 1
    assert value(found, "fwupd_campaigns", status=CampaignStatus.ABORTED) == 1
    assert value(found, "fwupd_dispatches_total", campaign="metrics-live") == 6
    assert value(found, "fwupd_metrics_redis_up") == 1

    # A second pass dispatches nothing more, and counts nothing more.
    engine.campaign_reconcile(live.pk, now=now)
    again = samples(scrape(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())
    assert value(again, "fwupd_dispatches_total", campaign="metrics-live") == 6


def test_scrape_queries_do_not_grow_with_campaigns(
    catalog: Catalog, django_assert_num_queries: Any
) -> None:
    now = timezone.now()
    make_devices(catalog, 3)
    for i in range(4):
        engine.campaign_reconcile(apply(catalog, spec_text(f"many-{i}"), now=now).pk, now=now)
    with django_assert_num_queries(2):
        found = samples(metrics.render().decode())
    names = {dict(labels).get("campaign") for (name, labels) in found if name == "fwupd_rollouts"}
    assert names == {f"many-{i}" for i in range(4)}


@pytest.mark.django_db
def test_event_lag_and_applied_events_come_from_the_worker_tasks() -> None:
    seen_at = time.time() - 42.0
    events = [
        {"type": "expired", "endpoint": "gone-1", "registration_id": "r1", "at": seen_at},
        {"type": "expired", "endpoint": "gone-2", "registration_id": "r2", "at": seen_at + 40},
    ]
    assert device_events_task(events) == 2
    found = samples(metrics.render().decode())
    assert value(found, "fwupd_device_events_applied_total") == 2
    lag = value(found, "fwupd_device_event_lag_seconds")
    assert lag is not None and 42.0 <= lag < 3600  # the oldest event of the batch
    last = value(found, "fwupd_device_event_last_applied_timestamp_seconds")
    assert last is not None and last >= seen_at + 42.0


@pytest.mark.django_db
def test_queue_lengths_are_read_from_the_redis_broker(settings: Any) -> None:
    settings.METRICS_CELERY_QUEUES = ["ops-test-queue", "ops-empty-queue"]
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("ops-test-queue")
    client.lpush("ops-test-queue", "a", "b", "c")
    try:
        found = samples(metrics.render().decode())
    finally:
        client.delete("ops-test-queue")
    assert value(found, "fwupd_celery_queue_length", queue="ops-test-queue") == 3
    assert value(found, "fwupd_celery_queue_length", queue="ops-empty-queue") == 0


@pytest.mark.django_db
def test_scrape_still_answers_when_redis_is_down(settings: Any) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    found = samples(metrics.render().decode())
    assert value(found, "fwupd_metrics_redis_up") == 0
    assert ("fwupd_campaigns", (("status", "running"),)) in found


def test_recording_never_fails_the_work_when_redis_is_down(settings: Any) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    tallies.dispatches_add(campaign="c", count=3)  # logged, not raised
    tallies.events_applied(count=1, lag_seconds=1.0)


def test_embedded_mode_keeps_the_tallies_in_process(settings: Any) -> None:
    settings.CELERY_BROKER_URL = "memory://localhost/"
    tallies.dispatches_add(campaign="embedded", count=2)
    tallies.dispatches_add(campaign="embedded", count=3)
    tallies.events_applied(count=4, lag_seconds=0.5, now=1000.0)
    snap = tallies.snapshot(queues=["celery"])
    assert snap.dispatches == {"embedded": 5}
    assert (snap.events_applied, snap.event_lag_seconds) == (4, 0.5)
    assert snap.events_last_applied_at == 1000.0
    assert snap.queue_lengths == {} and snap.redis_ok is None


def test_start_up_check_warns_about_a_short_token_or_metrics_open_to_all(settings: Any) -> None:
    import ipaddress

    from ops.checks import metrics_access

    settings.METRICS_TOKEN = "short"
    assert [m.id for m in metrics_access(None)] == ["ops.W001"]
    settings.METRICS_TOKEN = None
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("0.0.0.0/0")]
    assert [m.id for m in metrics_access(None)] == ["ops.W002"]
    settings.METRICS_TOKEN = TOKEN
    assert metrics_access(None) == []
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    settings.METRICS_TOKEN = None
    assert metrics_access(None) == []
