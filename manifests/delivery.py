"""Delivery profiles, release side: which payload URI a manifest may name so that its device
class's profile can serve it, and the URI ``suit create`` writes when none is given. Pure (no
Django); the catalog services and the CLI call it.

Invariants it enforces (docs/lwm2m.md, "Delivery profiles"):

* ``image``: any URI. The device is sent the image itself (``/fw/i/<sha256>``) and never reads
  the manifest's URI, so nothing it says can misdirect a download.
* ``suit``: the device fetches the payload from the manifest's URI, so it must be absent (the
  simulated SUIT devices then use ``/fw/i/<image sha256>`` on the Package URI's server), the
  relative reference ``/fw/i/<image sha256>`` (resolved by the device against the origin of the
  Package URI it was given, so one manifest works over coap and coaps and through any gateway),
  or an absolute ``coap``/``coaps`` URI of that path on an origin the gateways publish. Any other
  host, scheme or path names a payload no gateway serves for this digest.
* ``suit-integrated``: a fragment-only reference (``#name``): the key under which the integrated
  envelope carries the payload (draft-ietf-suit-manifest, "Integrated Payloads").
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

IMAGE = "image"
SUIT = "suit"
SUIT_INTEGRATED = "suit-integrated"
PROFILES = (IMAGE, SUIT, SUIT_INTEGRATED)
# The profiles whose devices run a SUIT processor and sign a SUIT report of each attempt: their
# success is taken only from a verified report (docs/suit.md, "Device reports"). MCUboot devices
# (``image``) cannot sign one.
REPORTING_PROFILES = frozenset({SUIT, SUIT_INTEGRATED})

AUTO, PULL, PUSH = "auto", "pull", "push"
METHODS = (AUTO, PULL, PUSH)

# The key ``suit create`` gives the integrated payload when no --uri is given (the draft's
# examples name the application image "#app").
DEFAULT_INTEGRATED_URI = "#app"
IMAGE_PATH = "/fw/i/"


def image_path(image_sha256: str) -> str:
    """Where every gateway serves the image of that digest (``/fw/i/<sha256>``)."""
    return f"{IMAGE_PATH}{image_sha256.lower()}"


def default_payload_uri(profile: str, image_sha256: str) -> str:
    """The manifest URI ``suit create`` writes for a class of ``profile`` when none is given."""
    if profile == SUIT_INTEGRATED:
        return DEFAULT_INTEGRATED_URI
    return image_path(image_sha256)


def is_fragment_reference(uri: str | None) -> bool:
    """``#name``: a fragment-only URI reference, the key of an integrated payload."""
    return (
        uri is not None
        and len(uri) > 1
        and uri.startswith("#")
        and all(0x21 <= ord(ch) < 0x7F and ch != "#" for ch in uri[1:])
    )


def _origin(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def payload_uri_problem(
    uri: str | None,
    *,
    profile: str,
    image_sha256: str,
    served_origins: Iterable[str] = (),
) -> str | None:
    """Why a class of ``profile`` could not serve a manifest naming ``uri`` for the image of
    ``image_sha256`` (``None``: it can). ``served_origins`` are the gateways' public URIs."""
    expected = image_path(image_sha256)
    if profile == SUIT_INTEGRATED:
        if is_fragment_reference(uri):
            return None
        return (
            f"a suit-integrated class needs the manifest's URI to be a fragment-only reference "
            f"such as {DEFAULT_INTEGRATED_URI!r} (the key of the integrated payload), not {uri!r}"
        )
    if profile == IMAGE:
        return None
    if profile != SUIT:
        return f"unknown delivery profile {profile!r}"
    if uri is None or uri == "":
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:
        return f"manifest URI {uri!r} is not a URI"
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        return f"manifest URI {uri!r} must not carry a query or fragment; use {expected!r}"
    if not parts.scheme and not parts.netloc:
        if parts.path == expected:
            return None
        return (
            f"manifest URI {uri!r} is not a path the gateway serves for this image; "
            f"use {expected!r} (the image of digest {image_sha256[:12]}...)"
        )
    if parts.scheme.lower() not in ("coap", "coaps") or not parts.netloc:
        return (
            f"manifest URI {uri!r}: a suit class's devices download from the gateway over "
            f"coap or coaps; use {expected!r}"
        )
    origins = {_origin(o) for o in served_origins if o}
    if _origin(uri) not in origins:
        return (
            f"manifest URI {uri!r} names {parts.netloc!r}, which is not a gateway of this server "
            f"({sorted(origins) or 'no public URI configured'}); use the relative reference "
            f"{expected!r}, which the device resolves against its Package URI"
        )
    if parts.path != expected:
        return f"manifest URI {uri!r} is not {expected!r} on that gateway"
    return None
