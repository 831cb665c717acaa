"""``manage.py trustpolicy draft|body|sign-body|sign|release|show|export``: device trust policies
(docs/suit.md, "Device trust policy"). The body is signed offline (``sign-body`` with a private
key file, or any COSE tool) and the COSE_Sign1 uploaded with ``sign``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests import device_trust, services, suit
from manifests.management.cli import (
    device_class_named,
    parse_time,
    service_errors,
    user_named,
    write_output,
)
from manifests.models import DeviceClass, DeviceTrustPolicy


def _role(text: str) -> tuple[str, tuple[int, list[str]]]:
    """``security=2:kid1,kid2,kid3``."""
    role, _, rest = text.partition("=")
    threshold, _, kids = rest.partition(":")
    try:
        count = int(threshold)
    except ValueError:
        raise CommandError(f"--role {text!r}: use role=threshold:kid,kid", returncode=1) from None
    return role.strip(), (count, [k.strip().lower() for k in kids.split(",") if k.strip()])


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", returncode=1) from None


def _policy(device_class: DeviceClass, version: int) -> DeviceTrustPolicy:
    row = DeviceTrustPolicy.objects.filter(device_class=device_class, version=version).first()
    if row is None:
        raise CommandError(f"{device_class} has no trust policy v{version}", returncode=1)
    return row


class Command(BaseCommand):
    help = "Draft, sign, show and export the device trust policies of a device class."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("draft")
        self._class_args(p)
        p.add_argument(
            "--role", action="append", required=True, help="role=threshold:kid,kid (repeat)"
        )
        p.add_argument("--expires", required=True, help="ISO 8601")
        p.add_argument("--reason", default="")
        p.add_argument("--user", required=True)
        for name in ("body", "export"):
            p = sub.add_parser(name)
            self._class_args(p)
            p.add_argument("--version", type=int, required=True)
            p.add_argument("--out", required=True)
        p = sub.add_parser("sign-body", help="sign a body file offline with a private key")
        p.add_argument("--body", required=True)
        p.add_argument("--key", required=True, help="private key PEM")
        p.add_argument("--out", required=True)
        p = sub.add_parser("sign")
        self._class_args(p)
        p.add_argument("--version", type=int, required=True)
        p.add_argument("--signature", required=True, help="COSE_Sign1 file")
        p.add_argument("--user", required=True)
        p = sub.add_parser(
            "release", help="release a draft the devices would accept now (else say why)"
        )
        self._class_args(p)
        p.add_argument("--version", type=int, required=True)
        p.add_argument("--user", required=True)
        p = sub.add_parser("show")
        self._class_args(p)

    @staticmethod
    def _class_args(p: CommandParser) -> None:
        p.add_argument("--vendor-domain", required=True)
        p.add_argument("--class", dest="class_name", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "sign-body":
            key = suit.load_private_key_pem(_read(options["key"]))
            with service_errors():
                try:
                    block = device_trust.sign_policy(_read(options["body"]), key)
                except device_trust.TrustPolicyError as exc:
                    raise CommandError(f"{exc} [{exc.code}]", returncode=1) from None
            write_output(options["out"], block)
            self.stdout.write(f"wrote {options['out']} ({len(block)} bytes)")
            return
        device_class = device_class_named(options["vendor_domain"], options["class_name"])
        if action == "draft":
            with service_errors():
                policy = services.trust_policy_draft(
                    device_class=device_class,
                    roles=dict(_role(r) for r in options["role"]),
                    expires_at=parse_time(options["expires"], "--expires"),
                    actor=user_named(options["user"]),
                    reason=options["reason"],
                )
            self.stdout.write(f"drafted {policy} (body sha256 {policy.body_sha256})")
        elif action == "body":
            write_output(options["out"], _policy(device_class, options["version"]).body_bytes)
            self.stdout.write(f"wrote {options['out']}")
        elif action == "export":
            policy = _policy(device_class, options["version"])
            if policy.document is None:
                raise CommandError(f"{policy} is not released yet", returncode=1)
            write_output(options["out"], bytes(policy.document))
            self.stdout.write(f"wrote {options['out']} (sha256 {policy.sha256})")
        elif action == "sign":
            with service_errors():
                policy = services.trust_policy_sign(
                    policy=_policy(device_class, options["version"]),
                    signer=user_named(options["user"]),
                    cose=_read(options["signature"]),
                )
            self.stdout.write(f"signed {policy}")
        elif action == "release":
            with service_errors():
                policy = services.trust_policy_release(
                    policy=_policy(device_class, options["version"]),
                    actor=user_named(options["user"]),
                )
            self.stdout.write(f"released {policy} (sha256 {policy.sha256})")
        else:
            for row in DeviceTrustPolicy.objects.filter(device_class=device_class):
                self.stdout.write(
                    f"v{row.version} {row.status} expires {row.expires_at.isoformat()} "
                    f"sha256 {row.sha256 or '-'} signatures {row.signatures.count()}"
                    + (f" ({row.reason})" if row.reason else "")
                )
