"""What the gateway accepts as an endpoint name, and how device-reported text is cleaned.

Endpoint names become database keys, log text, console links, DTLS identities and command-bus
routing keys, so they are held to a small, documented alphabet (docs/lwm2m.md, "Endpoint
names"). The rules, enforced by :func:`check_endpoint_name`:

* 1 to :data:`MAX_ENDPOINT_CHARS` characters, ASCII only: letters, digits and ``- . _ : ~ @ +``
  (so the URN forms LwM2M names - ``urn:imei:...``, ``urn:uuid:...``, ``urn:dev:ops:...`` -
  and DNS-like names such as ``acme.example-dev01`` pass), plus ``%`` followed by two hex digits
  (the percent-escapes RFC 9039 allows in ``urn:dev`` serial numbers);
* it starts and ends with a letter or digit (no ``.``, ``..``, leading dot or dash) and holds no
  ``..``;
* nothing else: no ``/`` or ``\\`` (paths), no whitespace or control characters, no quotes,
  ``<>&;=?#`` (markup, SQL, URIs), no non-ASCII letter (a Cyrillic ``\\u0430`` looks like a
  Latin ``a``: two names an operator cannot tell apart must not both exist).

Device information strings (/3/0/0 Manufacturer, /3/0/1 Model, ...) are the device's to choose;
:func:`device_text` removes what could corrupt a terminal, a log or a page (control characters,
bidirectional overrides, line separators) and bounds the length. Everything here is pure.
"""

from __future__ import annotations

import unicodedata

from workers.lwm2m.errors import RegistrationError

# Longest endpoint name accepted: more than any LwM2M URN form (urn:uuid:... is 45 characters,
# urn:dev:ops:... with a 64-character serial about 100), well under CoAP's 255-byte option.
MAX_ENDPOINT_CHARS = 128

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_PUNCTUATION = frozenset("-._:~@+")
_HEX = frozenset("0123456789abcdefABCDEF")

# Format characters that reorder or hide text (bidi embeddings, overrides and isolates, marks).
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u061c")


class EndpointNameError(RegistrationError):
    """The endpoint name (``ep``) breaks the gateway's endpoint-name rules."""

    code = "lwm2m.endpoint_name"


def check_endpoint_name(name: str | None) -> str:
    """``name`` if it follows the rules above, else :class:`EndpointNameError` with the reason."""
    if not name:
        raise EndpointNameError("missing endpoint name (ep)")
    if len(name) > MAX_ENDPOINT_CHARS:
        raise EndpointNameError(
            f"endpoint name of {len(name)} characters (at most {MAX_ENDPOINT_CHARS})"
        )
    if not name.isascii():
        raise EndpointNameError("endpoint name has non-ASCII characters")
    index = 0
    while index < len(name):
        char = name[index]
        if char in _ALNUM or char in _PUNCTUATION:
            index += 1
            continue
        escape = name[index + 1 : index + 3]
        if char == "%" and len(escape) == 2 and set(escape) <= _HEX:
            index += 3
            continue
        raise EndpointNameError(
            f"endpoint name has the character {char!r} (allowed: letters, digits, "
            "- . _ : ~ @ + and %XX)"
        )
    if name[0] not in _ALNUM or name[-1] not in _ALNUM:
        raise EndpointNameError("endpoint name must start and end with a letter or digit")
    if ".." in name:
        raise EndpointNameError("endpoint name has '..'")
    return name


def device_text(value: object, limit: int = 255) -> str:
    """A device-reported string fit to store and show: control characters, bidi controls and
    line/paragraph separators removed, surrounding space stripped, at most ``limit`` characters;
    anything but a string gives ""."""
    if not isinstance(value, str):
        return ""
    kept = [
        char
        for char in value
        if char not in _BIDI and unicodedata.category(char) not in ("Cc", "Zl", "Zp", "Cs")
    ]
    return "".join(kept).strip()[:limit]
