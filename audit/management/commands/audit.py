"""``manage.py audit verify|export|head``."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.chain import GENESIS, canonical_time
from audit.models import AuditEvent
from audit.services import audit_verify, iter_links


class Command(BaseCommand):
    help = "Verify the hash-chained audit trail, export it as JSON lines, or print its head."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("verify", help="walk the chain; exit 1 at the first broken link")
        p.add_argument(
            "--anchor", help="a head hash exported earlier; it must still be in the chain"
        )
        p = sub.add_parser("export", help="write every event as one JSON object per line")
        p.add_argument("--out", help="file to write (default: standard output)")
        sub.add_parser("head", help="print seq and hash of the newest event, to anchor elsewhere")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "verify":
            verdict = audit_verify(anchor=options["anchor"])
            if not verdict.ok:
                raise CommandError(
                    f"audit chain BROKEN after {verdict.checked} good events: {verdict.problem}",
                    returncode=1,
                )
            self.stdout.write(f"audit chain OK: {verdict.checked} events, head {verdict.head}")
        elif action == "export":
            try:
                handle: Any = (
                    open(options["out"], "w", encoding="utf-8")  # noqa: SIM115 - closed below
                    if options["out"]
                    else self.stdout
                )
            except OSError as exc:
                raise CommandError(
                    f"cannot write {options['out']}: {exc.strerror}", returncode=1
                ) from exc
            try:
                for link in iter_links():
                    record = {
                        "seq": link.seq,
                        "actor": link.actor,
                        "action": link.action,
                        "object_type": link.object_type,
                        "object_id": link.object_id,
                        "details": link.details,
                        "created_at": canonical_time(link.created_at),
                        "prev_hash": link.prev_hash,
                        "hash": link.hash,
                    }
                    handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
            finally:
                if handle is not self.stdout:
                    handle.close()
        else:
            last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
            self.stdout.write(f"{last[0]} {last[1]}" if last else f"0 {GENESIS}")
