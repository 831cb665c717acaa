"""The gateway's in-memory PSK cache: what a refresh loads, keeps, refuses and logs.

The cache is what tinydtls's synchronous key lookup reads, so every rule about which key a
handshake may use lives here: rotation and removal take effect at the next refresh, keys the DTLS
stack cannot take (longer than 16 bytes) or that do not decrypt are refused with a log line, and
a miss asks for an early refresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from campaigns.psk import MAX_IDENTITY_BYTES, MAX_PSK_BYTES, encrypt_psk
from workers.lwm2m.dtls import PSKCache

SECRET = "test-deployment-secret"


class CountingSource:
    """Tokens in a dict; counts how often the secret is asked for (i.e. decryption ran)."""

    def __init__(self, keys: dict[str, bytes] | None = None) -> None:
        self.rows = {i: encrypt_psk(k, secret=SECRET) for i, k in (keys or {}).items()}
        self.secret_reads = 0
        self.fail = False

    def tokens(self) -> dict[str, bytes]:
        if self.fail:
            raise ConnectionError("database went away")
        return dict(self.rows)

    def secret(self) -> str:
        self.secret_reads += 1
        return SECRET


def _refresh(cache: PSKCache) -> None:
    async def run(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    asyncio.run(cache.refresh(run))


def test_keys_load_and_unknown_identity_misses() -> None:
    cache = PSKCache(CountingSource({"dev-1": b"k" * 16}))
    _refresh(cache)
    assert cache.key(b"dev-1") == b"k" * 16
    assert cache.key(b"dev-2") is None
    assert cache.key(b"\xff\xfe") is None  # not UTF-8: cannot be an endpoint name
    assert cache.has("dev-1") and not cache.has("dev-2")


def test_rotation_replaces_the_key_and_only_changed_rows_are_decrypted() -> None:
    source = CountingSource({"dev-1": b"a" * 16, "dev-2": b"b" * 16})
    cache = PSKCache(source)
    _refresh(cache)
    reads_after_first = source.secret_reads
    _refresh(cache)
    assert source.secret_reads == reads_after_first  # nothing changed: nothing decrypted
    source.rows["dev-1"] = encrypt_psk(b"c" * 16, secret=SECRET)
    _refresh(cache)
    assert cache.key(b"dev-1") == b"c" * 16
    assert cache.key(b"dev-2") == b"b" * 16


def test_removed_identity_is_refused_after_refresh() -> None:
    source = CountingSource({"dev-1": b"a" * 16})
    cache = PSKCache(source)
    _refresh(cache)
    del source.rows["dev-1"]
    _refresh(cache)
    assert cache.key(b"dev-1") is None and not cache.has("dev-1")


def test_key_longer_than_tinydtls_takes_is_refused_with_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # tinydtls copies the key into a 16-byte buffer unchecked: it must never be handed a longer one.
    cache = PSKCache(CountingSource({"dev-long": b"x" * (MAX_PSK_BYTES + 1), "ok": b"y" * 16}))
    with caplog.at_level(logging.ERROR, logger="workers.lwm2m.dtls"):
        _refresh(cache)
    assert cache.key(b"dev-long") is None
    assert cache.has("dev-long")  # provisioned (so NoSec may not claim it), but unusable
    assert cache.key(b"ok") == b"y" * 16
    assert "PSK of 'dev-long' is 17 bytes" in caplog.text


def test_identity_longer_than_tinydtls_takes_is_refused_with_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "urn:uuid:" + "a" * MAX_IDENTITY_BYTES
    cache = PSKCache(CountingSource({name: b"k" * 16}))
    with caplog.at_level(logging.ERROR, logger="workers.lwm2m.dtls"):
        _refresh(cache)
    assert cache.key(name.encode()) is None
    assert "longer than 32 bytes" in caplog.text


def test_token_under_another_secret_is_refused_with_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = CountingSource({"dev-1": b"k" * 16})
    source.rows["dev-forged"] = encrypt_psk(b"z" * 16, secret="some-other-secret")
    cache = PSKCache(source)
    with caplog.at_level(logging.ERROR, logger="workers.lwm2m.dtls"):
        _refresh(cache)
    assert cache.key(b"dev-forged") is None
    assert cache.key(b"dev-1") == b"k" * 16
    assert "PSK of 'dev-forged' refused" in caplog.text


def test_miss_brings_the_refresh_forward_and_failures_keep_old_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = CountingSource({"dev-1": b"a" * 16})
    cache = PSKCache(source, refresh_seconds=3600, miss_refresh_seconds=0.05)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def run(fn: Callable[[], Any]) -> Any:
            return await loop.run_in_executor(None, fn)

        await cache.refresh(run)
        task = asyncio.ensure_future(cache.run_forever(run))
        try:
            source.rows["dev-new"] = encrypt_psk(b"n" * 16, secret=SECRET)
            assert cache.key(b"dev-new") is None  # the miss asks for a refresh...
            for _ in range(100):
                if cache.key(b"dev-new") is not None:
                    break
                await asyncio.sleep(0.02)
            assert cache.key(b"dev-new") == b"n" * 16  # ...long before the hourly one
            source.fail = True
            cache.request_refresh()
            refreshes = cache.refreshes
            await asyncio.sleep(0.3)
            assert cache.refreshes == refreshes  # the failed one installed nothing
            assert cache.key(b"dev-1") == b"a" * 16
        finally:
            task.cancel()

    with caplog.at_level(logging.ERROR, logger="workers.lwm2m.dtls"):
        asyncio.run(scenario())
    assert "PSK cache refresh failed" in caplog.text


@pytest.mark.django_db
def test_provisioning_refuses_what_the_transport_cannot_take() -> None:
    from campaigns import device_services
    from campaigns.models import Device, DevicePSK
    from campaigns.psk import PSKError

    Device.objects.create(endpoint="dev-1")
    Device.objects.create(endpoint="d" * (MAX_IDENTITY_BYTES + 1))
    with pytest.raises(PSKError, match=r"1\.\.16 bytes"):
        device_services.device_psk_set(endpoint="dev-1", key=b"k" * (MAX_PSK_BYTES + 1))
    with pytest.raises(PSKError, match=r"1\.\.16 bytes"):
        device_services.device_psk_set(endpoint="dev-1", key=b"")
    with pytest.raises(PSKError, match="longer than 32 bytes"):
        device_services.device_psk_set(endpoint="d" * (MAX_IDENTITY_BYTES + 1), key=b"k" * 16)
    assert not DevicePSK.objects.exists()
    device_services.device_psk_set(endpoint="dev-1", key=b"k" * MAX_PSK_BYTES)
    assert device_services.device_psk_lookup(identity="dev-1") == b"k" * MAX_PSK_BYTES
