"""Interop of the gateway's Block1 writer (``device_requests.put_block1``, the push of a
firmware package to /5/0/0) with libcoap's ``coap-server`` (Debian libcoap3-bin, installed by
scripts/install-system-deps.sh): a 40 KB payload PUT to a dynamic resource reads back
byte-identical with Block2."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from workers.lwm2m.device_requests import put_block1
from workers.lwm2m.ports import claim_udp_port, release_udp_port

SERVER = next(
    (
        shutil.which(name)
        for name in ("coap-server", "coap-server-notls", "coap-server-openssl")
        if shutil.which(name)
    ),
    None,
)
# In CI the server is installed: a missing one fails there instead of skipping.
pytestmark = pytest.mark.skipif(
    SERVER is None and not os.environ.get("CI"),
    reason="libcoap's coap-server is not installed (run scripts/install-system-deps.sh as root)",
)

PAYLOAD = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1280))  # 40 KiB


@pytest.fixture
def coap_server() -> Iterator[int]:
    assert SERVER is not None, "coap-server (libcoap3-bin) is required"
    port = claim_udp_port("127.0.0.1")
    process = subprocess.Popen(
        [SERVER, "-d", "10", "-A", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        assert process.poll() is None, "coap-server exited at start"
        yield port
    finally:
        process.terminate()
        process.wait(5)
        release_udp_port("127.0.0.1", port)


async def _push_and_read(port: int, szx: int) -> tuple[aiocoap.Message, bytes]:
    context = await aiocoap.Context.create_client_context()
    try:
        uri = f"coap://127.0.0.1:{port}/5/0/0"
        answer = await put_block1(context, PAYLOAD, uri=uri, szx=szx, timeout=10)
        read = await asyncio.wait_for(
            context.request(aiocoap.Message(code=Code.GET, uri=uri)).response, timeout=10
        )
        return answer, read.payload
    finally:
        await context.shutdown()


@pytest.mark.parametrize("szx", [6, 4], ids=["1024", "256"])
def test_pushed_payload_reads_back_byte_identical_from_coap_server(
    coap_server: int, szx: int
) -> None:
    answer, back = asyncio.run(_push_and_read(coap_server, szx))
    assert answer.code in (Code.CREATED, Code.CHANGED), answer
    assert len(back) == len(PAYLOAD)
    assert hashlib.sha256(back).digest() == hashlib.sha256(PAYLOAD).digest()
