"""Start-up checks of the ops settings: a metrics token anyone could guess, or metrics open to
every address without one, would publish the fleet's numbers (campaign names, device counts)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register

MIN_TOKEN_LENGTH = 16


@register(Tags.security)
def metrics_access(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    problems: list[CheckMessage] = []
    token = settings.METRICS_TOKEN
    if token and len(token) < MIN_TOKEN_LENGTH:
        problems.append(
            Warning(
                f"METRICS_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters.",
                hint="Use a long random value, e.g. `openssl rand -hex 32`.",
                id="ops.W001",
            )
        )
    everyone = [n for n in settings.METRICS_ALLOWED_NETWORKS if n.prefixlen == 0]
    if everyone and not token:
        problems.append(
            Warning(
                f"METRICS_ALLOWED_NETWORKS includes {everyone[0]} (every address) and no "
                "METRICS_TOKEN is set: anyone who reaches the web tier reads /metrics.",
                hint="Name the scrapers' networks, or set METRICS_TOKEN as well.",
                id="ops.W002",
            )
        )
    return problems
