"""The direct answer to a Block2 GET of a cached /fw file (``workers.lwm2m.fastfw``): byte for
byte what the firmware resource sends through aiocoap, given only for that request, and never for
a file the gateway does not cache."""

from __future__ import annotations

import asyncio
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
