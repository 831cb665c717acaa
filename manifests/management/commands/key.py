"""``manage.py key add|rotate|revoke|list``: the public half of signing keys."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests import services
from manifests.management.cli import parse_time, service_errors, user_named
from manifests.models import SigningKey


def _pem(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read public key {path}: {exc}", returncode=1) from exc


def _key(kid: str) -> SigningKey:
    matches = list(SigningKey.objects.filter(kid__startswith=kid.lower())[:2])
    if len(matches) != 1:
        raise CommandError(f"{len(matches) or 'no'} keys match kid {kid!r}", returncode=1)
    return matches[0]


class Command(BaseCommand):
    help = "Register, rotate, revoke and list public signing keys (private keys stay with you)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("add")
        p.add_argument("--user", required=True, help="owner of the key")
        p.add_argument("--public-key", required=True, help="PUB.pem written by `suit keygen`")
        p.add_argument("--name", default="")
        p.add_argument("--valid-until", help="ISO 8601 expiry")
        p = sub.add_parser("rotate")
        p.add_argument("kid", help="kid (hex prefix) of the key being replaced")
        p.add_argument("--public-key", required=True, help="the successor's PUB.pem")
        p.add_argument("--overlap-hours", type=float, default=24 * 7)
        p.add_argument("--user", required=True, help="who performs the rotation")
        p = sub.add_parser("revoke")
        p.add_argument("kid")
        p.add_argument("--reason", required=True)
        p.add_argument(
            "--effective", help="ISO 8601 time the revocation takes effect (default now)"
        )
        p.add_argument("--user", required=True, help="who revokes")
        p = sub.add_parser("list")
        p.add_argument("--user", help="only this owner's keys")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "add":
            owner = user_named(options["user"])
            with service_errors():
                key = services.signing_key_register(
                    owner=owner,
                    public_key_pem=_pem(options["public_key"]),
                    name=options["name"],
                    valid_until=parse_time(options["valid_until"], "--valid-until")
                    if options["valid_until"]
                    else None,
                )
            self.stdout.write(f"registered {key.algorithm} key {key.kid} for {owner}")
        elif action == "rotate":
            with service_errors():
                new = services.key_rotate(
                    key=_key(options["kid"]),
                    new_public_key_pem=_pem(options["public_key"]),
                    overlap=dt.timedelta(hours=options["overlap_hours"]),
                    actor=user_named(options["user"]),
                )
            self.stdout.write(f"rotated to {new.kid}")
        elif action == "revoke":
            with service_errors():
                key = services.key_revoke(
                    key=_key(options["kid"]),
                    reason=options["reason"],
                    effective_at=parse_time(options["effective"], "--effective")
                    if options["effective"]
                    else None,
                    actor=user_named(options["user"]),
                )
            self.stdout.write(f"revoked {key.kid} from {key.revoked_at.isoformat()}")
        else:
            keys = SigningKey.objects.select_related("owner").order_by("owner__username", "pk")
            if options["user"]:
                keys = keys.filter(owner__username=options["user"])
            for key in keys:
                until = key.valid_until.isoformat() if key.valid_until else "-"
                self.stdout.write(
                    f"{key.kid} {key.owner.get_username():16} {key.algorithm:8} {key.status:8} "
                    f"until {until}"
                )
