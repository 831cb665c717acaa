"""The two management commands start, serve and stop (smoke; the logic is tested elsewhere)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

REPO = Path(__file__).resolve().parents[2]


def test_gateway_command_serves_until_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "lwm2m_gateway", "--bind", "127.0.0.1:0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **__import__("os").environ,
            "FWUPD_VAR_DIR": str(tmp_path),
            "LWM2M_ACCEPT_NOSEC": "1",
            "LWM2M_ADMISSION": "open",
        },
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "gateway" in line and "coap://127.0.0.1:" in line and "NoSec ACCEPTED" in line, (
            proc.stderr.read() if proc.stderr else ""
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0


def test_gateway_command_with_production_defaults_refuses_nosec_without_dtls(
    settings: Any,
) -> None:
    settings.LWM2M_ACCEPT_NOSEC = False  # the default with DEBUG off
    settings.LWM2M_DTLS_BIND = None
    with pytest.raises(CommandError, match="NoSec refused but no DTLS listener"):
        call_command("lwm2m_gateway", "--bind", "127.0.0.1:0")


def test_simulate_fleet_refuses_unknown_class(db: None) -> None:
    with pytest.raises(CommandError, match="no device class"):
        call_command("simulate_fleet", "--devices", "1", "--class", "nope")


def test_simulate_fleet_persists_state(db: None, device_class: Any, tmp_path: Path) -> None:
    state = tmp_path / "fleet.json"
    out = io.StringIO()
    call_command(
        "simulate_fleet",
        "--devices",
        "3",
        "--class",
        device_class.name,
        "--server",
        "coap://127.0.0.1:9",
        "--state-file",
        str(state),
        "--fault",
        "boot_fail@1.0",
        "--duration",
        "0.2",
        stdout=out,
    )
    data = json.loads(state.read_text())
    assert [d["endpoint"] for d in data["devices"]] == ["sim-00000", "sim-00001", "sim-00002"]
    assert all(d["faults"]["boot_fail"] for d in data["devices"])
    assert data["devices"][0]["class_id"] == str(device_class.uuid)
