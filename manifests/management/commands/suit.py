"""``manage.py suit``: the local SUIT toolkit (keys, create, sign, inspect, verify, image-info).

Works on files only and never touches the database, so release engineers and approvers can run
it on their own machines; private keys stay there. Other tooling calls these commands exactly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests import delivery, suit
from manifests.images import ImageError, ingest_image
from manifests.management.cli import write_output
from manifests.versions import VersionError, parse_version


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc


def _write(path: str, data: bytes, *, private: bool = False) -> None:
    write_output(path, data, private=private)


def public_path_for(private_path: str) -> str:
    """``dev.pem`` -> ``dev.pub.pem`` (the CLI contract), anything else gets ``.pub.pem`` added."""
    return (
        private_path[: -len(".pem")] + ".pub.pem"
        if private_path.endswith(".pem")
        else (private_path + ".pub.pem")
    )


def parse_expiry(text: str) -> dt.datetime:
    """ISO 8601; a time without an offset is taken as UTC (manifests carry UTC epoch seconds)."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--expires {text!r} is not an ISO 8601 date-time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _load_private(path: str) -> Any:
    try:
        return suit.load_private_key_pem(_read(path))
    except suit.SUITError as exc:
        raise CommandError(f"{path}: {exc}") from exc


def _load_envelope(path: str) -> suit.Envelope:
    try:
        return suit.decode_envelope(suit.read_envelope_input(_read(path)))
    except suit.SUITError as exc:
        raise CommandError(f"{path}: {exc} [{exc.code}]", returncode=1) from exc


