"""Helpers for the hostile-input tests: a gateway on its own thread and raw UDP peers."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.workers.lwm2m.conftest import DictFirmware, ListSink
from workers.lwm2m import fuzzcorpus
from workers.lwm2m.bus import InMemoryCommandBus
from workers.lwm2m.gateway import Gateway, GatewayConfig, GatewayThread

CON, NON, ACK = 0, 1, 2
GET, POST, DELETE = 1, 2, 4


class StaticSource:
    """Provisioned endpoints for a gateway without a database."""

    def __init__(self, endpoints: set[str]) -> None:
        self.known = set(endpoints)

    def endpoints(self) -> set[str]:
        return set(self.known)


@contextmanager
def gateway_thread(
    *, sink: Any = None, provisioned: set[str] | None = None, **config: Any
) -> Iterator[GatewayThread]:
    """A gateway on its own loop and thread; ``provisioned``: provisioned admission over that
    set (else open admission)."""
    settings: dict[str, Any] = {
        "gateway_id": "gw-hostile",
        "port": 0,
        "request_timeout": 1,
        "admission": "open" if provisioned is None else "provisioned",
        "psk_miss_refresh_seconds": 0.1,
        **config,
    }
    gateway = Gateway(
        GatewayConfig(**settings),
        bus=InMemoryCommandBus(),
        sink=sink if sink is not None else ListSink(),
        firmware=DictFirmware(),
        provisioned_source=StaticSource(provisioned or set()),
    )
    thread = GatewayThread(gateway).start()
    try:
        yield thread
    finally:
        thread.stop()


def request(
    code: int,
    *,
    path: list[bytes] | None = None,
    query: list[bytes] | None = None,
    payload: bytes = b"",
    mid: int = 0x1234,
    token: bytes = b"\x01\x02",
    mtype: int = CON,
    extra: list[tuple[int, bytes]] | None = None,
) -> bytes:
    """A CoAP request datagram built by hand (the fuzz corpus's builder, test defaults)."""
    return fuzzcorpus.coap_request(
        code, mid, path=path, query=query, extra=extra, payload=payload, token=token, mtype=mtype
    )


def block1_value(num: int, more: bool, szx: int) -> bytes:
    value = (num << 4) | (int(more) << 3) | szx
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


class Peer:
    """A UDP socket on loopback that speaks raw CoAP to the gateway."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.mid = random.randrange(0x10000)  # noqa: S311 - message ids, not secrets

    def next_mid(self) -> int:
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.target)

    def recv(self, timeout: float = 2.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None

    def exchange(self, data: bytes, timeout: float = 2.0) -> bytes | None:
        """Send ``data``; the first response to it (requests from the gateway - its
        device-information reads - are skipped; a separate response is acknowledged)."""
        self.send(data)
        while True:
            reply = self.recv(timeout)
            if reply is None:
                return None
            if 1 <= reply[1] <= 31 or reply[1] == 0:
                continue  # a request from the gateway, or an empty ACK: the response follows
            if (reply[0] >> 4) & 3 == CON:
                self.send(bytes([0x60, 0, reply[2], reply[3]]))
            return reply

    def close(self) -> None:
        self.sock.close()


def code_of(reply: bytes | None) -> str | None:
    """'4.00'-style code of a reply datagram."""
    if reply is None:
        return None
    return f"{reply[1] >> 5}.{reply[1] & 0x1F:02d}"


def payload_of(reply: bytes) -> bytes:
    marker = reply.find(b"\xff", 4 + (reply[0] & 0x0F))
    return reply[marker + 1 :] if marker >= 0 else b""


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
