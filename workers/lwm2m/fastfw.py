"""The plain listener's direct answer to a Block2 GET of a cached /fw file, pure.

A device downloading firmware sends one confirmable ``GET /fw/<kind>/<digest>`` per block; the
gateway answers hundreds of them per second per download wave. Through aiocoap each costs a full
message decode, the message manager's and the token manager's bookkeeping, the resource
dispatch, a response object and its encoding: several times the work of the answer itself. The
file is immutable and already in the gateway's cache, so the answer is a slice of cached bytes
behind a few fixed options.

:func:`parse_fw_get` recognises exactly that request in a datagram :func:`workers.lwm2m.wire.screen`
passed: confirmable GET, Uri-Path ``fw``/``<kind>``/``<64 hex digits>``, at most a Block2 option
besides, no payload. :func:`encode_block2` builds the same piggybacked 2.05 the firmware resource
(``workers.lwm2m.fwserver.FirmwareResource``) sends: ETag, Content-Format 42, Max-Age 86400,
Block2 and Size2. Anything else (another option, a NON request, an upper-case digest, a block
past the end, a file not cached) is not recognised and goes through aiocoap as before, so every
refusal and every rule of the firmware resource stays where it is.

Most requests of a download repeat one already answered: the same file, the same 1 KiB block,
only the message id and token differ. :func:`remember` keeps the answer of such a request past
its header and token, keyed by the request's bytes past its Uri-Path; :func:`replay` finds it
with two dictionary lookups on slices of the datagram (the Uri-Path bytes of a cached file, then
the rest) and puts the new message id and token in front. Only requests byte-equal past the
token to one :func:`parse_fw_get` recognised (and :func:`workers.lwm2m.wire.screen` passed) are
replayed, so the screen need not run again for them; anything else is not found and takes the
way above.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.lwm2m.blocks import MAX_SZX

GET = 1
CONTENT = (2 << 5) | 5
URI_PATH = 11
BLOCK2 = 23
CT_OPAQUE = 42
MAX_AGE = 86400
DEFAULT_BLOCK_SZX = 6
KINDS = frozenset(("m", "i", "s", "t"))
_HEX = frozenset(b"0123456789abcdef")


@dataclass(frozen=True)
class FwGet:
    """A recognised request: message id, token, file kind and digest, Block2 (num, szx) or
    None when the request carries no Block2."""

    mid: int
    token: bytes
    kind: str
    digest: str
    block2: tuple[int, int] | None


def parse_fw_get(data: bytes) -> FwGet | None:
    """The /fw GET in ``data`` (a screened datagram), or None when it is anything else."""
    if len(data) < 4 or data[0] >> 4 != 0x4 or data[1] != GET:  # version 1, CON
        return None
    token_length = data[0] & 0x0F
    pos = 4 + token_length
    end = len(data)
    number = 0
    segments: list[bytes] = []
    block2: tuple[int, int] | None = None
    while pos < end:
        head = data[pos]
        if head == 0xFF:
            return None  # a payload: not a plain GET
        delta, length = head >> 4, head & 0x0F
        pos += 1
        if delta > 13 or length > 13:
            return None  # an option number or length beyond what a /fw GET carries
        if delta == 13:
            if pos >= end:
                return None
            delta = data[pos] + 13
            pos += 1
        if length == 13:
            if pos >= end:
                return None
            length = data[pos] + 13
            pos += 1
        if pos + length > end:
            return None
        number += delta
        value = data[pos : pos + length]
        pos += length
        if number == URI_PATH:
            segments.append(value)
        elif number == BLOCK2 and block2 is None:
            raw = int.from_bytes(value, "big")
            block2 = (raw >> 4, raw & 0x7)
        else:
            return None
    if len(segments) != 3 or segments[0] != b"fw" or len(segments[2]) != 64:
        return None
    kind = segments[1]
    if len(kind) != 1 or kind.decode("ascii", "replace") not in KINDS:
        return None
    if not _HEX.issuperset(segments[2]):
        return None
    return FwGet(
        mid=int.from_bytes(data[2:4], "big"),
        token=data[4 : 4 + token_length],
        kind=kind.decode("ascii"),
        digest=segments[2].decode("ascii"),
        block2=block2,
    )


def _uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def _option(delta: int, value: bytes) -> bytes:
    # Deltas and lengths here stay below 269 (ETag 8 bytes, uints of at most 4).
    head = bytearray()
    d_nib, d_ext = (delta, b"") if delta < 13 else (13, bytes([delta - 13]))
    l_nib, l_ext = (len(value), b"") if len(value) < 13 else (13, bytes([len(value) - 13]))
    head.append((d_nib << 4) | l_nib)
    return bytes(head) + d_ext + l_ext + value


def static_options(etag: bytes) -> bytes:
    """ETag (4), Content-Format (12) and Max-Age (14) of a file: the same for every block."""
    return _option(4, etag) + _option(12 - 4, _uint(CT_OPAQUE)) + _option(14 - 12, _uint(MAX_AGE))


def encode_block2(request: FwGet, data: bytes, options: bytes) -> bytes | None:
    """The piggybacked 2.05 carrying the requested block of ``data`` (``options``: its
    :func:`static_options`), or None when the block does not exist (the firmware resource
    answers that one, 4.02)."""
    total = len(data)
    if request.block2 is None:
        num, szx = 0, DEFAULT_BLOCK_SZX
    else:
        num, szx = request.block2[0], min(request.block2[1], DEFAULT_BLOCK_SZX)
    if szx > MAX_SZX:
        return None
    size = 1 << (szx + 4)
    start = num * size
    if start >= total and not (total == 0 and num == 0):
        return None
    stop = min(start + size, total)
    more = stop < total
    token = request.token
    out = bytearray(
        (0x60 | len(token), CONTENT, request.mid >> 8, request.mid & 0xFF)
    )  # version 1, ACK
    out += token
    out += options
    previous = 14
    if more or request.block2 is not None or num > 0:
        out += _option(BLOCK2 - previous, _uint((num << 4) | (more << 3) | szx))
        previous = BLOCK2
    out += _option(28 - previous, _uint(total))
    if stop > start:
        out += b"\xff"
        out += data[start:stop]
    return bytes(out)


# Uri-Path "fw" (delta 11, length 2), the kind (length 1), the digest (64: length 13 + 51).
_PATH_HEAD = bytes((0xB2,)) + b"fw"
PATH_BYTES = 3 + 2 + 2 + 64


def path_key(kind: str, digest: str) -> bytes | None:
    """The exact Uri-Path options of a request :func:`parse_fw_get` takes for ``kind`` and
    ``digest`` (a lower-case hex SHA-256), or None for a name no such request can carry."""
    if kind not in KINDS or len(digest) != 64 or not _HEX.issuperset(digest.encode("ascii")):
        return None
    return _PATH_HEAD + bytes((0x01,)) + kind.encode("ascii") + b"\x0d\x33" + digest.encode("ascii")


def _block2_bytes(num: int) -> bytes:
    """The Block2 option (after Uri-Path) of block ``num`` of 1 KiB, as a client writes it."""
    return _option(BLOCK2 - URI_PATH, _uint((num << 4) | DEFAULT_BLOCK_SZX))


def remember(request: FwGet, datagram: bytes, answer: bytes, answers: dict[bytes, bytes]) -> None:
    """Keep ``answer`` (to ``request``, read from ``datagram``) in ``answers`` for
    :func:`replay`, when the request asks for a 1 KiB block (or none: block 0) in the shortest
    encoding, so a file keeps at most one answer per block."""
    start = 4 + len(request.token)
    rest = datagram[start + PATH_BYTES :]
    if request.block2 is None:
        if rest:
            return
    elif request.block2[1] != DEFAULT_BLOCK_SZX or rest != _block2_bytes(request.block2[0]):
        return
    if datagram[start : start + PATH_BYTES] != path_key(request.kind, request.digest):
        return
    answers[rest] = answer[start:]


def replay(datagram: bytes, paths: dict[bytes, dict[bytes, bytes]]) -> bytes | None:
    """The answer to ``datagram`` when it is a confirmable GET (version 1, token of at most 8
    bytes) whose bytes past the token equal those of a request :func:`remember` kept, under
    ``paths`` (cached files by :func:`path_key`); else None."""
    if len(datagram) < 4 + PATH_BYTES:
        return None
    first = datagram[0]
    if not 0x40 <= first <= 0x48 or datagram[1] != GET:
        return None
    start = first - 0x3C  # 4 + token length
    answers = paths.get(datagram[start : start + PATH_BYTES])
    if answers is None:
        return None
    tail = answers.get(datagram[start + PATH_BYTES :])
    if tail is None:
        return None
    return b"".join((bytes((first | 0x20, CONTENT)), datagram[2:start], tail))