class Command(BaseCommand):
    help = "SUIT manifest toolkit: keygen, create, sign, inspect, verify, image-info."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)

        p = sub.add_parser("keygen", help="generate a signing key pair")
        p.add_argument("--alg", required=True, choices=["ES256", "Ed25519"])
        p.add_argument("--out", required=True, help="private key PEM; public key goes to *.pub.pem")

        p = sub.add_parser("create", help="build and sign a SUIT envelope for an image")
        p.add_argument("--vendor-domain", required=True)
        p.add_argument("--class", dest="class_name", required=True)
        p.add_argument("--version", required=True)
        p.add_argument("--sequence", required=True, type=int)
        p.add_argument("--security-counter", required=True, type=int)
        p.add_argument("--image", required=True)
        p.add_argument(
            "--uri",
            help="where a SUIT device fetches the payload (default: by --delivery, "
            "/fw/i/<image sha256> on the server it got the envelope from, or #app for "
            "suit-integrated)",
        )
        p.add_argument(
            "--delivery",
            choices=delivery.PROFILES,
            default=delivery.IMAGE,
            help="the device class's delivery profile, for the default --uri (default image)",
        )
        p.add_argument(
            "--profile",
            choices=suit.PROFILES,
            default="extended",
            help="the device class's manifest profile: standard (no custom SUIT keys; stock SUIT "
            "processors accept it) or extended (default; custom security counter and payload "
            "format)",
        )
        p.add_argument("--expires", help="ISO 8601 use-before time (UTC if no offset)")
        p.add_argument(
            "--encryption-info",
            help="the encryption info `manage.py payload encrypt` wrote: the payload is then the "
            "ciphertext, and --uri must name it (as that command printed)",
        )
        p.add_argument("--component", default="00", help="component id, hex (default 00)")
        p.add_argument(
            "--precursor",
            action="append",
            default=[],
            help="an earlier image file a delta to this image may be applied to (repeatable; "
            "either profile; the signed manifest names it as the source component's image digest)",
        )
        p.add_argument("--key", required=True)
        p.add_argument("--out", required=True)

        p = sub.add_parser("sign", help="add one more signature over the same manifest digest")
        p.add_argument("input")
        p.add_argument("--key", required=True)
        p.add_argument("--out", required=True)

        p = sub.add_parser("inspect", help="decode an envelope (binary CBOR or hex text)")
        p.add_argument("file")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("verify", help="exit 0 when >= K distinct given keys signed")
        p.add_argument("file")
        p.add_argument("--key", action="append", dest="keys", default=[])
        p.add_argument(
            "--mac-key",
            action="append",
            dest="mac_keys",
            help="a file holding a raw HMAC 256/256 key (>= 32 bytes) to check COSE_Mac0 blocks",
        )
        p.add_argument("--threshold", type=int, default=1)

        p = sub.add_parser("image-info", help="MCUboot header and TLV fields of an image")
        p.add_argument("file")
        p.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"].replace("-", "_")
        getattr(self, f"_{action}")(options)

    def _keygen(self, options: dict[str, Any]) -> None:
        key = suit.generate_private_key(options["alg"])
        out = options["out"]
        _write(out, suit.private_key_pem(key), private=True)
        pub_path = public_path_for(out)
        _write(pub_path, suit.public_key_pem(key.public_key()))
        kid = suit.kid_for_public_key(key).hex()
        self.stdout.write(f"wrote {out} and {pub_path} ({options['alg']}, kid {kid})")

    def _create(self, options: dict[str, Any]) -> None:
        image = _read(options["image"])
        try:
            info = ingest_image(image)
        except ImageError as exc:
            raise CommandError(f"{options['image']}: {exc} [{exc.code}]") from exc
        try:
            version = parse_version(options["version"])
        except VersionError as exc:
            raise CommandError(str(exc)) from exc
        if options["sequence"] < 0 or options["security_counter"] < 0:
            raise CommandError("--sequence and --security-counter must be >= 0")
        if info.kind == "mcuboot" and info.version is not None:
            if parse_version(info.version) != version:
                raise CommandError(
                    f"--version {options['version']} differs from the MCUboot header's "
                    f"{info.version}"
                )
            if (
                info.security_counter is not None
                and info.security_counter != options["security_counter"]
            ):
                raise CommandError(
                    f"--security-counter {options['security_counter']} differs from the image's "
                    f"security-counter TLV {info.security_counter}"
                )
        try:
            component = bytes.fromhex(options["component"])
        except ValueError:
            raise CommandError(f"--component {options['component']!r} is not hex") from None
        image_sha256 = hashlib.sha256(image).hexdigest()
        uri = options["uri"]
        encryption_info = None
        if options["encryption_info"]:
            encryption_info = _read(options["encryption_info"])
            if uri is None:
                raise CommandError(
                    "--encryption-info needs --uri naming the ciphertext (/fw/i/<its sha256>)"
                )
        if uri is None:
            uri = delivery.default_payload_uri(options["delivery"], image_sha256)
        elif options["delivery"] == delivery.SUIT_INTEGRATED:
            problem = delivery.payload_uri_problem(
                uri, profile=delivery.SUIT_INTEGRATED, image_sha256=image_sha256
            )
            if problem is not None:
                raise CommandError(f"--uri: {problem}")
        vendor = suit.vendor_id(options["vendor_domain"].strip().lower().rstrip("."))
        params = suit.ManifestParams(
            vendor_id=vendor,
            class_id=suit.class_id(vendor, options["class_name"]),
            sequence_number=options["sequence"],
            version=options["version"],
            security_counter=options["security_counter"],
            image_digest=hashlib.sha256(image).digest(),
            image_size=len(image),
            uri=uri,
            use_before=parse_expiry(options["expires"]) if options["expires"] else None,
            component_id=(component,),
            payload_format=info.kind,
            profile=options["profile"],
            encryption_info=encryption_info,
            precursor_digests=tuple(
                dict.fromkeys(hashlib.sha256(_read(path)).digest() for path in options["precursor"])
            ),
        )
        try:
            envelope = suit.create_envelope(params, keys=[_load_private(options["key"])])
        except suit.SUITError as exc:
            raise CommandError(f"{exc} [{exc.code}]") from exc
        _write(options["out"], envelope)
        decoded = suit.decode_envelope(envelope)
        self.stdout.write(
            f"wrote {options['out']} ({len(envelope)} bytes, manifest digest "
            f"{decoded.manifest_digest.hex()}, payload URI {uri})"
        )

    def _sign(self, options: dict[str, Any]) -> None:
        raw = _load_envelope(options["input"]).raw
        key = _load_private(options["key"])
        try:
            block = suit.sign_manifest_digest(raw, key=key)
            signed = suit.add_signatures(raw, [block])
        except suit.SUITError as exc:
            raise CommandError(f"{exc} [{exc.code}]") from exc
        _write(options["out"], signed)
        count = len(suit.decode_envelope(signed).signatures)
        self.stdout.write(f"wrote {options['out']} ({count} signatures)")

    def _inspect(self, options: dict[str, Any]) -> None:
        env = _load_envelope(options["file"])
        data = env.to_json_dict()
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
            return
        for key in sorted(data):
            if key == "signatures":
                continue
            self.stdout.write(f"{key:18} {data[key]}")
        for sig in data["signatures"]:
            self.stdout.write(
                f"{'signature':18} {sig['kind']} alg {sig['alg']} ({sig['alg_name']}) "
                f"kid {sig['kid']}"
            )

    def _verify(self, options: dict[str, Any]) -> None:
        env = _load_envelope(options["file"])
        mac_keys = [_read(path) for path in options["mac_keys"] or ()]
        if not options["keys"] and not mac_keys:
            raise CommandError("give at least one --key or --mac-key", returncode=1)
        keys = []
        for path in options["keys"]:
            try:
                keys.append(suit.load_public_key_pem(_read(path)))
            except suit.SUITError as exc:
                raise CommandError(f"{path}: {exc}", returncode=1) from exc
        threshold = options["threshold"]
        if threshold < 1:
            raise CommandError("--threshold must be >= 1", returncode=1)
        try:
            result = suit.verify_envelope(env, keys, threshold=threshold, mac_keys=mac_keys)
        except suit.SUITError as exc:
            raise CommandError(f"{exc} [{exc.code}]", returncode=1) from exc
        if not result.ok:
            reasons = "; ".join(result.reasons) or "no valid signature"
            raise CommandError(
                f"verification failed: {len(result.valid_kids)} of {threshold} required distinct "
                f"keys signed ({reasons})",
                returncode=1,
            )
        self.stdout.write(
            f"OK: {len(result.valid_kids)} distinct key(s) signed manifest "
            f"{env.manifest_digest.hex()} (threshold {threshold})"
        )

    def _image_info(self, options: dict[str, Any]) -> None:
        try:
            info = ingest_image(_read(options["file"]), require_valid_hash=False)
        except ImageError as exc:
            raise CommandError(f"{options['file']}: {exc} [{exc.code}]", returncode=1) from exc
        data = info.to_json_dict()
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
        else:
            for key in sorted(data):
                self.stdout.write(f"{key:18} {data[key]}")
        if info.kind == "mcuboot" and not info.hash_ok:
            sys.stderr.write("image hash TLV does not match the image\n")
            sys.exit(1)
