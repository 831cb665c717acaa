"""Request ids (honoured when well-formed, echoed) and JSON log lines carrying the request,
campaign and device ids; text stays the default format."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from ops import health, logs
from workers.tasks import device_events_task

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger also writes JSON lines to a buffer (the LOG_FORMAT=json formatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.mark.django_db
def test_a_well_formed_request_id_is_kept_and_echoed() -> None:
    rid = "9f1c2a7e-0d4b-4e55-9a51-3c6f1e2d7b80"
    response = Client().get("/healthz", HTTP_X_REQUEST_ID=rid)
    assert response["X-Request-ID"] == rid
    page = Client().get("/login/", HTTP_X_REQUEST_ID=rid)
    assert page["X-Request-ID"] == rid


@pytest.mark.parametrize(
    "forged",
    [
        "short",
        "has space in it-1234",
        "line\nbreak-forged-entry",
        "x" * 200,
        "<script>alert(1)</script>",
        "",
    ],
)
@pytest.mark.django_db
def test_a_malformed_request_id_is_replaced_with_a_fresh_one(forged: str) -> None:
    response = Client().get("/healthz", HTTP_X_REQUEST_ID=forged)
    rid = response["X-Request-ID"]
    assert rid != forged
    assert logs.REQUEST_ID_RE.match(rid) and len(rid) == 32


@pytest.mark.django_db
def test_every_request_gets_its_own_id() -> None:
    first = Client().get("/healthz")["X-Request-ID"]
    second = Client().get("/healthz")["X-Request-ID"]
    assert first != second


@pytest.mark.django_db
def test_json_line_of_a_request_carries_its_request_id(
    json_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> str:
        raise OSError("disk gone")

    monkeypatch.setitem(health.CHECKS, "storage", broken)
    rid = "req-0000-1111-2222"
    Client().get("/readyz", HTTP_X_REQUEST_ID=rid)
    line = next(e for e in parsed(json_lines) if e["logger"] == "ops.health")
    assert line["request_id"] == rid  # logged from the check's own thread
    assert line["level"] == "WARNING"
    assert "disk gone" in line["message"]
    assert {"time", "campaign", "device"} <= set(line)


@pytest.mark.django_db
def test_json_line_about_a_device_event_carries_the_device(json_lines: io.StringIO) -> None:
    bad = {"type": "fw_status", "endpoint": "thermo-0042", "state": "not a number"}
    assert device_events_task([bad]) == 1
    line = next(e for e in parsed(json_lines) if "device event refused" in e["message"])
    assert line["device"] == "thermo-0042"
    assert line["request_id"] is None


def test_extra_fields_win_over_the_context(json_lines: io.StringIO) -> None:
    with logs.log_context(campaign="7", device="dev-1"):
        logging.getLogger("fwupd.test").warning("about c9", extra={"campaign": "c9"})
        logging.getLogger("fwupd.test").warning("about the context")
    explicit, implicit = (e for e in parsed(json_lines) if e["logger"] == "fwupd.test")
    assert (explicit["campaign"], explicit["device"]) == ("c9", "dev-1")
    assert (implicit["campaign"], implicit["device"]) == ("7", "dev-1")


def test_log_context_is_restored_after_the_block() -> None:
    with logs.log_context(campaign=1):
        with logs.log_context(campaign=2, device="d"):
            assert logs.campaign_var.get() == "2"
        assert (logs.campaign_var.get(), logs.device_var.get()) == ("1", None)
    assert logs.campaign_var.get() is None


def _run_logging(log_format: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    if log_format is not None:
        env["LOG_FORMAT"] = log_format
    return subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "import logging; logging.getLogger('fwupd.probe').warning("
            "'hello %s', 'world', extra={'campaign': 'c1'})",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_log_format_json_writes_one_object_per_line() -> None:
    result = _run_logging("json")
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["message"] == "hello world"
    assert (line["level"], line["logger"], line["campaign"]) == ("WARNING", "fwupd.probe", "c1")
    assert line["request_id"] is None and line["device"] is None


def test_text_stays_the_default_format() -> None:
    result = _run_logging(None)
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith("WARNING fwupd.probe: hello world")


def test_an_unknown_log_format_stops_the_process() -> None:
    result = _run_logging("yaml")
    assert result.returncode != 0
    assert "LOG_FORMAT='yaml'" in result.stderr


def test_json_line_of_an_exception_carries_its_traceback(json_lines: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("fwupd.test").exception("it broke")
    line = next(e for e in parsed(json_lines) if e["logger"] == "fwupd.test")
    assert line["level"] == "ERROR" and line["message"] == "it broke"
    assert "ValueError: boom" in line["exc_info"]
