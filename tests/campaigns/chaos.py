"""The faults of the chaos scenario, each owned by the test that starts it: a Redis server of its
own (broker and command bus; append-only file fsynced on every write, as a deployment that must
lose nothing runs it), a TCP proxy in front of PostgreSQL that can refuse connections, and the
gateway and Celery worker processes (only these are ever signalled).

Used by tests/campaigns/test_chaos_e2e.py and benchmarks/bench_chaos.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on a free port with an append-only file fsynced at every write: killed
    with SIGKILL and started again on the same port and directory, it has lost nothing."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_tcp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        give_up = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > give_up:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, down_seconds: float) -> None:
        self.kill()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class RefusingProxy:
    """A TCP proxy to ``target`` on a loop of its own. ``refuse()`` closes the listening socket
    and every connection through it (clients see resets, then refused connections) until
    ``accept()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_tcp_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.outages = 0

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        self.thread.start()
        self.accept()

    def accept(self) -> None:
        async def listen() -> None:
            self.server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

        self._call(listen())

    def refuse(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()
                self.server = None
            for writer in list(self.writers):
                writer.transport.abort()
            self.writers.clear()

        self._call(close())
        self.outages += 1

    def stop(self) -> None:
        self.refuse()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.discard(writer)
        self.writers.discard(up_writer)


class Processes:
    """Gateway and Celery worker processes of one scenario, started with one environment."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.workers: list[subprocess.Popen[bytes]] = []
        self.gateways: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        self.killed: list[str] = []
        self._logs: list[Path] = []

    def _popen(self, name: str, argv: list[str], extra: dict[str, str]) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"{name}.log"
        self._logs.append(path)
        with path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO_ROOT,
                env={**self.env, **extra},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_worker(self) -> subprocess.Popen[bytes]:
        n = len(self.workers)
        proc = self._popen(
            f"worker-{n}",
            [
                "-m", "celery", "-A", "config", "worker", "--pool=solo",
                "-Q", self.env["FWUPD_TEST_CELERY_QUEUE"], "-n", f"chaos-{n}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel=INFO",
            ],
            {},
        )  # fmt: skip
        self.workers.append(proc)
        return proc

    def start_gateway(self, gateway_id: str, port: int) -> None:
        proc = self._popen(
            f"gateway-{gateway_id}",
            [
                "manage.py",
                "lwm2m_gateway",
                "--bind",
                f"127.0.0.1:{port}",
                "--gateway-id",
                gateway_id,
            ],
            {},
        )
        self.gateways[gateway_id] = (proc, port)

    def kill_gateway(self, gateway_id: str) -> None:
        proc, _ = self.gateways[gateway_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.killed.append(f"gateway {gateway_id}")

    def kill_worker(self, index: int) -> None:
        proc = self.workers[index]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.killed.append(f"worker {index}")

    def stop(self) -> None:
        procs = [*self.workers, *(p for p, _ in self.gateways.values())]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def logs(self, tail: int = 6000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in self._logs
            if p.exists()
        )


def process_env(
    *, database_url: str, redis_url: str, queue: str, firmware_root: str
) -> dict[str, str]:
    """The environment of the scenario's gateways and workers: PostgreSQL through the proxy,
    Redis the scenario's own, events and commands on it, the scenario's own Celery queue."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "LWM2M_COMMAND_BUS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "tests.campaigns.worker_settings",
        "FWUPD_TEST_CELERY_QUEUE": queue,
        "LWM2M_ADMISSION": "open",
        "LWM2M_ACCEPT_NOSEC": "1",
        "LWM2M_FW_POLL_SECONDS": "1",
        "LOG_LEVEL": "INFO",
        "FIRMWARE_STORAGE_ROOT": firmware_root,
    }
    return env


@contextlib.contextmanager
def suppressed() -> Any:
    with contextlib.suppress(Exception):
        yield
