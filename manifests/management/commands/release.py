"""``manage.py release create|submit|show|approve|revoke|envelope|freeze-envelopes``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from manifests import services, suit
from manifests.management.cli import service_errors, user_named, write_output
from manifests.models import Manifest, Release, ReleaseKind, Role
from manifests.selectors import verdict_dict


def _release(name: str) -> Release:
    release = (
        Release.objects.select_related("manifest__device_class__vendor").filter(name=name).first()
    )
    if release is None:
        raise CommandError(f"no release named {name!r}", returncode=1)
    return release


def _manifest(prefix: str) -> Manifest:
    matches = list(Manifest.objects.filter(manifest_digest__startswith=prefix.lower())[:2])
    if len(matches) != 1:
        raise CommandError(f"{len(matches) or 'no'} manifests match {prefix!r}", returncode=1)
    return matches[0]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", returncode=1) from exc


def signature_blocks(data: bytes) -> list[bytes]:
    """A raw COSE_Sign1, or a SUIT envelope (e.g. from ``suit sign``) whose blocks are taken."""
    try:
        env = suit.decode_envelope(suit.read_envelope_input(data))
    except suit.SUITError:
        return [data]
    return [block.raw for block in env.signatures]


def _signed_by(signatures: list[dict[str, str]]) -> str:
    return ", ".join(f"{s['signer']} key {s['kid'][:12]} at {s['at']}" for s in signatures)


class Command(BaseCommand):
    help = "Create, approve (upload signatures), inspect and revoke releases."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=CommandParser)
        p = sub.add_parser("create", help="release a stored manifest (submitted for approval)")
        p.add_argument("--manifest", required=True, help="manifest digest (hex prefix)")
        p.add_argument("--name", required=True)
        p.add_argument("--kind", choices=ReleaseKind.values, default="normal")
        p.add_argument("--groups", default="", help="comma-separated fleet groups (default all)")
        p.add_argument("--notes", default="")
        p.add_argument("--draft", action="store_true", help="keep as draft, do not submit")
        p.add_argument("--user", required=True)
        p = sub.add_parser("submit")
        p.add_argument("name")
        p.add_argument("--user", required=True)
        p = sub.add_parser("show")
        p.add_argument("name")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("approve", help="sign locally with --key, or upload --signature")
        p.add_argument("name")
        p.add_argument(
            "--role",
            required=True,
            choices=[r for r in Role.values if r not in ("auditor", "admin")],
        )
        p.add_argument("--user", required=True, help="the signer")
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--key", help="your PRIV.pem: signs here, only the signature is sent")
        group.add_argument("--signature", help="COSE_Sign1 file, or an envelope from `suit sign`")
        p = sub.add_parser("revoke")
        p.add_argument("name")
        p.add_argument("--reason", required=True)
        p.add_argument("--user", required=True)
        p = sub.add_parser("envelope", help="write the envelope with all counted approvals")
        p.add_argument("name")
        p.add_argument("--out", required=True)
        p = sub.add_parser(
            "freeze-envelopes",
            help="freeze the released envelope of approved releases that have none (approved "
            "before envelopes were frozen at approval); idempotent, audited",
        )
        p.add_argument("names", nargs="*", help="only these releases (default: all approved)")
        p.add_argument("--user", required=True, help="security or admin")
        p.add_argument("--dry-run", action="store_true", help="say what would be frozen")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"].replace("-", "_")
        getattr(self, f"_{action}")(options)

    def _freeze_envelopes(self, options: dict[str, Any]) -> None:
        with service_errors():
            result = services.released_envelopes_freeze(
                actor=user_named(options["user"]),
                names=options["names"] or None,
                dry_run=options["dry_run"],
            )
        verb = "would freeze" if options["dry_run"] else "froze"
        for name, digest in result.frozen:
            self.stdout.write(f"{verb} {name}: released sha256 {digest}")
        for name, why in result.not_approved:
            self.stdout.write(f"left {name}: not approved now ({why})")
        self.stdout.write(
            f"{verb} {len(result.frozen)}, already frozen {result.already}, "
            f"not approved now {len(result.not_approved)}"
        )

    def _create(self, options: dict[str, Any]) -> None:
        actor = user_named(options["user"])
        groups = [g.strip() for g in options["groups"].split(",") if g.strip()]
        with service_errors():
            release = services.release_create(
                manifest=_manifest(options["manifest"]),
                name=options["name"],
                kind=options["kind"],
                target_groups=groups,
                notes=options["notes"],
                actor=actor,
            )
            if not options["draft"]:
                verdict = services.release_submit(release=release, actor=actor)
                self.stdout.write(f"release {release.name} submitted: {verdict.summary()}")
                return
        self.stdout.write(f"release {release.name} created as draft")

    def _submit(self, options: dict[str, Any]) -> None:
        with service_errors():
            verdict = services.release_submit(
                release=_release(options["name"]), actor=user_named(options["user"])
            )
        self.stdout.write(verdict.summary())

    def _show(self, options: dict[str, Any]) -> None:
        release = _release(options["name"])
        data = verdict_dict(release, services.release_evaluate(release))
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
            return
        self.stdout.write(
            f"{data['release']} [{data['status']}, {data['kind']}] "
            f"{data['device_class']} v{data['version']} seq {data['sequence_number']} "
            f"counter {data['security_counter']} expires {data['expires']}"
        )
        self.stdout.write(f"manifest {data['manifest_digest']}")
        for role, t in data["tally"].items():
            who = (
                ", ".join(f"{c['person']} ({_signed_by(c['signatures'])})" for c in t["credited"])
                or "-"
            )
            state = "met" if t["missing"] == 0 else f"needs {t['missing']} more"
            self.stdout.write(f"  {role:15} {len(t['credited'])}/{t['required']} {state}: {who}")
        for item in data["ignored"]:
            self.stdout.write(f"  not counted: {item['signer']} as {item['role']}: {item['why']}")
        self.stdout.write("APPROVED now" if data["approved_now"] else "NOT approved now")

    def _approve(self, options: dict[str, Any]) -> None:
        release = _release(options["name"])
        signer = user_named(options["user"])
        if options["key"]:
            try:
                key = suit.load_private_key_pem(_read(options["key"]))
                blocks = [suit.sign_manifest_digest(release.manifest.envelope_bytes, key=key)]
            except suit.SUITError as exc:
                raise CommandError(f"{options['key']}: {exc} [{exc.code}]", returncode=1) from exc
        else:
            registered = set(signer.signing_keys.values_list("kid", flat=True))
            blocks = []
            for raw in signature_blocks(_read(options["signature"])):
                try:
                    kid = suit.parse_signature_block(raw).kid
                except suit.SUITError:
                    kid = None
                if kid is None or kid.hex() in registered:
                    blocks.append(raw)
            if not blocks:
                raise CommandError(
                    f"the file carries no signature by a key of {signer.get_username()}",
                    returncode=1,
                )
        with service_errors():
            for block in blocks:
                _, verdict = services.release_approve(
                    release=release, signer=signer, role=options["role"], cose=block
                )
        self.stdout.write(f"approval recorded: {verdict.summary()}")

    def _revoke(self, options: dict[str, Any]) -> None:
        with service_errors():
            release = services.release_revoke(
                release=_release(options["name"]),
                reason=options["reason"],
                actor=user_named(options["user"]),
            )
        self.stdout.write(f"release {release.name} revoked")

    def _envelope(self, options: dict[str, Any]) -> None:
        with service_errors():
            envelope = services.released_envelope(_release(options["name"]))
        write_output(options["out"], envelope)
        count = len(suit.decode_envelope(envelope).signatures)
        self.stdout.write(f"wrote {options['out']} ({len(envelope)} bytes, {count} signatures)")
