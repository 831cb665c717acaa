"""Exclusive ports for CoAP endpoints (workers/lwm2m/ports.py).

aiocoap's udp6 sockets set SO_REUSEPORT, and Linux may give two such sockets bound to port 0
the same port; the claimed ports must never be shared, with each other or with a reuse-port
socket already bound.
"""

from __future__ import annotations

import socket

import pytest

from workers.lwm2m import ports


def _reuseport_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("::ffff:127.0.0.1", port))
    return sock


class _Probe:
    """Stands in for the probe socket, offering a chosen port."""

    def __init__(self, port: int) -> None:
        self.port = port

    def getsockname(self) -> tuple[str, int]:
        return ("::ffff:127.0.0.1", self.port)

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_claimed_ports_are_distinct_and_never_held_by_a_reuseport_socket():
    held = [_reuseport_socket() for _ in range(300)]
    claimed: list[int] = []
    try:
        taken = {s.getsockname()[1] for s in held}
        claimed = [ports.claim_udp_port("127.0.0.1") for _ in range(300)]
        assert len(set(claimed)) == len(claimed)
        assert not taken & set(claimed)
        # Each claimed port can be bound (the way aiocoap binds it) next to the held sockets.
        bound = [_reuseport_socket(port) for port in claimed]
        for sock in bound:
            sock.close()
    finally:
        for sock in held:
            sock.close()
        for port in claimed:
            ports.release_udp_port("127.0.0.1", port)


def test_a_claimed_port_is_not_handed_out_again_until_released(monkeypatch):
    # The kernel may offer a just-closed probe port again; the process-wide record refuses it.
    offered = iter([40001, 40001, 40002])

    monkeypatch.setattr(ports, "_probe_socket", lambda host: _Probe(next(offered)))
    try:
        assert ports.claim_udp_port("127.0.0.1") == 40001
        assert ports.claim_udp_port("127.0.0.1") == 40002
    finally:
        ports.release_udp_port("127.0.0.1", 40001)
        ports.release_udp_port("127.0.0.1", 40002)


def test_no_free_port_is_an_os_error(monkeypatch):
    monkeypatch.setattr(ports, "PROBE_ATTEMPTS", 2)
    monkeypatch.setattr(ports, "_claimed", {("127.0.0.1", 40003)})

    monkeypatch.setattr(ports, "_probe_socket", lambda host: _Probe(40003))
    with pytest.raises(OSError, match="no free UDP port"):
        ports.claim_udp_port("127.0.0.1")
