"""``manage.py demo``: the release side end to end on whatever database is configured.

Migrates, registers a vendor and device class, builds a real MCUboot image with imgtool,
creates and signs a SUIT manifest with the author's key, imports it through the same services
the API uses, and prints the decoded manifest and the verification result. Safe to re-run: each
run ships the next version with the next sequence number.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db.models import Max
from django.utils import timezone

from manifests import services, suit
from manifests.images import imgtool
from manifests.models import DeviceClass, Manifest, SigningKey, Vendor

DEMO_VENDOR = ("Acme Sensors", "acme.example")
DEMO_CLASS = "thermo-v2"
DEMO_AUTHOR = "demo-author"


class Command(BaseCommand):
    help = "Run the demo story on the configured database (SQLite by default)."

    def handle(self, *args: Any, **options: Any) -> None:
        out = self.stdout
        call_command("migrate", verbosity=0, interactive=False)
        demo_dir = Path(settings.VAR_DIR) / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)

        author = self._author()
        author_priv = self._suit_key(demo_dir / "author-es256.pem", author)
        vendor = Vendor.objects.filter(domain=DEMO_VENDOR[1]).first() or services.vendor_create(
            name=DEMO_VENDOR[0], domain=DEMO_VENDOR[1]
        )
        device_class = DeviceClass.objects.filter(
            vendor=vendor, name=DEMO_CLASS
        ).first() or services.device_class_create(vendor=vendor, name=DEMO_CLASS)
        out.write(f"vendor        {vendor.domain}  id {vendor.uuid}")
        out.write(f"device class  {device_class.name}  id {device_class.uuid}")

        last = Manifest.objects.filter(device_class=device_class).aggregate(
            seq=Max("sequence_number")
        )["seq"]
        sequence = (last or 0) + 1
        version = f"1.{sequence}.0"
        security_counter = 1 + sequence // 5

        mcuboot_key = demo_dir / "mcuboot-signing.pem"
        if not mcuboot_key.exists():
            imgtool.keygen(mcuboot_key)
        firmware = imgtool.build_image(
            (f"thermo-v2 application {version}\n".encode() * 512)[:16384],
            version=version,
            security_counter=security_counter,
            key_path=mcuboot_key,
            vendor_id=str(vendor.uuid),
            class_id=str(device_class.uuid),
        )
        image = services.image_upload(
            data=firmware, filename=f"thermo-{version}.bin", uploaded_by=author
        )
        out.write(
            f"image         {image.kind} {image.size} bytes, version {image.version}, "
            f"security counter {image.security_counter}, sha256 {image.sha256[:16]}…"
        )

        params = suit.ManifestParams(
            vendor_id=vendor.uuid,
            class_id=device_class.uuid,
            sequence_number=sequence,
            version=version,
            security_counter=security_counter,
            image_digest=bytes.fromhex(image.sha256),
            image_size=image.size,
            uri=f"coap://fw.local/fw/{image.sha256}",
            use_before=timezone.now() + dt.timedelta(days=90),
            component_id=device_class.component_id_bytes,
            payload_format=image.kind,
        )
        envelope = suit.create_envelope(params, keys=[author_priv])
        manifest = services.manifest_import(envelope=envelope, created_by=author)
        out.write(f"manifest      stored {len(envelope)} bytes, digest {manifest.manifest_digest}")

        decoded = suit.decode_envelope(manifest.envelope_bytes)
        out.write("\nDecoded manifest:")
        out.write(json.dumps(decoded.to_json_dict(), indent=2, sort_keys=True))

        key = SigningKey.objects.get(kid=manifest.author_key.kid)
        result = suit.verify_envelope(
            decoded, [suit.load_public_key_pem(key.public_key_pem.encode())], threshold=1
        )
        verdict = "VALID" if result.ok else f"INVALID ({'; '.join(result.reasons)})"
        out.write(
            f"\nVerification: {verdict} — {len(result.valid_kids)} signature(s) from "
            f"{author.get_username()}'s registered key {key.kid[:16]}…"
        )

    def _author(self) -> Any:
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username=DEMO_AUTHOR)
        return user

    def _suit_key(self, path: Path, owner: Any) -> Any:
        if path.exists():
            private = suit.load_private_key_pem(path.read_bytes())
        else:
            private = suit.generate_private_key("ES256")
            path.write_bytes(suit.private_key_pem(private))
            path.chmod(0o600)
        kid = suit.kid_for_public_key(private.public_key()).hex()
        if not SigningKey.objects.filter(kid=kid).exists():
            services.signing_key_register(
                owner=owner,
                public_key_pem=suit.public_key_pem(private.public_key()).decode(),
                name="demo author key",
            )
        return private
