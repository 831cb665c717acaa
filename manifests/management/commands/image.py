"""``manage.py image upload|list``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests import services
from manifests.management.cli import service_errors, user_named
from manifests.models import FirmwareImage


class Command(BaseCommand):
    help = "Upload firmware images (raw or MCUboot) into content-addressed storage."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("upload")
        p.add_argument("file")
        p.add_argument("--user", required=True, help="username of the uploader (author or admin)")
        sub.add_parser("list")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "upload":
            path = Path(options["file"])
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise CommandError(f"cannot read {path}: {exc.strerror}", returncode=1) from exc
            actor = user_named(options["user"])
            with service_errors():
                image = services.image_upload(data=data, filename=path.name, actor=actor)
            self.stdout.write(
                f"image {image.sha256} {image.kind} {image.size} bytes version "
                f"{image.version or '-'} security counter {image.security_counter}"
            )
            return
        for image in FirmwareImage.objects.all():
            self.stdout.write(str(image))
