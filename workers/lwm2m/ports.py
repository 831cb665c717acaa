"""Exclusive UDP ports for CoAP endpoints that would otherwise bind port 0.

aiocoap's ``udp6`` transport sets ``SO_REUSEPORT`` on its socket. When such a socket binds
port 0, Linux's automatic port choice skips only ports held by sockets that do *not* allow
reuse, so two reuse-port sockets of the same user can be handed the same ephemeral port (seen:
about 15 shared ports among 1,000 contexts). The kernel then spreads incoming datagrams over
both sockets by a hash of the sender's address: every retransmission of one peer lands on the
wrong socket, which drops it as unmatched. A simulated device would never see its
registration's ``2.01 Created``; a gateway could receive a device's traffic meant for another.

The cure is to choose the port first with a probe socket that does not set ``SO_REUSEPORT``
(the kernel then avoids every port in use, reuse-port or not), close the probe and bind the
CoAP context to that port. Ports handed out in this process are remembered until released, so
two endpoints created in quick succession never get the same one.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

# Probes before giving up (the kernel picks a fresh random port each time).
PROBE_ATTEMPTS = 64

_lock = threading.Lock()
_claimed: set[tuple[str, int]] = set()


def _probe_socket(host: str) -> socket.socket:
    """A datagram socket of the family aiocoap's udp6 transport uses for ``host``."""
    address = ipaddress.ip_address(host)
    if address.version == 4:
        # aiocoap binds IPv4 addresses as IPv4-mapped IPv6 on a dual-stack socket; probe the
        # same way so conflicts are judged as the real bind will see them.
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((f"::ffff:{address}", 0))
        return sock
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def claim_udp_port(host: str) -> int:
    """A port on ``host`` that no socket holds now and that this process has not handed out."""
    with _lock:
        for _ in range(PROBE_ATTEMPTS):
            with _probe_socket(host) as probe:
                port = int(probe.getsockname()[1])
            if (host, port) not in _claimed:
                _claimed.add((host, port))
                return port
    raise OSError(f"no free UDP port on {host} after {PROBE_ATTEMPTS} probes")


def release_udp_port(host: str, port: int) -> None:
    """Forget a claimed port once its endpoint has closed (unknown ports are ignored)."""
    with _lock:
        _claimed.discard((host, port))


class PortInUseError(OSError):
    """The gateway's port is held by another socket and sharing it was not asked for."""


def require_free_udp_port(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` when any socket holds ``host:port`` (a probe bind without
    ``SO_REUSEPORT`` fails then, whether the holder allows reuse or not)."""
    address = ipaddress.ip_address(host)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((f"::ffff:{address}" if address.version == 4 else host, port))
    except OSError as exc:
        raise PortInUseError(
            f"UDP {host}:{port} is in use ({exc.strerror}); to serve it with the gateways "
            "already there, start every one of them with --reuse-port"
        ) from None
    finally:
        sock.close()
