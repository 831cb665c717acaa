"""Block2 arithmetic for serving immutable files (RFC 7959), pure.

A client may ask for any block number (resuming a download), with any size exponent 0..6
(16..1024 bytes; BERT's 7 is not used over UDP). Block ``num`` of size ``2**(szx+4)`` starts at
``num * size``; asking past the end is an error the server answers with 4.02 Bad Option.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.lwm2m.errors import LwM2MError

MAX_SZX = 6


class BlockOutOfRangeError(LwM2MError):
    """The requested block starts beyond the end of the resource."""

    code = "lwm2m.block_out_of_range"
    coap_code = "BAD_OPTION"


@dataclass(frozen=True)
class BlockSlice:
    start: int
    end: int
    more: bool
    num: int
    szx: int


def block_slice(total: int, num: int, szx: int) -> BlockSlice:
    if not 0 <= szx <= MAX_SZX:
        raise BlockOutOfRangeError(f"block size exponent {szx} not supported over UDP")
    size = 1 << (szx + 4)
    start = num * size
    if num < 0 or (start >= total and not (total == 0 and num == 0)):
        raise BlockOutOfRangeError(f"block {num} of size {size} starts beyond {total} bytes")
    end = min(start + size, total)
    return BlockSlice(start=start, end=end, more=end < total, num=num, szx=szx)
