"""DTLS server stacks side by side: tinydtls (DTLSSocket, what the gateway runs) and mbed TLS
(python-mbedtls's DTLS server), PSK handshakes in one process, in memory, in the same run.

Plain script: ``python benchmarks/bench_dtls_stacks.py [--handshakes N]``. Each handshake is a
new client and a new server session with a stateless cookie exchange first (tinydtls always
sends a HelloVerifyRequest; the mbed TLS server does when given the client's address with
``setcookieparam``, which is how it refuses spoofed sources), then the PSK handshake
(TLS_PSK_WITH_AES_128_CCM_8), datagrams handed over in memory: no socket, no event loop, so the
figures are the stacks' own cost (plus the few Python calls that drive them).

Printed per stack: server CPU per handshake and handshakes per server CPU-second (what one
gateway core could do on DTLS alone), client CPU per handshake (what a simulated device costs),
and what each accepts: a 32-byte key and a 64-byte identity (an ``urn:uuid:`` endpoint is 45
bytes). Every handshake is checked to complete (both sides say so and application data
crosses); a stack that fails one is reported as an error, not timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import Report  # noqa: E402

KEY = bytes(range(16))
IDENTITY = b"bench-device-000001"
SUITE = "TLS-PSK-WITH-AES-128-CCM-8"


class Clock:
    """CPU time spent in one side's calls."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def run(self, step: Callable[[], Any]) -> Any:
        began = time.process_time()
        try:
            return step()
        finally:
            self.seconds += time.process_time() - began


# --- tinydtls (DTLSSocket), as the gateway and the load simulator drive it ------------------


def tinydtls_handshake(
    server_clock: Clock, client_clock: Clock, identity: bytes, key: bytes
) -> None:
    from DTLSSocket import dtls as dtlssocket

    from workers.lwm2m import dtls

    to_server: list[bytes] = []
    to_client: list[bytes] = []
    state: dict[str, Any] = {"client": False, "echo": b"", "flights": 0}

    def client_event(level: int, code: int) -> None:
        if level == 0 and code == 0x01DE:
            state["client"] = True

    def server_read(_sender: Any, data: bytes) -> int:
        state["echo"] = bytes(data)
        return len(data)

    def make_server() -> Any:
        server = dtls.new_context(
            read=server_read,
            write=lambda _r, d: to_client.append(bytes(d)) or len(d),
            event=lambda _l, _c: None,
            pskId=b"-",
            pskStore={identity: key},
        )
        dtls.configure_tinydtls(server)
        return server

    server = server_clock.run(make_server)
    server_session = dtlssocket.Session("::1", 1234)
    client = client_clock.run(
        lambda: dtls.new_context(
            read=lambda _s, d: len(d),
            write=lambda _r, d: to_server.append(bytes(d)) or len(d),
            event=client_event,
            pskId=identity,
            pskStore={identity: key},
        )
    )
    client_session = client_clock.run(lambda: client.connect("::1", 1234))
    for _ in range(20):
        if state["client"]:
            break
        state["flights"] += 1 if to_server else 0
        while to_server:
            datagram = to_server.pop(0)
            server_clock.run(lambda d=datagram: server.handleMessage(server_session, d))
        while to_client:
            datagram = to_client.pop(0)
            client_clock.run(lambda d=datagram: client.handleMessage(client_session, d))
    if not state["client"]:
        raise RuntimeError("tinydtls handshake did not complete")
    if state["flights"] < 3:  # ClientHello, ClientHello with the cookie, the key exchange
        raise RuntimeError("tinydtls: no cookie exchange")
    client_clock.run(lambda: client.write(client_session, b"ping"))
    while to_server:
        datagram = to_server.pop(0)
        server_clock.run(lambda d=datagram: server.handleMessage(server_session, d))
    if state["echo"] != b"ping":
        raise RuntimeError("tinydtls: application data did not cross")
    client_clock.run(lambda: client.resetPeer(client_session))
    server_clock.run(lambda: server.resetPeer(server_session))


# --- mbed TLS (python-mbedtls) ----------------------------------------------------------------


