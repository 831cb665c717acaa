"""Readiness checks: can this process do its work right now?

Each check talks to one dependency (the database, the Celery broker, the firmware store) and
is run in its own thread with a deadline (``READINESS_TIMEOUT_SECONDS``), so a dependency that
hangs (a black-holed database host, a broker behind a dead load balancer) makes the probe
answer "fail" within the deadline instead of hanging the probe and the worker thread serving
it. The answer names each check with its status and latency; the reason of a failure is
logged (with the request id), and only the exception's type is shown, so an unauthenticated
probe never reveals host names or credentials found in a driver's error message.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connections

from ops import tallies

logger = logging.getLogger(__name__)


class CheckFailedError(Exception):
    """A dependency answered, but not as a working one would."""

    code = "ops.check_failed"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    detail: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "status": "ok" if self.ok else "fail",
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.detail:
            out["detail"] = self.detail
        if self.error:
            out["error"] = self.error
        return out


def check_database() -> str:
    """One round trip on a fresh connection of this thread (closed after)."""
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            row = cursor.fetchone()
        if row is None or row[0] != 1:
            raise CheckFailedError("SELECT 1 did not answer 1")
    finally:
        connection.close()
    return connection.vendor


def check_broker() -> str:
    timeout = float(settings.READINESS_TIMEOUT_SECONDS)
    if str(settings.CELERY_BROKER_URL or "").startswith("memory://"):
        return "in-process (embedded)"
    url = tallies.redis_url()
    if url is not None:
        import redis

        # Its own client (not the tallies'): the probe's timeout is the readiness deadline.
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            if not client.ping():
                raise CheckFailedError("PING not answered")
        finally:
            client.close()
        return "redis"
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
    return "broker"


def check_storage() -> str:
    """The firmware store accepts a new file (created and removed in place)."""
    root = Path(settings.FIRMWARE_STORAGE_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=root, prefix=".readyz-", delete=True) as probe:
        probe.write(b"ok")
        probe.flush()
    return "writable"


CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
}


def _timed(name: str, check: Callable[[], str]) -> CheckResult:
    started = time.perf_counter()
    try:
        detail = check()
    except Exception as exc:
        logger.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
        return CheckResult(
            name, False, (time.perf_counter() - started) * 1000, error=type(exc).__name__
        )
    return CheckResult(name, True, (time.perf_counter() - started) * 1000, detail=detail)


def run_checks(
    checks: dict[str, Callable[[], str]] | None = None, *, timeout: float | None = None
) -> list[CheckResult]:
    """All checks at once, each bounded by ``timeout`` seconds; a check still running then
    is reported as a timeout (its thread is left to finish on its own)."""
    checks = CHECKS if checks is None else checks
    timeout = float(settings.READINESS_TIMEOUT_SECONDS) if timeout is None else timeout
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(checks), thread_name_prefix="readyz"
    )
    started = time.perf_counter()
    try:
        # Each check runs in a copy of this context, so its log lines carry the request id.
        futures = {
            name: pool.submit(contextvars.copy_context().run, _timed, name, check)
            for name, check in checks.items()
        }
        results = []
        for name, future in futures.items():
            remaining = max(0.0, timeout - (time.perf_counter() - started))
            try:
                results.append(future.result(timeout=remaining))
            except concurrent.futures.TimeoutError:
                logger.warning("readiness check %s did not answer within %.1f s", name, timeout)
                results.append(
                    CheckResult(
                        name, False, (time.perf_counter() - started) * 1000, error="timeout"
                    )
                )
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
