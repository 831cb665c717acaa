"""tinydtls's clock: every context counts from one origin, so handshake retransmissions fire on
time while new sessions keep opening (``workers.lwm2m.dtls``, "tinydtls's clock").

DTLSSocket moves tinydtls's process-wide clock origin to the current second in every ``DTLS()``
constructor; a retransmission deadline set before the move then never came while sessions kept
opening, and a burst of 1,000 DTLS devices did not all get in within 2 minutes.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from workers.lwm2m.dtls import (
    _run_retransmissions,
    clock_origin,
    dtls_missing,
    new_context,
    read_records,
    tinydtls_ticks,
)

pytestmark = pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))

CLIENT_HELLO = 1


def _expected_ticks() -> int:
    return int((time.time() - clock_origin()) * 1000)


def test_opening_contexts_leaves_the_clock_origin_where_it_was() -> None:
    new_context(pskId=b"-", pskStore={})
    origin = clock_origin()
    before = tinydtls_ticks()
    time.sleep(1.1)  # DTLSSocket's constructor would move the origin to this later second
    new_context(pskId=b"-", pskStore={})
    after = tinydtls_ticks()
    assert clock_origin() == origin
    assert after - before >= 1000
    assert abs(after - _expected_ticks()) < 100


def test_a_lost_client_hello_is_retransmitted_while_new_sessions_open() -> None:
    """The peer never answers; meanwhile a new context opens every 0.2 s (a burst of devices)."""
    sent: list[float] = []

    def write(_remote: object, data: bytes) -> int:
        if any(r.handshake_type == CLIENT_HELLO for r in read_records(data)):
            sent.append(time.monotonic())
        return len(data)

    async def scenario() -> None:
        client = new_context(
            read=lambda *_: 0,
            write=write,
            event=lambda *_: 0,
            pskId=b"dev",
            pskStore={b"dev": b"k" * 16},
        )
        session = client.connect("::1", 9)  # kept: a session dropped sends close_notify
        retransmissions = asyncio.create_task(_run_retransmissions(lambda: client))
        others = []
        for _ in range(15):
            others.append(new_context(pskId=b"-", pskStore={}))
            await asyncio.sleep(0.2)
        retransmissions.cancel()
        assert session is not None

    asyncio.run(scenario())
    # This tinydtls build retransmits a flight after 2 s (then 4 s, 8 s...): on time, while
    # the sessions were still opening.
    assert len(sent) >= 2, f"ClientHello sent {len(sent)} time(s) in 3 s"
    assert sent[1] - sent[0] < 3.5
