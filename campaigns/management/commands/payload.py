"""``manage.py payload key-rotate|encrypt|device-key``: encrypted payloads (docs/suit.md,
"Encrypted payloads"). Key material is never printed: kids, digests and sizes only.

* ``key-rotate --class VENDOR/CLASS --user U [--key-file F]``: a new class key-encryption key
  (generated, or read from F: 16/32 raw bytes or their hex); the active one is retired.
* ``device-key ENDPOINT --kid HEX --public-key PEM --user U``: register a device's P-256 key.
* ``image-key --class VENDOR/CLASS --public-key PEM --user U``: the P-256/X25519 public key the
  class's MCUboot decrypts images with; ``build-image --class ... --payload BIN --version V
  --signing-key KEY --out IMG``: ``imgtool sign --encrypt`` for that key (then ``image upload``).
* ``encrypt --class VENDOR/CLASS --image SHA256 --user U --out INFO [--device-keys]
  [--no-class-key]``: encrypt a stored image for the class; writes the encryption info for
  ``suit create --encryption-info`` and prints the ciphertext's URI for ``--uri``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns.device_services import (
    DeviceRegistryError,
    device_encryption_key_register,
    device_encryption_recipients,
)
from manifests import delivery, payload_keys, services
from manifests.management.cli import (
    device_class_named,
    service_errors,
    user_named,
    write_output,
)
from manifests.models import DeviceClass, FirmwareImage


def _class(text: str) -> DeviceClass:
    domain, sep, name = text.partition("/")
    if not sep or not name:
        raise CommandError(f"--class {text!r} is not VENDOR-DOMAIN/CLASS-NAME", returncode=1)
    return device_class_named(domain, name)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {what} {path}: {exc}", returncode=1) from exc


class Command(BaseCommand):
    help = "Payload encryption: class key-encryption keys, device keys, encrypting an image."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("key-rotate")
        p.add_argument("--class", dest="device_class", required=True)
        p.add_argument("--key-file", help="16 or 32 raw bytes, or their hex (default: generate)")
        p.add_argument("--user", required=True)
        p = sub.add_parser("device-key")
        p.add_argument("endpoint")
        p.add_argument("--kid", required=True, help="the key's identifier, hex")
        p.add_argument("--public-key", required=True, help="P-256 public key PEM")
        p.add_argument("--user", required=True)
        p = sub.add_parser("image-key")
        p.add_argument("--class", dest="device_class", required=True)
        p.add_argument("--public-key", required=True, help="P-256 or X25519 public key PEM")
        p.add_argument("--user", required=True)
        p = sub.add_parser("build-image")
        p.add_argument("--class", dest="device_class", required=True)
        p.add_argument("--payload", required=True, help="the application binary")
        p.add_argument("--version", required=True)
        p.add_argument("--security-counter", type=int)
        p.add_argument("--signing-key", required=True, help="the author's imgtool key")
        p.add_argument("--out", required=True)
        p.add_argument("--user", required=True)
        p = sub.add_parser("encrypt")
        p.add_argument("--class", dest="device_class", required=True)
        p.add_argument("--image", required=True, help="SHA-256 of a stored image")
        p.add_argument("--out", required=True, help="where the encryption info is written")
        p.add_argument(
            "--device-keys", action="store_true", help="also wrap for every registered device key"
        )
        p.add_argument("--no-class-key", action="store_true", help="device keys only")
        p.add_argument(
            "--aes-ctr",
            action="store_true",
            help="A128CTR instead of A128GCM, for devices that decrypt while streaming",
        )
        p.add_argument("--user", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        actor = user_named(options["user"])
        if action == "key-rotate":
            device_class = _class(options["device_class"])
            key = None
            if options["key_file"]:
                try:
                    key = payload_keys.read_kek_file(_read(options["key_file"], "key file"))
                except payload_keys.PayloadKeyError as exc:
                    raise CommandError(f"{exc} [{exc.code}]", returncode=1) from None
            with service_errors():
                row = services.payload_key_rotate(device_class=device_class, actor=actor, key=key)
            self.stdout.write(f"{device_class}: payload key {row.kid} active ({row.size} bytes)")
        elif action == "image-key":
            device_class = _class(options["device_class"])
            pem = _read(options["public_key"], "public key").decode("ascii", "replace")
            with service_errors():
                key = services.image_encryption_key_set(
                    device_class=device_class, public_key_pem=pem, actor=actor
                )
            self.stdout.write(f"{device_class}: image key {key.kid} ({key.kind}) active")
        elif action == "build-image":
            device_class = _class(options["device_class"])
            with service_errors():
                image = services.image_build_encrypted(
                    device_class=device_class,
                    payload=_read(options["payload"], "payload"),
                    version=options["version"],
                    security_counter=options["security_counter"],
                    signing_key_path=Path(options["signing_key"]),
                )
            write_output(options["out"], image)
            self.stdout.write(f"wrote {options['out']} ({len(image)} bytes), encrypted")
        elif action == "device-key":
            try:
                kid = bytes.fromhex(options["kid"])
            except ValueError:
                raise CommandError("--kid is not hex", returncode=1) from None
            pem = _read(options["public_key"], "public key").decode("ascii", "replace")
            try:
                row = device_encryption_key_register(
                    endpoint=options["endpoint"], kid=kid, public_key_pem=pem, actor=actor
                )
            except DeviceRegistryError as exc:
                raise CommandError(f"{exc} [{exc.code}]", returncode=1) from None
            self.stdout.write(f"{options['endpoint']}: encryption key {row.kid} registered")
        else:
            device_class = _class(options["device_class"])
            image = FirmwareImage.objects.filter(sha256=options["image"].lower()).first()
            if image is None:
                raise CommandError(f"no stored image {options['image']}", returncode=1)
            keys = device_encryption_recipients(device_class.pk) if options["device_keys"] else []
            with service_errors():
                row = services.payload_encrypt(
                    image=image,
                    device_class=device_class,
                    actor=actor,
                    device_keys=keys,
                    class_key=not options["no_class_key"],
                    content_alg="A128CTR" if options["aes_ctr"] else "A128GCM",
                )
            write_output(options["out"], bytes(row.encryption_info))
            self.stdout.write(
                f"wrote {options['out']}; ciphertext {row.ciphertext_sha256} "
                f"({row.ciphertext_size} bytes) for {len(row.recipient_kids)} recipient(s); "
                f"--uri {delivery.image_path(row.ciphertext_sha256)}"
            )
