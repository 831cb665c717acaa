"""Hostile CoAP datagrams for the gateway fuzz test and soak benchmark (seeded, reproducible).

Three kinds, mixed: random bytes behind a CoAP version nibble, valid requests with a few bytes
mutated, and the hostile registrations a fuzzer sent to the gateway (issue "Hostile input":
undecodable options, oversize bodies, Block1 gaps, path names, markup, look-alikes, control
characters, a takeover of a known endpoint's registration). Pure.
"""

from __future__ import annotations

import random
import struct

HOSTILE_NAMES = [
    b"../../etc/passwd",
    b"a/b/c",
    b"a\\b",
    b".",
    b"..",
    b" ",
    b"coap://evil/x",
    b"<img src=x onerror=alert(1)>",
    b"'; DROP TABLE campaigns_device;--",
    "\u0430cme.example-dev01".encode(),
    "\U0001f600".encode() * 255,
    b"dev\r\n2026-01-01 CRITICAL forged",
    b"Evil\x1b[31mCorp",
    b"\xff\xfe",
]


def option(delta: int, value: bytes) -> bytes:
    """One option header + value (delta and length up to 268 / 65804)."""

    def nibble(n: int) -> tuple[int, bytes]:
        if n < 13:
            return n, b""
        if n < 269:
            return 13, bytes([n - 13])
        return 14, struct.pack("!H", n - 269)

    d, dext = nibble(delta)
    length, lext = nibble(len(value))
    return bytes([(d << 4) | length]) + dext + lext + value


def coap_request(
    code: int,
    mid: int,
    *,
    path: list[bytes] | None = None,
    query: list[bytes] | None = None,
    extra: list[tuple[int, bytes]] | None = None,
    payload: bytes = b"",
    token: bytes = b"\x07",
    mtype: int = 0,
) -> bytes:
    """A CoAP request built by hand, so it can carry what aiocoap would not send (options
    sorted by number, repeated ones in order; ``mtype`` 0 confirmable, 1 non-confirmable)."""
    options = sorted(
        [(11, p) for p in path or []] + [(15, q) for q in query or []] + list(extra or []),
        key=lambda item: item[0],
    )
    first = 0x40 | (mtype << 4) | len(token)
    out = bytes([first, code]) + struct.pack("!H", mid & 0xFFFF) + token
    last = 0
    for number, value in options:
        out += option(number - last, value)
        last = number
    return out + (b"\xff" + payload if payload else b"")


def registration(endpoint: bytes, mid: int, payload: bytes = b"</3/0>,</5/0>") -> bytes:
    return coap_request(
        2, mid, path=[b"rd"], query=[b"ep=" + endpoint, b"lt=60", b"b=U"], payload=payload
    )


def hostile_registrations(mid: int, known: bytes) -> list[bytes]:
    """The fuzzer's registrations, plus a takeover attempt of ``known``."""
    out = [registration(name, mid + i) for i, name in enumerate(HOSTILE_NAMES)]
    base = mid + len(out)
    out += [
        registration(b"big", base, payload=b"</3/0>," * 8000),  # 56 KB in one datagram
        registration(b"sixteen", base + 1, payload=b"</3/0>," * 2400),  # ~17 KB
        coap_request(  # Block1 with an absurd Size1
            2,
            base + 2,
            path=[b"rd"],
            query=[b"ep=blk"],
            payload=b"<" * 1024,
            extra=[(27, bytes([0x0E])), (60, (10**7).to_bytes(4, "big"))],
        ),
        coap_request(  # a Block1 gap: block 5 with nothing before it
            2,
            base + 3,
            path=[b"rd"],
            query=[b"ep=gap"],
            payload=b"</3/0>",
            extra=[(27, bytes([0x52]))],
        ),
        registration(known, base + 4),  # a takeover of a provisioned device's endpoint
        bytes.fromhex("40011234b1ff"),
    ]
    return out


def datagrams(count: int, *, seed: int = 1, known: bytes = b"known-0001") -> list[bytes]:
    """``count`` hostile datagrams: a third random, a third mutated valid requests, the rest
    drawn from :func:`hostile_registrations` and random endpoint names."""
    rng = random.Random(seed)  # noqa: S311 - reproducible fuzz input, not secrets
    templates = [
        registration(b"tmpl-dev", 1),
        coap_request(2, 2, path=[b"rd", b"0123456789abcdef"], query=[b"lt=30"]),
        coap_request(4, 3, path=[b"rd", b"0123456789abcdef"]),
        coap_request(1, 4, path=[b"fw", b"i", b"0" * 64], extra=[(23, b"\x16")]),
        coap_request(1, 5, path=[b"health"]),
    ]
    hostile = hostile_registrations(100, known)
    out: list[bytes] = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60)))
            out.append(bytes([0x40 | rng.randint(0, 0x3F)]) + body)
        elif kind == 1:
            data = bytearray(rng.choice(templates))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            out.append(bytes(data))
        elif rng.random() < 0.5:
            out.append(rng.choice(hostile))
        else:
            name = bytes(
                rng.choice(b"abcdefXYZ019-._:/ \x00\xff") for _ in range(rng.randint(1, 20))
            )
            out.append(registration(name, rng.getrandbits(16)))
    return out
