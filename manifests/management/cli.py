"""Shared plumbing for the server-side management commands: one place maps the service error
trees to a CommandError that prints the stable code, and one place resolves names to rows."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management.base import CommandError

from manifests.errors import ManifestError, UnknownDeviceClassError, UnknownVendorError
from manifests.models import DeviceClass, Vendor
from people.errors import PeopleError


@contextlib.contextmanager
def service_errors() -> Iterator[None]:
    """Turn a refused service call into exit status 1 with ``message [code]`` on stderr."""
    try:
        yield
    except (ManifestError, PeopleError) as exc:
        raise CommandError(f"{exc} [{exc.code}]", returncode=1) from exc


def write_output(path: str, data: bytes, *, private: bool = False) -> None:
    """Write a file atomically (temp file + rename); ``private`` files are 0600 whatever existed
    before. Failures exit 1 with the reason, never a traceback."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(
            dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}."
        )
        try:
            os.fchmod(fd, 0o600 if private else 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}", returncode=1) from exc


def parse_time(text: str, flag: str) -> dt.datetime:
    """ISO 8601; a time without an offset is taken as UTC."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{flag} {text!r} is not an ISO 8601 date-time", returncode=1) from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def user_named(username: str) -> AbstractBaseUser:
    try:
        return get_user_model().objects.get(username=username)
    except get_user_model().DoesNotExist:
        raise CommandError(f"no user named {username!r}", returncode=1) from None


def vendor_named(domain: str) -> Vendor:
    vendor = Vendor.objects.filter(domain=domain.strip().lower().rstrip(".")).first()
    if vendor is None:
        exc = UnknownVendorError(f"no vendor with domain {domain!r}")
        raise CommandError(f"{exc} [{exc.code}]", returncode=1)
    return vendor


def device_class_named(vendor_domain: str, name: str) -> DeviceClass:
    vendor = vendor_named(vendor_domain)
    device_class = DeviceClass.objects.filter(vendor=vendor, name=name).first()
    if device_class is None:
        exc = UnknownDeviceClassError(f"no device class {name!r} for {vendor.domain}")
        raise CommandError(f"{exc} [{exc.code}]", returncode=1)
    return device_class
