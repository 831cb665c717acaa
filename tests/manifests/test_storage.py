"""Content-addressed store: round trips, idempotence, corruption, digest hygiene, races."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.images.storage import (
    FileSystemImageStorage,
    ImageNotStoredError,
    ImageStorage,
    InvalidDigestError,
    StorageError,
    StorageIntegrityError,
    validate_digest,
)

DATA = b"firmware bytes " * 1000
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Shadow the Django-settings fixture from conftest: this module is pure and runs without
    Django (``pytest -p no:django``)."""


@pytest.fixture
def store(tmp_path: Path) -> FileSystemImageStorage:
    return FileSystemImageStorage(tmp_path / "images")


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_round_trip(store: FileSystemImageStorage) -> None:
    assert not store.exists(DIGEST)
    digest = store.put(DATA)
    assert digest == DIGEST
    assert store.exists(digest)
    assert store.read(digest) == DATA
    assert store.size(digest) == len(DATA)
    with store.open(digest) as stream:
        assert stream.read() == DATA
    path = store.path_for(digest)
    assert path == store.root / DIGEST[:2] / DIGEST[2:4] / DIGEST
    assert path.read_bytes() == DATA


def test_empty_blob_is_storable(store: FileSystemImageStorage) -> None:
    digest = store.put(b"")
    assert digest == hashlib.sha256(b"").hexdigest()
    assert store.read(digest) == b""


def test_put_is_idempotent_and_does_not_rewrite(store: FileSystemImageStorage) -> None:
    first = store.put(DATA)
    before = store.path_for(first).stat()
    assert store.put(DATA) == first
    after = store.path_for(first).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert sorted(p.name for p in store.root.rglob("*") if p.is_file()) == [first]


def test_uppercase_digest_is_normalised(store: FileSystemImageStorage) -> None:
    store.put(DATA)
    assert store.read(DIGEST.upper()) == DATA
    assert validate_digest(DIGEST.upper()) == DIGEST


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:-1], id="truncated"),
        pytest.param(lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], id="bit-flip"),
        pytest.param(lambda b: b + b"\0", id="appended"),
        pytest.param(lambda b: b"", id="emptied"),
    ],
)
def test_corruption_detected(store: FileSystemImageStorage, damage: Any) -> None:
    digest = store.put(DATA)
    path = store.path_for(digest)
    path.write_bytes(damage(DATA))
    with pytest.raises(StorageIntegrityError, match=digest):
        store.read(digest)
    with pytest.raises(StorageIntegrityError):
        store.open(digest)
    # exists() stays cheap and does not hash; the damage shows on read.
    assert store.exists(digest)


def test_put_heals_a_damaged_copy(store: FileSystemImageStorage) -> None:
    digest = store.put(DATA)
    store.path_for(digest).write_bytes(b"garbage")
    assert store.put(DATA) == digest
    assert store.read(digest) == DATA


def test_missing_blob(store: FileSystemImageStorage) -> None:
    assert not store.exists(DIGEST)
    for call in (store.read, store.open, store.size):
        with pytest.raises(ImageNotStoredError):
            call(DIGEST)


BAD_DIGESTS = [
    pytest.param("", id="empty"),
    pytest.param("ab", id="short"),
    pytest.param(DIGEST[:-1], id="63-chars"),
    pytest.param(DIGEST + "0", id="65-chars"),
    pytest.param("g" * 64, id="non-hex"),
    pytest.param(DIGEST + "\n", id="trailing-newline"),
    pytest.param(" " + DIGEST[1:], id="leading-space"),
    pytest.param("../" + DIGEST[3:], id="path-traversal"),
    pytest.param("ab/cd/" + DIGEST[6:], id="slashes"),
    pytest.param(bytes.fromhex(DIGEST), id="bytes"),
    pytest.param(None, id="none"),
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
@pytest.mark.parametrize("method", ["read", "open", "exists", "size", "path_for"])
def test_bad_digest_refused(store: FileSystemImageStorage, method: str, digest: Any) -> None:
    store.put(DATA)
    with pytest.raises(InvalidDigestError) as exc:
        getattr(store, method)(digest)
    assert isinstance(exc.value, StorageError)
    assert exc.value.code == "storage.invalid_digest"


def test_concurrent_puts_of_same_content(store: FileSystemImageStorage) -> None:
    data = os.urandom(1 << 20)
    barrier = threading.Barrier(16)

    def put() -> str:
        barrier.wait()
        return store.put(data)

    with ThreadPoolExecutor(max_workers=16) as pool:
        digests = list(pool.map(lambda _: put(), range(16)))
    assert set(digests) == {hashlib.sha256(data).hexdigest()}
    assert store.read(digests[0]) == data
    assert _temp_files(store.root) == []


def test_concurrent_puts_and_reads_of_many_blobs(store: FileSystemImageStorage) -> None:
    blobs = [bytes([i]) * (1000 + i) for i in range(40)]

    def put_then_read(blob: bytes) -> bool:
        digest = store.put(blob)
        return store.read(digest) == blob

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(put_then_read, blobs * 3))
    assert _temp_files(store.root) == []


def test_failed_write_leaves_no_partial_blob(
    store: FileSystemImageStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put(DATA)
    monkeypatch.undo()
    assert not store.exists(DIGEST)
    assert _temp_files(store.root) == []


def test_storage_error_codes_are_distinct() -> None:
    classes = [StorageError, InvalidDigestError, ImageNotStoredError, StorageIntegrityError]
    assert len({c.code for c in classes}) == len(classes)
    assert all(issubclass(c, StorageError) for c in classes)


class _MemoryStorage(ImageStorage):
    """Minimal backend: shows the interface's defaults (read via open, no local path)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = bytes(data)
        return digest

    def open(self, digest: str) -> BinaryIO:
        return io.BytesIO(self.blobs[validate_digest(digest)])

    def exists(self, digest: str) -> bool:
        return validate_digest(digest) in self.blobs

    def size(self, digest: str) -> int:
        return len(self.blobs[validate_digest(digest)])


def test_interface_defaults() -> None:
    with pytest.raises(TypeError):
        ImageStorage()  # type: ignore[abstract]
    mem = _MemoryStorage()
    digest = mem.put(DATA)
    assert mem.read(digest) == DATA
    assert mem.path_for(digest) is None


@settings(max_examples=50, deadline=None)
@given(blob=st.binary(max_size=4096))
def test_round_trip_any_bytes(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    store = FileSystemImageStorage(tmp_path_factory.mktemp("prop"))
    digest = store.put(blob)
    assert digest == hashlib.sha256(blob).hexdigest()
    assert store.read(digest) == blob
    assert store.size(digest) == len(blob)
