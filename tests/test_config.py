"""Settings readers fail loudly on bad values and read secrets from *_FILE."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.env import EnvError, envbool, envint, envlist, envstr


def test_envbool_accepts_common_spellings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("X_FLAG", "Yes")
    assert envbool("X_FLAG", False) is True
    monkeypatch.setenv("X_FLAG", "off")
    assert envbool("X_FLAG", True) is False


def test_envbool_refuses_typos(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("X_FLAG", "ture")
    with pytest.raises(EnvError, match="X_FLAG"):
        envbool("X_FLAG", False)


def test_envint_refuses_non_numbers_and_values_below_minimum(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("X_NUM", "12k")
    with pytest.raises(EnvError, match="not an integer"):
        envint("X_NUM", 1)
    monkeypatch.setenv("X_NUM", "3")
    with pytest.raises(EnvError, match="minimum"):
        envint("X_NUM", 1, minimum=10)


def test_file_variant_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    monkeypatch.setenv("X_SECRET", "from-env")
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert envstr("X_SECRET", "default") == "from-file"


def test_envlist_splits_and_strips(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("X_LIST", " a, b ,,c ")
    assert envlist("X_LIST", []) == ["a", "b", "c"]
    monkeypatch.delenv("X_LIST")
    assert envlist("X_LIST", ["d"]) == ["d"]


def test_a_command_queueing_a_task_in_embedded_mode_attempts_no_broker(tmp_path: Path):
    """No broker configured: tasks run in-process, and Celery's eager path must not reach for
    the default AMQP broker (kombu's "No hostname was supplied" on every command)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CELERY_")
        and k not in ("DATABASE_URL", "LWM2M_COMMAND_BUS_URL", "DJANGO_SETTINGS_MODULE")
    }
    env["FWUPD_VAR_DIR"] = str(tmp_path)

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    manage("migrate", "-v0")
    queued = manage(
        "shell",
        "-c",
        "from workers.tasks import campaigns_reconcile_all_task as task; "
        "print('reconciled', task.delay().get())",
    )
    assert "reconciled 0" in queued.stdout
    output = queued.stdout + queued.stderr
    assert "No hostname was supplied" not in output
    assert "kombu" not in output
