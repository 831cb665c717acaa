"""First look at a CoAP datagram, before aiocoap parses it: what to refuse and the reply bytes.

aiocoap 0.4.17 decodes string options with ``bytes.decode("utf-8")`` and lets the
``UnicodeDecodeError`` escape its receive callback (no reply, a traceback per datagram), does not
check option lengths against RFC 7252's ranges, and is handed datagrams its transport cut at
4 KiB as if they were whole. :func:`screen` walks the header and options of one datagram (RFC
7252 section 3) and says whether the gateway may give it to aiocoap. Invariants:

* a datagram :func:`screen` passes has a valid header, a token of at most 8 bytes, well-formed
  option deltas and lengths, and UTF-8 string options within their RFC 7252 length ranges, so
  aiocoap's decoder cannot raise on it for those reasons;
* a refused *confirmable request* gets a piggybacked ACK (same message id and token) with 4.00
  or 4.13 (plus Size1: the largest datagram read) and a short diagnostic; anything else refused
  (responses, non-confirmable messages, undecodable headers) gets nothing, so a spoofed source
  is never sent more than it was sent;
* a truncated datagram (the socket said so) is never passed on.

Pure: bytes in, a verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 7252 5.10: option number -> (min, max) length of the string options.
STRING_OPTIONS: dict[int, tuple[int, int]] = {
    3: (1, 255),  # Uri-Host
    8: (0, 255),  # Location-Path
    11: (0, 255),  # Uri-Path
    15: (0, 255),  # Uri-Query
    20: (0, 255),  # Location-Query
    35: (1, 1034),  # Proxy-Uri
    39: (1, 255),  # Proxy-Scheme
}
# RFC 7252 5.10, RFC 7641, RFC 7959: option number -> longest value of the uint options.
UINT_OPTIONS: dict[int, int] = {
    6: 3,  # Observe
    7: 2,  # Uri-Port
    12: 2,  # Content-Format
    14: 4,  # Max-Age
    17: 2,  # Accept
    23: 3,  # Block2
    27: 3,  # Block1
    28: 4,  # Size2
    60: 4,  # Size1
}
SIZE1_OPTION = 60
BAD_REQUEST = (4 << 5) | 0
REQUEST_ENTITY_TOO_LARGE = (4 << 5) | 13
TYPE_CON, TYPE_NON, TYPE_ACK, TYPE_RST = 0, 1, 2, 3
MAX_TOKEN_BYTES = 8
# Bytes of diagnostic payload in a refusal (kept short: the reply must not outgrow the request).
MAX_DIAGNOSTIC = 48


@dataclass(frozen=True)
class Verdict:
    """What to do with a datagram: ``ok`` pass it on; else ``kind`` (a counter name), ``reason``
    (for the log) and ``reply`` (bytes to send back, or None)."""

    ok: bool
    kind: str = ""
    reason: str = ""
    reply: bytes | None = None


PASS = Verdict(ok=True)


class _Malformed(Exception):
    pass


def _extended(nibble: int, data: bytes, pos: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos >= len(data):
            raise _Malformed("option header cut short")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 1 >= len(data):
            raise _Malformed("option header cut short")
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    raise _Malformed("reserved option nibble 15")


def _uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def encode_reply(
    *, mid: int, token: bytes, code: int, diagnostic: str, size1: int | None = None
) -> bytes:
    """A piggybacked ACK with ``code``, an optional Size1 option and a diagnostic payload."""
    out = bytearray([0x40 | (TYPE_ACK << 4) | len(token), code, mid >> 8, mid & 0xFF])
    out += token
    if size1 is not None:
        value = _uint(size1)
        # Size1 (60) as the first option: delta 60 = 13 + 47, one extension byte.
        out += bytes([(13 << 4) | len(value), SIZE1_OPTION - 13]) + value
    text = diagnostic.encode("ascii", "replace")[:MAX_DIAGNOSTIC]
    if text:
        out += b"\xff" + text
    return bytes(out)


def screen(data: bytes, *, truncated: bool = False, limit: int = 0) -> Verdict:
    """Whether ``data`` (one datagram; ``truncated`` if the socket cut it at ``limit`` bytes) may
    go to aiocoap, and if not, why and what to answer."""
    if len(data) < 4 or data[0] >> 6 != 1:
        return Verdict(ok=False, kind="malformed", reason="not a CoAP header")
    mtype = (data[0] >> 4) & 0x3
    token_length = data[0] & 0x0F
    code = data[1]
    mid = int.from_bytes(data[2:4], "big")
    if token_length > MAX_TOKEN_BYTES or len(data) < 4 + token_length:
        return Verdict(ok=False, kind="malformed", reason="bad token length")
    token = data[4 : 4 + token_length]
    is_request = 1 <= code <= 31
    code_class = code >> 5
    if code_class in (1, 6, 7):
        return Verdict(ok=False, kind="malformed", reason=f"reserved code class {code_class}")
    if code == 0 and (mtype == TYPE_NON or len(data) > 4):
        return Verdict(ok=False, kind="malformed", reason="empty message with content")
    if (is_request and mtype in (TYPE_ACK, TYPE_RST)) or (code and mtype == TYPE_RST):
        return Verdict(ok=False, kind="malformed", reason="code and message type do not fit")

    def refuse(kind: str, reason: str, reply_code: int, size1: int | None = None) -> Verdict:
        reply = None
        if is_request and mtype == TYPE_CON:
            reply = encode_reply(
                mid=mid, token=token, code=reply_code, diagnostic=reason, size1=size1
            )
        return Verdict(ok=False, kind=kind, reason=reason, reply=reply)

    if truncated:
        return refuse(
            "oversize", f"datagram larger than {limit} bytes", REQUEST_ENTITY_TOO_LARGE, limit
        )
    pos = 4 + token_length
    number = 0
    try:
        while pos < len(data):
            if data[pos] == 0xFF:
                if pos + 1 == len(data):
                    raise _Malformed("payload marker without payload")
                break
            delta, length = data[pos] >> 4, data[pos] & 0x0F
            delta, pos = _extended(delta, data, pos + 1)
            length, pos = _extended(length, data, pos)
            number += delta
            if pos + length > len(data):
                raise _Malformed("option value cut short")
            bounds = STRING_OPTIONS.get(number)
            if bounds is not None:
                value = data[pos : pos + length]
                if not bounds[0] <= length <= bounds[1]:
                    raise _Malformed(f"option {number} of {length} bytes")
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Malformed(f"option {number} is not UTF-8") from None
            longest = UINT_OPTIONS.get(number)
            if longest is not None and length > longest:
                raise _Malformed(f"option {number} of {length} bytes")
            pos += length
    except _Malformed as exc:
        return refuse("malformed", str(exc), BAD_REQUEST)
    return PASS
