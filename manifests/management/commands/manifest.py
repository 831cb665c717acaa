"""``manage.py manifest import|list|show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests import services, suit
from manifests.management.cli import service_errors, user_named
from manifests.models import Manifest


class Command(BaseCommand):
    help = "Import author-signed SUIT envelopes (exact bytes kept) and list them."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("import")
        p.add_argument("file")
        p.add_argument("--user", required=True, help="username of the author (key owner)")
        sub.add_parser("list")
        p = sub.add_parser("show")
        p.add_argument("digest", help="manifest digest (hex, a unique prefix is enough)")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "import":
            path = Path(options["file"])
            try:
                raw = suit.read_envelope_input(path.read_bytes())
            except OSError as exc:
                raise CommandError(f"cannot read {path}: {exc.strerror}", returncode=1) from exc
            except suit.SUITError as exc:
                raise CommandError(f"{path}: {exc} [{exc.code}]", returncode=1) from exc
            with service_errors():
                manifest = services.manifest_import(
                    envelope=raw, created_by=user_named(options["user"])
                )
            self.stdout.write(f"manifest {manifest.manifest_digest} {manifest}")
        elif action == "list":
            for manifest in Manifest.objects.select_related("device_class__vendor"):
                self.stdout.write(f"{manifest.manifest_digest[:16]} {manifest}")
        else:
            matches = list(
                Manifest.objects.filter(manifest_digest__startswith=options["digest"])[:2]
            )
            if len(matches) != 1:
                raise CommandError(
                    f"{len(matches) or 'no'} manifests match {options['digest']!r}", returncode=1
                )
            env = suit.decode_envelope(matches[0].envelope_bytes)
            self.stdout.write(json.dumps(env.to_json_dict(), indent=2, sort_keys=True))
