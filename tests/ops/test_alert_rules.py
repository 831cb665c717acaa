"""docs/examples/alerts.yml is a loadable Prometheus rule file whose expressions name only
metrics the app exports: the web tier's (checked against a real scrape) and the gateway's."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from campaigns import engine
from ops import metrics
from tests.campaigns.support import apply, build_catalog, make_devices, spec_text
from tests.conftest import REPO_ROOT
from workers.lwm2m.metrics import GATEWAY_METRICS
from workers.tasks import device_events_task

RULES = REPO_ROOT / "docs" / "examples" / "alerts.yml"
METRIC_NAME = re.compile(r"\bfwupd_[a-z0-9_]+")


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rule_file_has_the_shape_prometheus_loads() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    names = [group["name"] for group in document["groups"]]
    assert len(names) == len(set(names))
    alerts = rules()
    assert len(alerts) >= 8
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Fwupd[A-Za-z]+", rule["alert"])
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


@pytest.mark.django_db
def test_alerts_name_only_metrics_the_app_exports(django_user_model: Any, settings: Any) -> None:
    settings.METRICS_CELERY_QUEUES = ["celery"]
    catalog = build_catalog(django_user_model)
    now = timezone.now()
    make_devices(catalog, 2)
    engine.campaign_reconcile(apply(catalog, spec_text("alerting"), now=now).pk, now=now)
    device_events_task(
        [{"type": "expired", "endpoint": "e1", "registration_id": "r", "at": now.timestamp()}]
    )
    scraped = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(metrics.render().decode())
    }
    assert scraped == set(metrics.WEB_METRICS)  # the documented list is the real one
    exported = scraped | set(GATEWAY_METRICS)
    used = set()
    for rule in rules():
        names = set(METRIC_NAME.findall(rule["expr"]))
        assert names, f"{rule['alert']} names no fwupd metric"
        assert names <= exported, (rule["alert"], names - exported)
        used |= names
    # The alerts cover the workers, the campaigns and the gateways.
    assert {
        "fwupd_device_event_lag_seconds",
        "fwupd_rollouts",
        "fwupd_gateway_dtls_handshakes_total",
        "fwupd_celery_queue_length",
    } <= used
