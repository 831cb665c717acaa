"""Bounded reassembly of Block1 (RFC 7959) request bodies for the registration interface.

aiocoap's server-side spool (0.4.17) keeps every started body without a size limit until the
whole request is there (the gateway's 16 KiB check came after), and answers a gap in the block
numbers with 5.00 and a traceback. :class:`Block1Assembler` replaces it for ``/rd``. Invariants:

* a body never grows past ``max_bytes``: a declared Size1 above it is refused (4.13) before
  anything is kept, and a block that would take the body past it is refused (4.13) and the
  partial body dropped;
* at most ``max_assemblies`` bodies are held at once, at most ``max_per_peer`` per peer
  (oldest dropped first), each for at most ``ttl`` seconds since its last block: what a peer
  can make the gateway hold is ``max_assemblies * max_bytes`` bytes in all;
* a block that does not continue the body exactly (a gap, an overlap, no block 0 first) gets
  4.08 Request Entity Incomplete, and the body is dropped;
* a block other than the last must be exactly its declared size; SZX 7 (BERT, TCP only) is
  refused (4.00).

Pure: keys are opaque, time is a parameter (``now``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from workers.lwm2m.errors import LwM2MError, PayloadTooLargeError

MAX_SZX = 6


class BlockOptionError(LwM2MError):
    """A Block1 option that RFC 7959 does not allow here (SZX 7, wrong block size)."""

    code = "lwm2m.block1_invalid"


class IncompleteBodyError(LwM2MError):
    """A Block1 block that does not continue the body being assembled (gap, overlap, no start)."""

    code = "lwm2m.block1_incomplete"
    coap_code = "REQUEST_ENTITY_INCOMPLETE"


@dataclass
class _Body:
    peer: Hashable
    data: bytearray
    touched: float


class Block1Assembler:
    """Request bodies arriving in Block1 blocks, keyed by (peer, request identity)."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_assemblies: int = 256,
        max_per_peer: int = 4,
        ttl: float = 60.0,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_assemblies = max_assemblies
        self.max_per_peer = max_per_peer
        self.ttl = ttl
        self._bodies: OrderedDict[Hashable, _Body] = OrderedDict()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._bodies)

    @property
    def held_bytes(self) -> int:
        return sum(len(body.data) for body in self._bodies.values())

    def _expire(self, now: float) -> None:
        while self._bodies:
            key, body = next(iter(self._bodies.items()))
            if now - body.touched < self.ttl:
                return
            del self._bodies[key]
            self.dropped += 1

    def _make_room(self, peer: Hashable) -> None:
        mine = [key for key, body in self._bodies.items() if body.peer == peer]
        while len(mine) >= self.max_per_peer:
            del self._bodies[mine.pop(0)]
            self.dropped += 1
        while len(self._bodies) >= self.max_assemblies:
            self._bodies.popitem(last=False)
            self.dropped += 1

    def feed(
        self,
        key: Hashable,
        *,
        peer: Hashable,
        num: int,
        more: bool,
        szx: int,
        payload: bytes,
        size1: int | None,
        now: float,
    ) -> bytes | None:
        """Add one block; the whole body once the last block is in, None while more are due."""
        self._expire(now)
        if szx > MAX_SZX:
            self._bodies.pop(key, None)
            raise BlockOptionError("Block1 SZX 7 (BERT) is not used over UDP")
        size = 1 << (szx + 4)
        if size1 is not None and size1 > self.max_bytes:
            self._bodies.pop(key, None)
            raise PayloadTooLargeError(f"Size1 of {size1} bytes (at most {self.max_bytes})")
        if more and len(payload) != size:
            self._bodies.pop(key, None)
            raise BlockOptionError(f"block of {len(payload)} bytes where {size} were declared")
        if num == 0:
            self._bodies.pop(key, None)
            body = _Body(peer=peer, data=bytearray(), touched=now)
            if len(payload) > self.max_bytes:
                raise PayloadTooLargeError(f"payload of over {self.max_bytes} bytes")
            if not more:
                return bytes(payload)
            self._make_room(peer)
            self._bodies[key] = body
        else:
            found = self._bodies.get(key)
            if found is None or num * size != len(found.data):
                self._bodies.pop(key, None)
                raise IncompleteBodyError(
                    f"Block1 block {num} does not continue a body in progress"
                )
            body = found
            self._bodies.move_to_end(key)
        if len(body.data) + len(payload) > self.max_bytes:
            self._bodies.pop(key, None)
            raise PayloadTooLargeError(f"payload of over {self.max_bytes} bytes")
        body.data += payload
        body.touched = now
        if more:
            return None
        del self._bodies[key]
        return bytes(body.data)
