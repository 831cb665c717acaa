"""Typed environment readers that fail loudly.

A typo in a deployment variable must stop the process at start-up, not surface later as a
surprising default. Every reader also accepts ``<NAME>_FILE`` pointing at a file holding the
value, so secrets can come from mounted files instead of the process environment.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


class EnvError(ValueError):
    """An environment variable holds a value its reader cannot accept."""

    code = "config.bad_env"


def _raw(name: str) -> str | None:
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text(encoding="utf-8").strip()
    return os.environ.get(name)


def envstr(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def envopt(name: str) -> str | None:
    value = _raw(name)
    return value or None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def envbool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise EnvError(f"{name}={value!r} is not a boolean (use one of {sorted(_TRUE | _FALSE)})")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise EnvError(f"{name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise EnvError(f"{name}={number} is below the minimum {minimum}")
    return number


def envlist(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def envnetworks(
    name: str, default: list[str]
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A comma-separated list of IP networks (CIDR, or a bare address for one host)."""
    networks = []
    for item in envlist(name, default):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise EnvError(f"{name}: {item!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return networks


def envpairs(name: str) -> list[tuple[str, str]]:
    """``a=b,c=d`` -> ``[("a", "b"), ("c", "d")]``; a key may repeat."""
    pairs = []
    for item in envlist(name, []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise EnvError(f"{name}: {item!r} is not KEY=VALUE (e.g. fw-qa=qa,fw-sec=security)")
        pairs.append((key.strip(), value.strip()))
    return pairs
