"""Build MCUboot images with MCUboot's own ``imgtool`` (a pinned dependency).

Used by the demo and the device simulator to produce real images, and by the tests: running the
upstream tool instead of writing images ourselves keeps our parser honest against the format.
imgtool runs in a subprocess of the current interpreter (the package has no ``__main__``), so
the pinned version is used whatever is on PATH.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

DEFAULT_HEADER_SIZE = 0x200
_IMGTOOL = [sys.executable, "-c", "from imgtool.main import imgtool; imgtool()"]


class ImgtoolError(RuntimeError):
    """imgtool exited non-zero; the message carries its own stderr."""

    code = "image.imgtool_failed"


def run_imgtool(*args: str | Path, cwd: Path | None = None) -> str:
    """Run ``imgtool ARGS`` and return its standard output."""
    argv = [*_IMGTOOL, *(str(a) for a in args)]
    proc = subprocess.run(  # noqa: S603 - fixed interpreter and module, arguments built here
        argv, capture_output=True, text=True, check=False, cwd=cwd, timeout=120
    )
    if proc.returncode != 0:
        raise ImgtoolError(
            f"imgtool {' '.join(argv[3:])} exited {proc.returncode}: "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def keygen(path: Path, *, key_type: str = "ecdsa-p256") -> Path:
    """Write an unencrypted imgtool private key PEM (the MCUboot image-signing key)."""
    run_imgtool("keygen", "--key", path, "--type", key_type)
    return path


def public_key_pem(key_path: Path) -> bytes:
    """The public half of an imgtool key as PEM: what a device's bootloader is built with."""
    return run_imgtool("getpub", "--key", key_path, "--encoding", "pem").encode()


def default_slot_size(header_size: int, payload_len: int) -> int:
    # Room for header, body, TLVs (RSA-3072 signatures are the largest) and the swap trailer
    # imgtool reserves, rounded up to a 4 KiB sector.
    needed = header_size + payload_len + 0x2000
    return max(0x10000, (needed + 0xFFF) & ~0xFFF)


def build_image(
    payload: bytes,
    *,
    version: str,
    security_counter: int | str | None = None,
    key_path: Path | None = None,
    vendor_id: str | None = None,
    class_id: str | None = None,
    header_size: int = DEFAULT_HEADER_SIZE,
    pad_header: bool = True,
    slot_size: int | None = None,
    extra_args: Sequence[str] = (),
    encrypt_key_pem: bytes | None = None,
) -> bytes:
    """Return ``imgtool sign`` applied to ``payload``.

    ``security_counter=None`` leaves the SEC_CNT TLV out. Without ``key_path`` the image is
    unsigned (hash TLV only). ``vendor_id``/``class_id`` go to ``--vid``/``--cid``: a UUID or a
    name (imgtool derives UUIDv5 like SUIT: class from the vendor UUID). ``encrypt_key_pem``
    (a P-256 or X25519 public key) encrypts the body for it (``--encrypt``: ENC_EC256 /
    ENC_X25519 TLV, AES-128).
    """
    with tempfile.TemporaryDirectory(prefix="fwupd-imgtool-") as tmp:
        src, out = Path(tmp) / "app.bin", Path(tmp) / "app.signed.bin"
        src.write_bytes(payload)
        size = slot_size if slot_size is not None else default_slot_size(header_size, len(payload))
        args: list[str | Path] = [
            "sign",
            "--version",
            version,
            "--header-size",
            hex(header_size),
            "--slot-size",
            hex(size),
        ]
        if pad_header:
            args.append("--pad-header")
        if security_counter is not None:
            args += ["--security-counter", str(security_counter)]
        if key_path is not None:
            args += ["--key", key_path]
        if vendor_id is not None:
            args += ["--vid", vendor_id]
        if class_id is not None:
            args += ["--cid", class_id]
        if encrypt_key_pem is not None:
            enc = Path(tmp) / "enc.pub.pem"
            enc.write_bytes(encrypt_key_pem)
            args += ["--encrypt", enc]
        run_imgtool(*args, *extra_args, src, out)
        return out.read_bytes()
