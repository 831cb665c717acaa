"""Password sign-in, which a deployment that signs everyone in through its identity provider
turns off (``CONSOLE_LOCAL_LOGIN=0``): then no password is accepted anywhere, admin site
included."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest


class LocalPasswordBackend(ModelBackend):
    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> AbstractBaseUser | None:
        if not settings.CONSOLE_LOCAL_LOGIN:
            return None
        user: AbstractBaseUser | None = super().authenticate(
            request, username=username, password=password, **kwargs
        )
        return user
