"""/healthz and /readyz: answered by the pod's address over plain HTTP, each readiness check
with its status and latency, 503 when one fails, bounded in time, and no secret in the body."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client

from ops import health

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_touching_a_dependency(settings: Any) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = Client().get("/healthz", HTTP_HOST="10.0.0.7")  # a pod address, not allowed
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["X-Content-Type-Options"] == "nosniff"


def test_probes_are_not_redirected_to_https(settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/healthz").status_code == 200
    assert Client().get("/readyz").status_code == 200
    assert Client().get("/campaigns/").status_code == 301  # the rest of the site is


def test_readyz_reports_each_check_with_status_and_latency() -> None:
    response = Client().get("/readyz", HTTP_HOST="10.0.0.7")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "storage"}
    for check in body["checks"].values():
        assert check["status"] == "ok"
        assert isinstance(check["latency_ms"], float | int) and check["latency_ms"] >= 0
    assert body["checks"]["broker"]["detail"] == "redis"
    assert body["checks"]["database"]["detail"] == "postgresql"
    assert response["Cache-Control"] == "no-store"


def test_readyz_is_503_when_the_broker_is_down(settings: Any) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "fail"
    assert body["checks"]["broker"]["status"] == "fail"
    assert body["checks"]["broker"]["error"] == "ConnectionError"
    assert body["checks"]["database"]["status"] == "ok"


def test_readyz_is_503_when_the_firmware_store_is_not_writable(
    settings: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    settings.FIRMWARE_STORAGE_ROOT = blocker / "images"
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"]["status"] == "fail"


def test_readyz_leaves_no_probe_file_behind(settings: Any, tmp_path: Path) -> None:
    settings.FIRMWARE_STORAGE_ROOT = tmp_path / "store"
    assert Client().get("/readyz").status_code == 200
    assert list((tmp_path / "store").iterdir()) == []


def test_hanging_dependency_fails_the_probe_at_the_deadline() -> None:
    release = threading.Event()

    def hangs() -> str:
        release.wait(30)
        return "late"

    try:
        results = health.run_checks({"hangs": hangs, "fine": lambda: "ok"}, timeout=0.2)
    finally:
        release.set()
    by_name = {r.name: r for r in results}
    assert (by_name["hangs"].ok, by_name["hangs"].error) == (False, "timeout")
    assert by_name["fine"].ok


def test_readyz_never_shows_a_drivers_error_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def leaky() -> str:
        raise OperationalError('connection to "db.internal" failed: password=hunter2')

    monkeypatch.setitem(health.CHECKS, "database", leaky)
    response = Client().get("/readyz", HTTP_X_REQUEST_ID="probe-0001-abcdef")
    assert response.status_code == 503
    assert "hunter2" not in response.content.decode()
    assert "db.internal" not in response.content.decode()
    assert response.json()["checks"]["database"]["error"] == "OperationalError"
    # The operator finds the reason in the log line, tagged with the probe's request id.
    record = next(r for r in caplog.records if "readiness check database" in r.getMessage())
    assert "hunter2" in record.getMessage()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_ops_endpoints_answer_only_get(path: str) -> None:
    assert Client().post(path).status_code == 405
