"""The web tier as production runs it: ``DJANGO_DEBUG=0`` with a real secret, static files
collected (``collectstatic``), gunicorn serving ``config.wsgi`` behind a TLS proxy. The
console's stylesheet and scripts (htmx) and the API docs' Swagger UI files must be served by
that process: with DEBUG off Django itself serves none, and every page rendered unstyled."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

PROD_SECRET = "k3Jx9-ZpQ2vLm8Rt4Wn7Yb1Cs6Dg0Hf5Ja2Ku9Le3Mo8Np4Qr7St1Uv6Wx0Yz"
HOST = "fwupd.example.com"
GUNICORN = Path(sys.executable).with_name("gunicorn")


def _production_env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    return {
        **base,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": PROD_SECRET,
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO",
        "FWUPD_VAR_DIR": str(tmp_path / "var"),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def production_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp_path = tmp_path_factory.mktemp("web")
    env = _production_env(tmp_path)
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert collected.returncode == 0, collected.stdout + collected.stderr
    port = _free_port()
    server = subprocess.Popen(
        [str(GUNICORN), "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"gunicorn did not start: {server.communicate()[1]}")
                time.sleep(0.2)
        yield port, tmp_path / "var" / "static"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        # As the TLS proxy forwards it (production redirects plain HTTP to HTTPS).
        conn.request("GET", path, headers={"Host": HOST, "X-Forwarded-Proto": "https"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_production_web_tier_serves_console_and_api_docs_assets(
    production_web: tuple[int, Path],
) -> None:
    port, static_root = production_web
    status, headers, body = _get(port, "/login/")
    assert status == 200, body[:500]
    html = body.decode()
    assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', html)
    # Content-hashed names (cacheable for ever) for the stylesheet, htmx and the console script.
    kinds = {
        "css": r"/static/console/console\.[0-9a-f]{12}\.css",
        "htmx": r"/static/console/htmx\.min\.[0-9a-f]{12}\.js",
        "js": r"/static/console/console\.[0-9a-f]{12}\.js",
    }
    for kind, pattern in kinds.items():
        assert any(re.fullmatch(pattern, a) for a in assets), (kind, assets)
    expected_types = {".css": "text/css", ".js": "text/javascript"}
    for asset in assets:
        status, headers, body = _get(port, asset)
        assert status == 200, asset
        assert headers["content-type"].startswith(expected_types[Path(asset).suffix]), asset
        assert body, asset
        assert "max-age=315360000" in headers.get("cache-control", ""), asset
    # The API docs page loads Swagger UI from the same static files (no CDN).
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    for name in (
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
    ):
        status, headers, body = _get(port, f"/static/{manifest[name]}")
        assert status == 200 and len(body) > 1000, name


def test_production_web_tier_answers_plain_http_with_a_redirect_to_https(
    production_web: tuple[int, Path],
) -> None:
    port, _ = production_web
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/login/", headers={"Host": HOST})
        response = conn.getresponse()
        assert response.status == 301
        assert response.getheader("Location") == f"https://{HOST}/login/"
    finally:
        conn.close()


def test_static_files_are_served_with_debug_off_in_process(client: Any, settings: Any) -> None:
    """The test settings (DEBUG off, no collectstatic) serve the same files through WhiteNoise,
    found in the apps: what `make demo` and the browser tests rely on."""
    assert settings.DEBUG is False
    for path, kind in (
        ("/static/console/console.css", "text/css"),
        ("/static/console/htmx.min.js", "text/javascript"),
        ("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js", "text/javascript"),
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response["Content-Type"].startswith(kind), path