def mbedtls_handshake(
    server_clock: Clock, client_clock: Clock, identity: bytes, key: bytes
) -> None:
    from mbedtls import tls

    # One server context (its PSK store and cookie secret) for all sessions, as a gateway
    # would hold; one client context per device.
    contexts = _MBEDTLS.get((identity, key))
    if contexts is None:
        common: dict[str, Any] = {
            "ciphers": [SUITE],
            "validate_certificates": False,
            "lowest_supported_version": tls.DTLSVersion.DTLSv1_2,
        }
        contexts = _MBEDTLS[(identity, key)] = (
            tls.ServerContext(
                tls.DTLSConfiguration(pre_shared_key_store={identity.decode(): key}, **common)
            ),
            tls.ClientContext(
                tls.DTLSConfiguration(pre_shared_key=(identity.decode(), key), **common)
            ),
        )
    server_context, client_context = contexts
    peer = b"127.0.0.1:40000"  # the client's transport address, bound into the cookie

    def new_server() -> Any:
        buffer = server_context.wrap_buffers()
        buffer.setcookieparam(peer)
        return buffer

    server = server_clock.run(new_server)
    client = client_clock.run(lambda: client_context.wrap_buffers(None))

    over = tls.HandshakeStep.HANDSHAKE_OVER

    def drive(side: Any, clock: Clock) -> tuple[bytes, bool]:
        """Run ``side``'s handshake until it waits for the peer (or is over): what it wrote,
        and whether that was a HelloVerifyRequest (a server session ends there)."""
        out = b""
        verify = False
        while side._handshake_state is not over:
            try:
                clock.run(side.do_handshake)
            except tls.WantReadError:
                break
            except tls.WantWriteError:
                pass
            except tls.HelloVerifyRequest:
                verify = True
            pending = clock.run(lambda: side.peek_outgoing(65536))
            clock.run(lambda data=pending: side.consume_outgoing(len(data)))
            out += pending
            if verify:
                break
        return out, verify

    datagram, _ = drive(client, client_clock)
    for _ in range(20):
        if client._handshake_state is over and server._handshake_state is over:
            break
        reply = b""
        if datagram:
            server_clock.run(lambda s=server, d=datagram: s.receive_from_network(d))
            reply, verify = drive(server, server_clock)
            if verify:
                # The cookie exchange: the HelloVerifyRequest goes out; a fresh server session
                # (no state kept for an address that has not echoed a cookie) takes the
                # ClientHello that carries it.
                server = server_clock.run(new_server)
        if reply:
            client_clock.run(lambda r=reply: client.receive_from_network(r))
        datagram, _ = drive(client, client_clock)
    if not (client._handshake_state is over and server._handshake_state is over):
        raise RuntimeError("mbed TLS handshake did not complete")
    client_clock.run(lambda: client.write(b"ping"))
    out = client_clock.run(lambda: client.peek_outgoing(65536))
    client_clock.run(lambda: client.consume_outgoing(len(out)))
    server_clock.run(lambda: server.receive_from_network(out))
    if server_clock.run(lambda: server.read(64)) != b"ping":
        raise RuntimeError("mbed TLS: application data did not cross")


_MBEDTLS: dict[tuple[bytes, bytes], Any] = {}

STACKS: dict[str, Callable[[Clock, Clock, bytes, bytes], None]] = {
    "tinydtls (DTLSSocket 0.2.3)": tinydtls_handshake,
    "mbed TLS (python-mbedtls 2.10.1)": mbedtls_handshake,
}


def accepts(run: Callable[[Clock, Clock, bytes, bytes], None], identity: bytes, key: bytes) -> str:
    try:
        run(Clock(), Clock(), identity, key)
        return "yes"
    except Exception as exc:
        return f"no ({type(exc).__name__})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    args = parser.parse_args()
    report = Report()
    report.machine()
    for name, run in STACKS.items():
        try:
            run(Clock(), Clock(), IDENTITY, KEY)  # warm up, and fail before timing
        except ImportError as exc:
            report.error(f"{name}: not installed ({exc})")
            continue
        except Exception as exc:
            report.error(f"{name}: a handshake failed: {exc}")
            continue
        server, client = Clock(), Clock()
        began = time.perf_counter()
        for _ in range(args.handshakes):
            run(server, client, IDENTITY, KEY)
        wall = time.perf_counter() - began
        per_s = args.handshakes / server.seconds if server.seconds else float("inf")
        print(
            f"INFO {name}: {args.handshakes:,} handshakes (cookie exchange, PSK, CCM_8) in "
            f"{wall:.2f} s; server {server.seconds / args.handshakes * 1e6:,.0f} us CPU each = "
            f"{per_s:,.0f} handshakes per server CPU-second; client "
            f"{client.seconds / args.handshakes * 1e6:,.0f} us CPU each"
        )
        if run is tinydtls_handshake:
            # Not tried: DTLSSocket copies a key unchecked into a 16-byte buffer (dtls.py
            # refuses longer keys before they reach it).
            print(f"INFO {name}: keys up to 16 bytes, identities up to 32 bytes (its limits)")
        else:
            print(
                f"INFO {name}: 32-byte key: {accepts(run, IDENTITY, bytes(range(32)))}; "
                f"64-byte identity: {accepts(run, b'urn:dev:' + b'x' * 56, KEY)}"
            )
    return report.exit_status()


if __name__ == "__main__":
    raise SystemExit(main())
