"""The direct answer to a Block2 GET of a cached /fw file (``workers.lwm2m.fastfw``): byte for
byte what the firmware resource sends through aiocoap, given only for that request, and never for
a file the gateway does not cache."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from tests.workers.lwm2m.conftest import DictFirmware, ListSink
from workers.lwm2m import fastfw
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.fwserver import FirmwareResource
from workers.lwm2m.gateway import Gateway, GatewayConfig

PAYLOAD = bytes(range(256)) * 41 + b"tail"  # 10500 bytes: 11 blocks of 1024
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
ENVELOPE = b"\xd8\x6b" + bytes(300)
ENVELOPE_DIGEST = hashlib.sha256(b"a manifest").hexdigest()


@dataclass
class UnapprovedFirmware(DictFirmware):
    """Envelopes whose release is not approved yet: served, never cached."""

    def envelope_final(self, manifest_digest: str) -> bool:
        return False


def run(scenario: Callable[[Gateway, aiocoap.Context], Awaitable[None]]) -> None:
    async def main() -> None:
        gateway = Gateway(
            GatewayConfig(gateway_id="gw-direct", port=0, max_payload=2048, admission="open"),
            bus=InMemoryCommandBus(),
            sink=ListSink(),
            firmware=UnapprovedFirmware(
                images={DIGEST: PAYLOAD}, envelopes={ENVELOPE_DIGEST: ENVELOPE}
            ),
        )
        await gateway.start()
        client = await aiocoap.Context.create_client_context()
        try:
            await asyncio.wait_for(scenario(gateway, client), 20)
        finally:
            await client.shutdown()
            await gateway.stop()

    asyncio.run(main())


def request(
    path: list[str],
    block2: tuple[int, int] | None = None,
    *,
    mtype: Type = Type.CON,
    code: Code = Code.GET,
    payload: bytes = b"",
) -> aiocoap.Message:
    message = aiocoap.Message(code=code, payload=payload)
    message.mtype, message.mid, message.token = mtype, 0x1234, b"\x01\x02\x03\x04"
    message.opt.uri_path = path
    if block2 is not None:
        message.opt.block2 = BlockOption.BlockwiseTuple(block2[0], False, block2[1])
    return message


async def through_resource(gw: Gateway, message: aiocoap.Message) -> bytes:
    """What the firmware resource answers, encoded as aiocoap sends it (piggybacked ACK)."""
    response = await FirmwareResource(gw).serve(message, tuple(message.opt.uri_path[1:]))
    response.mtype, response.mid, response.token = Type.ACK, message.mid, message.token
    encoded: bytes = response.encode()
    return encoded


BLOCKS = [None, (0, 6), (3, 4), (10, 6), (9, 6), (0, 0), (655, 0), (2, 7), (1, 5)]


@pytest.mark.parametrize("block2", BLOCKS)
def test_direct_answer_is_the_firmware_resource_answer_byte_for_byte(
    block2: tuple[int, int] | None,
) -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        message = request(["fw", "i", DIGEST], block2)
        assert gw.direct_fw_answer(message.encode()) is None  # not cached yet
        expected = await through_resource(gw, message)  # loads it into the cache
        direct = gw.direct_fw_answer(message.encode())
        assert direct == expected
        decoded = aiocoap.Message.decode(direct)
        assert decoded.code == Code.CONTENT and decoded.opt.size2 == len(PAYLOAD)

    run(scenario)


def test_direct_answers_reach_a_device_over_the_plain_listener() -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        uri = f"{gw.config.base_uri}/fw/i/{DIGEST}"
        answered_before = gw.guard.received
        whole = await client.request(aiocoap.Message(code=Code.GET, uri=uri)).response
        assert whole.payload == PAYLOAD
        assert ("i", DIGEST) in gw._fw_cache
        # Again, now from the cache: every block answered directly, the same bytes.
        again = await client.request(aiocoap.Message(code=Code.GET, uri=uri)).response
        assert again.payload == PAYLOAD and again.opt.etag == whole.opt.etag
        assert gw.guard.received - answered_before == 22
        assert not gw.guard.counts

    run(scenario)


@pytest.mark.parametrize(
    "message",
    [
        request(["fw", "i", DIGEST], mtype=Type.NON),
        request(["fw", "i", DIGEST], code=Code.POST),
        request(["fw", "i", DIGEST], code=Code.PUT, payload=b"x"),
        request(["fw", "i", DIGEST.upper()]),
        request(["fw", "i", DIGEST, "x"]),
        request(["fw", "i"]),
        request(["fw", "x", DIGEST]),
        request(["FW", "i", DIGEST]),
        request(["fw", "i", DIGEST[:-1] + "g"]),
        request(["fw", "i", "0" * 64]),
        request(["fw", "i", DIGEST], (11, 6)),
        request(["fw", "i", DIGEST], (2**19, 0)),
    ],
    ids=[
        "non",
        "post",
        "put",
        "upper-case",
        "longer-path",
        "shorter-path",
        "unknown-kind",
        "other-root",
        "not-hex",
        "not-published",
        "past-the-end",
        "far-past-the-end",
    ],
)
def test_other_requests_are_left_to_the_firmware_resource(message: aiocoap.Message) -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        await gw.published_file("i", DIGEST)
        assert gw.direct_fw_answer(request(["fw", "i", DIGEST]).encode()) is not None
        assert gw.direct_fw_answer(message.encode()) is None

    run(scenario)


@pytest.mark.parametrize("option", ["uri_query", "accept", "etag", "uri_host", "if_none_match"])
def test_requests_with_other_options_are_left_to_the_firmware_resource(option: str) -> None:
    values = {
        "uri_query": ["a=b"],
        "accept": 42,
        "etag": b"12345678",
        "uri_host": "gw.example",
        "if_none_match": True,
    }

    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        await gw.published_file("i", DIGEST)
        message = request(["fw", "i", DIGEST], (1, 6))
        setattr(message.opt, option, values[option])
        assert gw.direct_fw_answer(message.encode()) is None

    run(scenario)


def test_unapproved_envelope_is_never_answered_directly() -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        message = request(["fw", "m", ENVELOPE_DIGEST])
        assert aiocoap.Message.decode(await through_resource(gw, message)).payload == ENVELOPE
        # Served, but not kept: its released envelope replaces it at approval.
        assert gw.direct_fw_answer(message.encode()) is None

    run(scenario)


def test_mangled_fw_get_datagrams_are_refused_by_the_direct_parser() -> None:
    """Every prefix and every single-byte change of a valid request: the parser answers a
    well-formed request or None, and never raises."""
    valid = request(["fw", "i", DIGEST], (3, 6)).encode()
    assert fastfw.parse_fw_get(valid) is not None
    rng = random.Random(21)  # noqa: S311 - reproducible mutations, not secrets
    candidates = [valid[:n] for n in range(len(valid))]
    for _ in range(3000):
        mangled = bytearray(valid)
        mangled[rng.randrange(len(valid))] = rng.randrange(256)
        candidates.append(bytes(mangled))
    for datagram in candidates:
        parsed = fastfw.parse_fw_get(datagram)
        if parsed is not None:
            assert parsed.kind in fastfw.KINDS and len(parsed.digest) == 64
            answer = fastfw.encode_block2(parsed, PAYLOAD, fastfw.static_options(b"e" * 8))
            if answer is not None:
                assert aiocoap.Message.decode(answer).code == Code.CONTENT


def _with(message: aiocoap.Message, mid: int, token: bytes) -> bytes:
    message.mid, message.token = mid, token
    return message.encode()


def test_replayed_answers_are_the_direct_answers_with_the_new_id_and_token() -> None:
    """A request equal past its token to one answered directly is answered from what was kept,
    byte for byte what the direct answer (and so the firmware resource) gives it."""

    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        await gw.published_file("i", DIGEST)
        for block2 in [None, *((n, 6) for n in range(11))]:
            message = request(["fw", "i", DIGEST], block2)
            first = _with(message, 1, b"\x01")
            assert gw.known_fw_answer(first) is None  # not answered yet
            assert gw.direct_fw_answer(first) is not None
            for mid, token in ((2, b""), (0xFFFF, b"\xaa" * 8), (7, b"\x01\x02\x03")):
                again = _with(message, mid, token)
                assert gw.known_fw_answer(again) == gw.direct_fw_answer(again)
                decoded = aiocoap.Message.decode(gw.known_fw_answer(again))
                assert decoded.mid == mid and decoded.token == token

    run(scenario)


@pytest.mark.parametrize(
    "block2", [(3, 4), (0, 0), (2, 7), (1, 5)], ids=["256", "16", "bert", "512"]
)
def test_only_1_kib_blocks_are_kept_for_replay(block2: tuple[int, int]) -> None:
    """Other block sizes are answered directly each time, never kept: a file keeps at most one
    answer per 1 KiB block."""

    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        await gw.published_file("i", DIGEST)
        datagram = request(["fw", "i", DIGEST], block2).encode()
        assert gw.direct_fw_answer(datagram) is not None
        assert gw.known_fw_answer(datagram) is None
        assert not gw._fw_cache[("i", DIGEST)].answers

    run(scenario)


def test_a_block2_option_in_a_longer_encoding_is_not_kept() -> None:
    """The same block asked with a zero-padded Block2 value or the M bit set: answered
    directly, not kept (one kept answer per block, whatever a client sends)."""

    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        await gw.published_file("i", DIGEST)
        canonical = request(["fw", "i", DIGEST], (1, 6)).encode()
        assert canonical.endswith(b"\xc1\x16")
        for variant in (canonical[:-2] + b"\xc2\x00\x16", canonical[:-2] + b"\xc1\x1e"):
            assert gw.direct_fw_answer(variant) == gw.direct_fw_answer(canonical)
            assert gw.known_fw_answer(variant) is None
        assert list(gw._fw_cache[("i", DIGEST)].answers) == [b"\xc1\x16"]

    run(scenario)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: bytes((0x50 | (d[0] & 0x0F),)) + d[1:],  # NON
        lambda d: d[:1] + b"\x02" + d[2:],  # POST
        lambda d: d + b"\xff\x00",  # a payload
        lambda d: d[:-1] + bytes((d[-1] ^ 0x01,)),  # another block, never asked
        lambda d: d.replace(DIGEST.encode(), DIGEST.upper().encode()),  # upper case
        lambda d: d[:-2],  # no Block2: block 0, never asked that way
        lambda d: d[:20],  # cut
        lambda d: b"",
        lambda d: d[:2],
    ],
    ids=["non", "post", "payload", "other-block", "upper-case", "no-block2", "cut", "empty", "2"],
)
def test_anything_but_a_repeat_is_not_replayed(change: Callable[[bytes], bytes]) -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        await gw.published_file("i", DIGEST)
        datagram = request(["fw", "i", DIGEST], (4, 6)).encode()
        assert gw.direct_fw_answer(datagram) is not None
        assert gw.known_fw_answer(datagram) is not None
        assert gw.known_fw_answer(change(datagram)) is None

    run(scenario)


def test_a_file_dropped_from_the_cache_is_not_replayed() -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        await gw.published_file("i", DIGEST)
        datagram = request(["fw", "i", DIGEST], (4, 6)).encode()
        gw.direct_fw_answer(datagram)
        assert gw.known_fw_answer(datagram) is not None
        import workers.lwm2m.fwserver as fwserver

        limit = fwserver.FW_CACHE_BYTES
        fwserver.FW_CACHE_BYTES = len(ENVELOPE)  # the next file pushes the image out
        try:
            gw.firmware.envelope_final = lambda digest: True  # type: ignore[method-assign]
            await gw.published_file("m", ENVELOPE_DIGEST)
        finally:
            fwserver.FW_CACHE_BYTES = limit
        assert ("i", DIGEST) not in gw._fw_cache
        assert gw.known_fw_answer(datagram) is None
        assert list(gw._fw_paths) == [fastfw.path_key("m", ENVELOPE_DIGEST)]

    run(scenario)


def test_a_burst_of_requests_is_answered_in_full_over_the_listener() -> None:
    """Datagrams queued faster than the loop turns are all read (several per wake-up) and all
    answered: 400 requests sent at once from one socket, 400 answers with their own ids."""

    async def scenario(gw: Gateway, client: aiocoap.Context) -> None:
        import socket

        uri = f"{gw.config.base_uri}/fw/i/{DIGEST}"
        assert (await client.request(aiocoap.Message(code=Code.GET, uri=uri)).response).payload
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        # room for the answers to pile up while this loop is the gateway's too
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        try:
            loop = asyncio.get_running_loop()
            sent = {}
            for mid in range(400):
                message = request(["fw", "i", DIGEST], (mid % 11, 6))
                sent[mid] = message.opt.block2.block_number
                sock.sendto(
                    _with(message, mid, mid.to_bytes(2, "big")), ("127.0.0.1", gw.config.port)
                )
            got = {}
            while len(got) < len(sent):
                datagrams = [await loop.sock_recv(sock, 4096)]
                with contextlib.suppress(BlockingIOError):
                    while True:
                        datagrams.append(sock.recv(4096))
                for datagram in datagrams:
                    answer = aiocoap.Message.decode(datagram)
                    assert answer.token == answer.mid.to_bytes(2, "big")
                    got[answer.mid] = answer.opt.block2.block_number
            assert got == sent
            assert gw.guard.counts.get("malformed", 0) == 0
        finally:
            sock.close()

    run(scenario)
