"""The DTLS options of the two management commands: ``lwm2m_gateway --dtls-bind`` and
``simulate_fleet --dtls`` (keys provisioned through ``device_psk_set``)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from campaigns import device_services
from campaigns.models import DevicePSK
from workers.lwm2m.dtls import dtls_missing

pytestmark = pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))
REPO = Path(__file__).resolve().parents[3]


def test_simulate_fleet_dtls_provisions_each_devices_key(
    db: None, device_class: Any, tmp_path: Path
) -> None:
    state = tmp_path / "fleet.json"
    out = io.StringIO()
    call_command(
        "simulate_fleet",
        "--devices",
        "2",
        "--class",
        device_class.name,
        "--dtls",
        "--server",
        "coaps://127.0.0.1:9",
        "--state-file",
        str(state),
        "--duration",
        "0.2",
        stdout=out,
    )
    assert "2 DTLS PSKs provisioned" in out.getvalue()
    devices = {d["endpoint"]: d for d in json.loads(state.read_text())["devices"]}
    assert set(devices) == set(DevicePSK.objects.values_list("identity", flat=True))
    for endpoint, device in devices.items():
        key = bytes.fromhex(device["psk"])
        assert len(key) == 16  # what tinydtls takes
        assert device_services.device_psk_lookup(identity=endpoint) == key
        assert 1 in device["protocols"]  # coaps listed in /5/0/8
    assert devices["sim-00000"]["psk"] != devices["sim-00001"]["psk"]


def test_simulate_fleet_dtls_needs_a_coaps_server(
    db: None, device_class: Any, settings: Any
) -> None:
    settings.LWM2M_DTLS_BIND = None
    with pytest.raises(CommandError, match="--dtls needs --server coaps://"):
        call_command("simulate_fleet", "--class", device_class.name, "--dtls")
    with pytest.raises(CommandError, match="--dtls needs --server coaps://"):
        call_command(
            "simulate_fleet", "--class", device_class.name, "--dtls", "--server", "coap://x:1"
        )


def test_gateway_command_refuses_dtls_on_the_any_address(db: None) -> None:
    with pytest.raises(CommandError, match="needs a specific address"):
        call_command("lwm2m_gateway", "--bind", "127.0.0.1:0", "--dtls-bind", "0.0.0.0:0")


def test_gateway_command_refuses_nosec_off_without_dtls(db: None, settings: Any) -> None:
    settings.LWM2M_DTLS_BIND = None
    with pytest.raises(CommandError, match="no device could register"):
        call_command("lwm2m_gateway", "--bind", "127.0.0.1:0", "--refuse-nosec")


def test_gateway_command_serves_dtls_until_sigterm(transactional_db: None, tmp_path: Path) -> None:
    from django.db import connection

    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    if connection.vendor != "postgresql":
        pytest.skip("the subprocess reaches the test database by URL (PostgreSQL)")
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "lwm2m_gateway",
            "--bind",
            "127.0.0.1:0",
            "--dtls-bind",
            "127.0.0.1:0",
            "--refuse-nosec",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FWUPD_VAR_DIR": str(tmp_path), "DATABASE_URL": url},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "coap://127.0.0.1:" in line and "and coaps://127.0.0.1:" in line, (
            proc.stderr.read() if proc.stderr else ""
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0
