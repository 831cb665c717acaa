"""Firmware version strings as MCUboot and SUIT see them: ``major.minor.revision[+build]``."""

from __future__ import annotations

import re

_VERSION = re.compile(r"^(\d{1,3})(?:\.(\d{1,3}))?(?:\.(\d{1,5}))?(?:\+(\d{1,10}))?$")


class VersionError(ValueError):
    """The version string is not ``major.minor.revision[+build]`` within MCUboot's ranges."""

    code = "version.invalid"


def parse_version(text: str) -> tuple[int, int, int, int]:
    """Four numbers; missing parts are 0, so "1.2" == "1.2.0+0" as MCUboot compares them."""
    match = _VERSION.match(text.strip())
    if not match:
        raise VersionError(f"version {text!r} is not major.minor.revision[+build]")
    major, minor, revision, build = (int(g) if g else 0 for g in match.groups())
    if major > 255 or minor > 255 or revision > 65535 or build > 0xFFFFFFFF:
        raise VersionError(f"version {text!r} is out of MCUboot's range (u8.u8.u16+u32)")
    return major, minor, revision, build


def format_version(parts: tuple[int, int, int, int]) -> str:
    major, minor, revision, build = parts
    base = f"{major}.{minor}.{revision}"
    return f"{base}+{build}" if build else base
