"""Deploy check: Django's own W009 does not know the project's built-in development key (it is
long and random-looking), so a deployment that forgot DJANGO_SECRET_KEY would pass
``check --deploy`` while signing sessions and CSRF tokens with a key published in the repo."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def development_secret_key(app_configs: Any, **kwargs: Any) -> list[Error]:
    from config import settings as project_settings

    if settings.SECRET_KEY == project_settings._INSECURE_DEV_KEY:
        return [
            Error(
                "SECRET_KEY is the built-in development key.",
                hint="Set DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) to a long random value.",
                id="console.E001",
            )
        ]
    return []
