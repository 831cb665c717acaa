"""Test-side access to upstream ``imgtool``: images come from MCUboot's own signing tool rather
than from hand-written bytes, so if our reading of the format drifted from upstream the fixtures
would not drift with it. The implementation lives in ``manifests.images.imgtool``; this module
adapts it to pytest (tmp_path, failures as assertion errors)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from manifests.images import imgtool as _imgtool

__all__ = [
    "DEFAULT_HEADER_SIZE",
    "ImgtoolFailedError",
    "build_mcuboot_image",
    "generate_key",
    "run_imgtool",
]

DEFAULT_HEADER_SIZE = _imgtool.DEFAULT_HEADER_SIZE


class ImgtoolFailedError(AssertionError):
    """imgtool exited non-zero; an AssertionError so pytest reports it as a test failure."""


def run_imgtool(*args: str | Path, cwd: Path | None = None) -> str:
    try:
        return _imgtool.run_imgtool(*args, cwd=cwd)
    except _imgtool.ImgtoolError as exc:
        raise ImgtoolFailedError(str(exc)) from exc


def generate_key(tmp_path: Path, *, key_type: str = "ecdsa-p256", name: str | None = None) -> Path:
    """Write an unencrypted imgtool private key PEM (e.g. ecdsa-p256, ed25519, rsa-2048)."""
    path = tmp_path / (name or f"imgtool-{key_type}.pem")
    run_imgtool("keygen", "--key", path, "--type", key_type)
    return path


def build_mcuboot_image(
    tmp_path: Path,
    *,
    payload: bytes,
    version: str = "1.2.3+4",
    security_counter: int | str | None = None,
    key_pem_path: Path | None = None,
    header_size: int = DEFAULT_HEADER_SIZE,
    pad_header: bool = True,
    slot_size: int | None = None,
    vendor_id: str | None = None,
    class_id: str | None = None,
    extra_args: Sequence[str] = (),
) -> bytes:
    """``imgtool sign`` of ``payload`` (see ``manifests.images.imgtool.build_image``).
    With ``pad_header=False`` the payload must already start with ``header_size`` zero bytes."""
    try:
        return _imgtool.build_image(
            payload,
            version=version,
            security_counter=security_counter,
            key_path=key_pem_path,
            vendor_id=vendor_id,
            class_id=class_id,
            header_size=header_size,
            pad_header=pad_header,
            slot_size=slot_size,
            extra_args=extra_args,
        )
    except _imgtool.ImgtoolError as exc:
        raise ImgtoolFailedError(str(exc)) from exc
