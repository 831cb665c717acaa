"""Registration interface and firmware server over real CoAP on loopback, including malformed
input: every bad request gets a CoAP error and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from tests.workers.lwm2m.conftest import DictFirmware, ListSink
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.gateway import Gateway, GatewayConfig

PAYLOAD = bytes(range(256)) * 41 + b"tail"  # 10500 bytes: 11 blocks of 1024
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def run_gateway(scenario: Callable[[Gateway, aiocoap.Context, ListSink], Awaitable[None]]) -> None:
    async def main() -> None:
        sink = ListSink()
        gateway = Gateway(
            GatewayConfig(
                gateway_id="gw-proto", port=0, min_lifetime=1, max_payload=2048, admission="open"
            ),
            bus=InMemoryCommandBus(),
            sink=sink,
            firmware=DictFirmware(images={DIGEST: PAYLOAD}),
        )
        await gateway.start()
        client = await aiocoap.Context.create_client_context()
        try:
            await asyncio.wait_for(scenario(gateway, client, sink), 20)
        finally:
            await client.shutdown()
            await gateway.stop()

    asyncio.run(main())


async def post(
    client: aiocoap.Context, gw: Gateway, path: str, query: list[str], payload: bytes = b""
) -> aiocoap.Message:
    message = aiocoap.Message(code=Code.POST, uri=f"{gw.config.base_uri}/{path}", payload=payload)
    message.opt.uri_query = query
    return await client.request(message).response


def test_register_update_deregister() -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context, sink: ListSink) -> None:
        response = await post(
            client, gw, "rd", ["ep=dev-1", "lt=60", "lwm2m=1.1", "b=U"], b"</1/0>,</3/0>,</5/0>"
        )
        assert response.code == Code.CREATED
        location = response.opt.location_path
        assert location[0] == "rd" and len(location) == 2
        assert gw.by_endpoint["dev-1"].lifetime == 60
        response = await post(client, gw, "/".join(location), ["lt=120"])
        assert response.code == Code.CHANGED
        assert gw.by_endpoint["dev-1"].lifetime == 120
        delete = aiocoap.Message(code=Code.DELETE, uri=f"{gw.config.base_uri}/{'/'.join(location)}")
        assert (await client.request(delete).response).code == Code.DELETED
        assert "dev-1" not in gw.by_endpoint
        await asyncio.sleep(0.1)
        kinds = [e["type"] for e in sink.events]
        assert kinds[0] == "registered" and "updated" in kinds and "deregistered" in kinds

    run_gateway(scenario)


def test_lwm2m_10_queue_binding_and_11_q_parameter() -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context, sink: ListSink) -> None:
        r10 = await post(client, gw, "rd", ["ep=old", "lt=60", "lwm2m=1.0", "b=UQ"], b"</3/0>")
        r11 = await post(client, gw, "rd", ["ep=new", "lt=60", "lwm2m=1.1", "Q"], b"</3/0>")
        assert r10.code == r11.code == Code.CREATED
        assert gw.by_endpoint["old"].queue_mode and gw.by_endpoint["old"].binding == "U"
        assert gw.by_endpoint["new"].queue_mode and gw.by_endpoint["new"].version == "1.1"

    run_gateway(scenario)


def test_lifetime_expiry_reports_offline() -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context, sink: ListSink) -> None:
        response = await post(client, gw, "rd", ["ep=short", "lt=1"], b"</3/0>")
        assert response.code == Code.CREATED
        await asyncio.sleep(2.5)
        assert "short" not in gw.by_endpoint
        assert [e["endpoint"] for e in sink.of("expired")] == ["short"]

    run_gateway(scenario)


BAD_REGISTRATIONS = [
    (["lt=60"], b"</3/0>", Code.BAD_REQUEST),  # no endpoint
    (["ep=x", "lt=abc"], b"</3/0>", Code.BAD_REQUEST),
    (["ep=x", "lt=0"], b"</3/0>", Code.BAD_REQUEST),
    (["ep=x", "lwm2m=9.9"], b"</3/0>", Code.BAD_REQUEST),
    (["ep=x", "b=Z"], b"</3/0>", Code.BAD_REQUEST),
    (["ep=x", "ep=y"], b"</3/0>", Code.BAD_REQUEST),
    (["ep=x"], b"<3/0", Code.BAD_REQUEST),  # malformed link format
    (["ep=x"], b"</a/b>", Code.BAD_REQUEST),
    (["ep=x"], b"</3/0/1/2>", Code.BAD_REQUEST),
    (["ep=x"], b"\xff\xfe", Code.BAD_REQUEST),
    (["ep=x"], b"</3/0>" + b",</3/1>" * 400, Code.REQUEST_ENTITY_TOO_LARGE),
]


@pytest.mark.parametrize(("query", "payload", "code"), BAD_REGISTRATIONS)
def test_malformed_registration_gets_coap_error(
    query: list[str], payload: bytes, code: Code, caplog: Any
) -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context, sink: ListSink) -> None:
        response = await post(client, gw, "rd", query, payload)
        assert response.code == code
        # ...and the gateway keeps serving.
        ok = await post(client, gw, "rd", ["ep=after"], b"</3/0>")
        assert ok.code == Code.CREATED

    caplog.set_level("WARNING", logger="workers.lwm2m.gateway")
    run_gateway(scenario)
    assert any("refused" in r.message for r in caplog.records)


def test_unknown_registration_update_is_404() -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context, sink: ListSink) -> None:
        assert (await post(client, gw, "rd/deadbeef", [])).code == Code.NOT_FOUND
        delete = aiocoap.Message(code=Code.DELETE, uri=f"{gw.config.base_uri}/rd/nope")
        assert (await client.request(delete).response).code == Code.NOT_FOUND

    run_gateway(scenario)


def test_firmware_blockwise_with_size2_and_etag() -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context, sink: ListSink) -> None:
        uri = f"{gw.config.base_uri}/fw/i/{DIGEST}"
        # aiocoap's own Block2 client reassembles it.
        whole = await client.request(aiocoap.Message(code=Code.GET, uri=uri)).response
        assert whole.code == Code.CONTENT and whole.payload == PAYLOAD
        # Block 3 directly (resume), 256-byte blocks.
        message = aiocoap.Message(code=Code.GET, uri=uri)
        message.opt.block2 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(3, False, 4)
        part = await client.request(message, handle_blockwise=False).response
        assert part.payload == PAYLOAD[768:1024]
        assert part.opt.size2 == len(PAYLOAD)
        assert part.opt.block2.more and part.opt.block2.block_number == 3
        assert part.opt.etag == hashlib.sha256(PAYLOAD).digest()[:8]
        # Past the end: 4.02.
        message = aiocoap.Message(code=Code.GET, uri=uri)
        message.opt.block2 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(99, False, 6)
        assert (
            await client.request(message, handle_blockwise=False).response
        ).code == Code.BAD_OPTION

    run_gateway(scenario)


@pytest.mark.parametrize("path", ["fw/i/" + "0" * 64, "fw/i/zz", "fw/x/" + "0" * 64, "nothing"])
def test_unknown_firmware_is_404(path: str) -> None:
    async def scenario(gw: Gateway, client: aiocoap.Context, sink: ListSink) -> None:
        msg = aiocoap.Message(code=Code.GET, uri=f"{gw.config.base_uri}/{path}")
        assert (await client.request(msg).response).code == Code.NOT_FOUND

    run_gateway(scenario)
