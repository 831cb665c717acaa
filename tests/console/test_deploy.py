"""``manage.py check --deploy`` is clean with production settings from the environment, and
is not with the development defaults (so the clean run means something)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

PROD_SECRET = "k3Jx9-ZpQ2vLm8Rt4Wn7Yb1Cs6Dg0Hf5Ja2Ku9Le3Mo8Np4Qr7St1Uv6Wx0Yz"


def _check(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env={**base, "FWUPD_VAR_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_is_clean_with_production_settings(tmp_path: Path):
    result = _check(
        {
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": PROD_SECRET,
            "DJANGO_ALLOWED_HOSTS": "fwupd.example.com",
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_the_development_defaults(tmp_path: Path):
    result = _check({"DJANGO_DEBUG": "1"}, tmp_path)
    assert result.returncode != 0
    for warning in ("security.W018", "console.E001", "security.W012", "security.W004"):
        assert warning in result.stderr, result.stderr
