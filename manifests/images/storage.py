"""Content-addressed image storage: a blob's name is the SHA-256 of its bytes.

Content addressing makes uploads idempotent (same bytes, same name), lets any reader check what
it got against the name it asked for, and matches SUIT, whose manifests name images by digest.
Pure Python with no Django import; the Django layer builds the configured instance.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "FileSystemImageStorage",
    "ImageNotStoredError",
    "ImageStorage",
    "InvalidDigestError",
    "StorageError",
    "StorageIntegrityError",
    "validate_digest",
]

_DIGEST = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class StorageError(Exception):
    """The image store refused or failed an operation; ``code`` is stable for API/CLI use."""

    code = "storage.error"


class InvalidDigestError(StorageError):
    """The digest is not 64 hex characters, so it cannot name a blob (and never a path)."""

    code = "storage.invalid_digest"


class ImageNotStoredError(StorageError):
    """No blob with that digest is in the store."""

    code = "storage.not_found"


class StorageIntegrityError(StorageError):
    """A stored blob no longer hashes to its name: disk corruption or tampering."""

    code = "storage.integrity"


def validate_digest(digest: str) -> str:
    """Normalise to lowercase hex, refusing anything else before it can become a file path."""
    if not isinstance(digest, str):
        raise InvalidDigestError(f"digest must be a hex string, got {type(digest).__name__}")
    normalised = digest.lower()
    if not _DIGEST.fullmatch(normalised):
        shown = digest if len(digest) <= 80 else digest[:77] + "..."
        raise InvalidDigestError(f"digest {shown!r} is not 64 hex characters (SHA-256)")
    return normalised


class ImageStorage(abc.ABC):
    """Where image bytes live; callers only ever name content by its SHA-256 hex digest."""

    @abc.abstractmethod
    def put(self, data: bytes) -> str:
        """Store ``data`` and return its digest; storing the same bytes again is a no-op."""

    @abc.abstractmethod
    def open(self, digest: str) -> BinaryIO:
        """A readable binary stream of verified content (the caller closes it)."""

    @abc.abstractmethod
    def exists(self, digest: str) -> bool:
        """Whether the blob is present (without verifying it, so it stays cheap)."""

    @abc.abstractmethod
    def size(self, digest: str) -> int:
        """Stored size in bytes, for Content-Length / SUIT image-size checks without reading."""

    def read(self, digest: str) -> bytes:
        """Whole verified content; backends may override to avoid hashing twice."""
        with self.open(digest) as stream:
            return stream.read()

    def path_for(self, digest: str) -> Path | None:
        """A local file path if the backend has one (lets servers use sendfile), else None."""
        return None


class FileSystemImageStorage(ImageStorage):
    """Blobs at ``root/ab/cd/<digest>``: two fan-out levels keep directories small.

    Writes go to a temporary file in the target directory, are fsynced and then renamed into
    place, so a reader or a crash never sees a half-written blob under its final name, and
    concurrent puts of the same bytes simply replace identical content.  Safe to share between
    threads: no state is kept besides ``root``.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path_for(self, digest: str) -> Path:
        digest = validate_digest(digest)
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> str:
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        # An intact copy makes this a no-op; a damaged one is healed, since now we hold the
        # correct bytes.
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == len(data) and _file_digest(path) == digest:
                return digest
        self._write_atomically(path, data)
        return digest

    def open(self, digest: str) -> BinaryIO:
        digest = validate_digest(digest)
        stream = self._open_raw(digest)
        try:
            # Verify before handing out the stream: discovering corruption halfway through a
            # block-wise transfer to a device would be far worse than failing up front.
            actual = _stream_digest(stream)
            if actual != digest:
                raise StorageIntegrityError(
                    f"blob {digest} is corrupted: its content hashes to {actual}"
                )
            stream.seek(0)
        except BaseException:
            stream.close()
            raise
        return stream

    def read(self, digest: str) -> bytes:
        digest = validate_digest(digest)
        with self._open_raw(digest) as stream:
            data = stream.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise StorageIntegrityError(
                f"blob {digest} is corrupted: its content hashes to {actual}"
            )
        return data

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int:
        path = self.path_for(digest)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise ImageNotStoredError(f"no stored image with digest {path.name}") from None

    def _open_raw(self, digest: str) -> BinaryIO:
        path = self.path_for(digest)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ImageNotStoredError(f"no stored image with digest {digest}") from None

    def _write_atomically(self, path: Path, data: bytes) -> None:
        directory = path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        _fsync_directory(directory)


def _stream_digest(stream: BinaryIO) -> str:
    hasher = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        hasher.update(chunk)
    return hasher.hexdigest()


def _file_digest(path: Path) -> str:
    with path.open("rb") as stream:
        return _stream_digest(stream)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; not every platform lets a directory be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
