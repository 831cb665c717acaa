"""``manage.py demo``: the whole story on the embedded default (SQLite, no servers).

People with roles and keys; a real MCUboot image and a signed SUIT manifest; a release approved
by QA and security with real signatures; an LwM2M gateway on loopback and about a hundred
simulated devices (some of the wrong class, a few in the canary with a boot fault, and a class of
image-profile devices: Zephyr's LwM2M client over MCUboot, verifying raw images with their
bootloader key); a 3-stage campaign that pauses on the canary's failures, is resumed once the
fault is fixed, and completes; then a campaign of the image-profile class (pulled by some
devices, pushed to the others); live progress bars and closing summaries; the audit chain
verified at the end. With ``--serve`` something is left alive for the console: the gateway and
the fleet keep running, a second campaign (release 1.2.0) rolls out slowly, at a ramped rate
with soaks between its stages, and an embedded beat (``workers.beat``) reconciles it as
``celery beat`` would, until Ctrl-C.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import OperationalError
from django.utils import timezone

from audit.services import audit_verify
from campaigns import engine, services
from campaigns.models import Campaign, CampaignStatus, Device, Rollout, RolloutState
from campaigns.spec import parse_spec
from manifests import services as release_services
from manifests import suit
from manifests.images import imgtool
from manifests.selectors import manifest_params
from workers.beat import EmbeddedBeat
from workers.embedded import EmbeddedFleet
from workers.lwm2m.object5 import DeliveryMethod
from workers.lwm2m.simulator import Faults, FleetSpec

PEOPLE = [  # username, role, signing algorithm
    ("alice", "author", "ES256"),
    ("bob", "qa", "Ed25519"),
    ("carol", "security", "ES256"),
    ("dave", "fleet_operator", "Ed25519"),
    ("erin", "auditor", None),
]
DEMO_PASSWORD = "demo-pass-2026"  # noqa: S105 - printed for the local demo console
FLEET = 96
WRONG_CLASS = 4
FAULTY_IN_CANARY = 3
# The image-profile class: its devices take the raw MCUboot image (Package URI /fw/i/<sha256>,
# or the image pushed to /5/0/0 for those that take no Package URI) and check it with their
# bootloader key, as Zephyr's LwM2M client over MCUboot does. Half of them take pushes only.
IMAGE_CLASS = "thermo-v3"
IMAGE_DEVICES = 8
IMAGE_SPEC = f"""
apiVersion: fwupd/v1
kind: Campaign
name: thermo-v3-1-1-rollout
release: thermo-v3-1.1.0
description: The image-profile devices, all at once
target:
  device_class: acme.example/{IMAGE_CLASS}
stages:
  - name: all
    size: 100%
timeouts:
  device: 2m
"""
# Left running with --serve, so the console shows motion: a few devices a minute at first, a
# soak between stages; about half an hour for the default fleet.
LIVE_SPEC = """
apiVersion: fwupd/v1
kind: Campaign
name: thermo-1-2-rollout
release: thermo-1.2.0
description: Left running after the story, slowly, so the console shows it moving
target:
  device_class: acme.example/thermo-v2
stages:
  - name: canary
    size: 10%
    soak: 2m
    failure_threshold: 20%
    min_finished: 3
  - name: wave
    size: 40%
    soak: 2m
    failure_threshold: 10%
    min_finished: 5
  - name: all
    size: rest
    failure_threshold: 10%
    min_finished: 10
rate:
  base_per_minute: 2
  factor: 2
  step: 3m
  max_per_minute: 8
timeouts:
  device: 2m
retries:
  max: 1
  on: [connection_lost, dispatch_failed]
"""
SPEC = """
apiVersion: fwupd/v1
kind: Campaign
name: thermo-1-1-rollout
release: thermo-1.1.0
description: Canary, one wave, then everyone
target:
  device_class: acme.example/thermo-v2
stages:
  - name: canary
    size: 10%
    failure_threshold: 20%
    min_finished: 3
  - name: wave
    size: 40%
    failure_threshold: 10%
    min_finished: 5
  - name: all
    size: rest
    failure_threshold: 10%
    min_finished: 10
timeouts:
  device: 2m
retries:
  max: 1
  on: [connection_lost, dispatch_failed]
"""


def _retry(fn: Any) -> Any:
    for _ in range(100):
        try:
            return fn()
        except OperationalError:  # SQLite: the gateway thread holds the write lock briefly
            time.sleep(0.05)
    return fn()


class Command(BaseCommand):
    help = "Run the demo story on the embedded default (SQLite, in-process gateway and fleet)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--devices", type=int, default=FLEET)
        parser.add_argument("--timeout", type=float, default=300, help="seconds for the rollout")
        parser.add_argument(
            "--serve",
            default="",
            metavar="HOST:PORT",
            help="afterwards, serve the console here (e.g. 127.0.0.1:8000)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.tty = sys.stdout.isatty()
        call_command("migrate", verbosity=0, interactive=False)
        if Campaign.objects.exists():
            self.stderr.write("this database already holds a demo; `make demo` starts afresh")
            return
        now = timezone.now()
        self._step("People, roles and signing keys (private keys stay in var/demo/keys)")
        people = self._people(now)
        self._step("Vendor and device classes (IDs are UUIDv5, as SUIT specifies)")
        vendor = release_services.vendor_create(
            name="Acme Sensors", domain="acme.example", actor=people["admin"][0]
        )
        # thermo-v2 and thermo-v1 devices are SUIT processors (they take the envelope);
        # thermo-v3 devices install raw MCUboot images (the image profile, see IMAGE_CLASS).
        thermo = release_services.device_class_create(
            vendor=vendor, name="thermo-v2", delivery="suit", actor=people["admin"][0]
        )
        release_services.device_class_create(
            vendor=vendor, name="thermo-v1", delivery="suit", actor=people["admin"][0]
        )
        image_class = release_services.device_class_create(
            vendor=vendor, name=IMAGE_CLASS, delivery="image", actor=people["admin"][0]
        )
        self._line(
            f"vendor acme.example {vendor.uuid}; class thermo-v2 {thermo.uuid}; "
            f"class {IMAGE_CLASS} {image_class.uuid} (image profile)"
        )
        bootloader_key = self._bootloader_key()

        self._step("Firmware 1.1.0: MCUboot image built with imgtool, signed SUIT manifest")
        author_key = people["alice"][1]
        image, manifest, envelope = self._firmware(people, thermo, now=now)
        self._line(
            f"image {image.size} bytes sha256 {image.sha256[:16]}…; manifest "
            f"{manifest.manifest_digest[:16]}… seq {manifest.sequence_number} "
            f"counter {manifest.security_counter}"
        )

        self._step("Release approval: policy {author: 1, qa: 1, security: 1}")
        self._approve(people, manifest, envelope, "thermo-1.1.0")

        self._step(
            f"Firmware 1.1.0 for {IMAGE_CLASS}: MCUboot image signed with the bootloader key, "
            "under a signed SUIT manifest (the server's authority; the device installs the image)"
        )
        image_v3, manifest_v3, envelope_v3 = self._firmware(
            people, image_class, now=now, key_path=self.bootloader_key_path
        )
        self._line(
            f"image {image_v3.size} bytes sha256 {image_v3.sha256[:16]}… (the Package URI names "
            f"it: /fw/i/<sha256>); manifest {manifest_v3.manifest_digest[:16]}…"
        )
        self._approve(people, manifest_v3, envelope_v3, "thermo-v3-1.1.0")

        total = options["devices"] + WRONG_CLASS + IMAGE_DEVICES
        self._step(f"LwM2M gateway on loopback and {total} simulated devices")
        fleet = EmbeddedFleet(trust_anchors=[author_key.public_key()])
        common = {
            "manufacturer": "Acme Sensors",
            "vendor_id": str(vendor.uuid),
            "sequence_number": 1,
            "security_counter": 1,
            "lifetime": 600,
        }
        fleet.add(
            FleetSpec(
                count=options["devices"], model="thermo-v2", class_id=str(thermo.uuid), **common
            )
        )
        fleet.add(
            FleetSpec(
                count=WRONG_CLASS,
                model="thermo-v1",
                prefix="legacy",
                class_id=str(suit.class_id(vendor.uuid, "thermo-v1")),
                **common,
            )
        )
        for prefix, method in (
            ("zephyr", DeliveryMethod.BOTH),
            ("zephyr-push", DeliveryMethod.PUSH),
        ):
            fleet.add(
                FleetSpec(
                    count=IMAGE_DEVICES // 2,
                    model=IMAGE_CLASS,
                    prefix=prefix,
                    class_id=str(image_class.uuid),
                    delivery="image",
                    bootloader_key=bootloader_key,
                    delivery_method=method,
                    **common,
                )
            )
        fleet.start(register_timeout=120)
        try:
            self._wait(
                lambda: (
                    Device.objects.filter(online=True).exclude(firmware_version="").count() >= total
                ),
                60,
            )
            self._line(
                f"{Device.objects.filter(online=True).count()} devices registered "
                f"through {fleet.gateway_id}; {IMAGE_DEVICES} of them are {IMAGE_CLASS} "
                "(image profile; half of those take pushed packages only)"
            )
            self._rollout(people, fleet, options)
            self._image_rollout(people, options)
        except BaseException:
            fleet.stop()
            raise
        if not options["serve"]:
            fleet.stop()
        verdict = audit_verify()
        self._step("Audit trail")
        self._line(
            f"hash chain {'OK' if verdict.ok else 'BROKEN'}: {verdict.checked} events, "
            f"head {verdict.head[:16]}…"
        )
        self._line(
            "people (password for all: "
            + DEMO_PASSWORD
            + "): "
            + ", ".join(f"{n} ({r})" for n, r, _ in PEOPLE)
            + ", admin (admin)"
        )
        if options["serve"]:
            self._serve(people, fleet, options["serve"], now=now)

    def _serve(
        self, people: dict[str, Any], fleet: EmbeddedFleet, address: str, *, now: dt.datetime
    ) -> None:
        """Leave something alive: a second campaign rolling out slowly over the running fleet,
        an embedded beat moving it, and the console served; Ctrl-C stops all three."""
        beat = None
        try:
            self._step("Left running: firmware 1.2.0 for thermo-v2, rolled out slowly")
            thermo = _retry(lambda: Campaign.objects.get(name="thermo-1-1-rollout").device_class)
            _, manifest, envelope = self._firmware(
                people, thermo, now=now, version="1.2.0", sequence=3
            )
            self._approve(people, manifest, envelope, "thermo-1.2.0")
            campaign, _ = services.campaign_apply(
                spec=parse_spec(LIVE_SPEC, source="demo live spec"),
                actor=people["dave"][0],
                source="demo live spec",
            )
            beat = EmbeddedBeat().start()
            self._line(
                f"campaign {campaign.name}: {campaign.stages.count()} stages, 2 devices a minute "
                "at first (doubling every 3 minutes), 2-minute soaks; an embedded beat "
                f"reconciles it every {settings.CAMPAIGN_RECONCILE_SECONDS} s"
            )
            self._line(f"follow it here too: manage.py campaign status {campaign.name} --watch")
            self._step(
                f"Console: http://{address}/ (sign in as any of the people above; "
                "Ctrl-C stops it, the fleet and the beat)"
            )
            self._runserver(address)
        finally:
            if beat is not None:
                beat.stop()
            fleet.stop()

    def _runserver(self, address: str) -> None:
        """Serve the console until Ctrl-C (Django's development server, no reloader: the fleet
        and the beat live in this process)."""
        call_command("runserver", address, use_reloader=False)

    # --- the rollout ---------------------------------------------------------------------------
    def _rollout(
        self, people: dict[str, Any], fleet: EmbeddedFleet, options: dict[str, Any]
    ) -> None:
        ops = people["dave"][0]
        spec = parse_spec(SPEC, source="demo spec")
        self._step("campaign plan (nothing written)")
        call_command("campaign", "plan", self._spec_file(), stdout=self.stdout)
        campaign, _ = services.campaign_apply(spec=spec, actor=ops, source="demo spec")
        canary = list(
            Rollout.objects.filter(campaign=campaign, stage=0, state=RolloutState.PENDING)
            .order_by("device__endpoint")
            .values_list("device__endpoint", flat=True)
        )
        faulty = canary[:FAULTY_IN_CANARY]
        fleet.set_faults(faulty, Faults(boot_fail=True))
        self._line(
            f"applied; {len(faulty)} canary devices have a bad power rail and will fail "
            f"to boot the update: {', '.join(faulty)}"
        )
        self._step("Rolling out (the engine reconciles; devices download, verify, install, reboot)")
        deadline = time.monotonic() + options["timeout"]
        resumed = False
        campaign_id = campaign.pk
        while time.monotonic() < deadline:
            _retry(lambda: engine.campaign_reconcile(campaign_id))
            campaign = _retry(lambda: Campaign.objects.get(pk=campaign_id))
            self._bars(campaign)
            if campaign.status == CampaignStatus.PAUSED and not resumed:
                self._line(f"\nPAUSED by the engine: {campaign.pause_reason}")
                self._line(
                    "operator replaces the faulty power rails, then resumes "
                    "(failed canary devices are retried)"
                )
                fleet.set_faults(faulty, Faults())
                services.campaign_resume(campaign=campaign, actor=ops)
                resumed = True
                self._drawn = 0
            elif campaign.status in (CampaignStatus.COMPLETED, CampaignStatus.ABORTED):
                break
            time.sleep(0.5)
        self._summary(campaign)

    def _image_rollout(self, people: dict[str, Any], options: dict[str, Any]) -> None:
        """The image-profile class: one stage; the engine pulls where the device takes a Package
        URI and pushes where it does not; each device verifies the image with its bootloader
        key, test-boots and confirms it."""
        ops = people["dave"][0]
        spec = parse_spec(IMAGE_SPEC, source="demo image spec")
        self._step(f"Campaign for {IMAGE_CLASS} (delivery profile: image)")
        campaign, _ = services.campaign_apply(spec=spec, actor=ops, source="demo image spec")
        deadline = time.monotonic() + options["timeout"]
        campaign_id = campaign.pk
        while time.monotonic() < deadline:
            _retry(lambda: engine.campaign_reconcile(campaign_id))
            campaign = _retry(lambda: Campaign.objects.get(pk=campaign_id))
            if campaign.status in (CampaignStatus.COMPLETED, CampaignStatus.ABORTED):
                break
            time.sleep(0.5)
        from campaigns.selectors import campaign_status

        data = _retry(lambda: campaign_status(campaign))
        methods = data["stages"][0]["methods"]
        confirmed = Device.objects.filter(
            device_class__name=IMAGE_CLASS, firmware_version="1.1.0"
        ).count()
        self._line(
            f"campaign {campaign.name} {campaign.status}: pull {methods.get('pull', 0)}, "
            f"push {methods.get('push', 0)}; {confirmed} of {IMAGE_DEVICES} {IMAGE_CLASS} "
            "devices now report 1.1.0 (image verified by their bootloader, confirmed after boot)"
        )

    def _firmware(
        self,
        people: dict[str, Any],
        device_class: Any,
        *,
        now: dt.datetime,
        key_path: Path | None = None,
        version: str = "1.1.0",
        sequence: int = 2,
    ) -> tuple[Any, Any, bytes]:
        """Firmware ``version`` of ``device_class``: an MCUboot image (signed with ``key_path``
        when the class's bootloader checks signatures) under a SUIT manifest signed by alice."""
        author, author_key = people["alice"]
        image = release_services.image_upload(
            data=imgtool.build_image(
                (f"{device_class.name} firmware {version}\n".encode() * 2000)[:32768],
                version=version,
                security_counter=1,
                key_path=key_path,
                vendor_id=str(device_class.vendor.uuid),
                class_id=str(device_class.uuid),
            ),
            filename=f"{device_class.name}-{version}.bin",
            actor=author,
        )
        envelope = suit.create_envelope(
            manifest_params(
                device_class=device_class,
                image=image,
                sequence_number=sequence,
                security_counter=1,
                use_before=now + dt.timedelta(days=30),
            ),
            keys=[author_key],
        )
        manifest = release_services.manifest_import(envelope=envelope, created_by=author)
        return image, manifest, envelope

    def _approve(self, people: dict[str, Any], manifest: Any, envelope: bytes, name: str) -> None:
        author = people["alice"][0]
        release = release_services.release_create(manifest=manifest, name=name, actor=author)
        verdict = release_services.release_submit(release=release, actor=author)
        self._line(f"{name} submitted by alice: {verdict.summary()}")
        for person, role in (("bob", "qa"), ("carol", "security")):
            user, key = people[person]
            block = suit.sign_manifest_digest(envelope, key=key)
            _, verdict = release_services.release_approve(
                release=release, signer=user, role=role, cose=block
            )
            self._line(f"{person} signed as {role}: {verdict.summary()}")

    def _bars(self, campaign: Campaign) -> None:
        from campaigns.selectors import campaign_status

        data = _retry(lambda: campaign_status(campaign))
        lines = []
        for stage in data["stages"]:
            t = stage["tally"]
            eligible = max(1, t["total"] - t["skipped"] - t["cancelled"])
            width = 30
            ok = round(width * t["succeeded"] / eligible)
            bad = round(width * (t["failed"] + t["timed_out"]) / eligible)
            fly = round(width * t["in_flight"] / eligible)
            bar = "#" * ok + "x" * bad + ">" * fly
            bar = (bar + "." * width)[:width]
            marker = ">" if stage["current"] and data["status"] == "running" else " "
            lines.append(
                f" {marker} {stage['name']:7} [{bar}] ok {t['succeeded']:3} "
                f"failed {t['failed'] + t['timed_out']:2} in-flight {t['in_flight']:3} "
                f"pending {t['pending']:3} skipped {t['skipped']:2}  {stage['status']}"
            )
        header = f"   campaign {data['campaign']}: {data['status']}"
        block = [header, *lines]
        if self.tty:
            if getattr(self, "_drawn", 0):
                sys.stdout.write(f"\x1b[{self._drawn}F")
            sys.stdout.write("\n".join(f"{line}\x1b[K" for line in block) + "\n")
            sys.stdout.flush()
            self._drawn = len(block)
        else:
            snapshot = "\n".join(block)
            if snapshot != getattr(self, "_last", None):
                self.stdout.write(snapshot)
                self._last = snapshot

    def _summary(self, campaign: Campaign) -> None:
        self._step(f"Summary: campaign {campaign.name} {campaign.status}")
        for stage in campaign.stages.order_by("index"):
            rows = Rollout.objects.filter(campaign=campaign, stage=stage.index)
            by_state = Counter(rows.values_list("state", flat=True))
            failed = Counter(
                rows.filter(state__in=[RolloutState.FAILED, RolloutState.TIMED_OUT]).values_list(
                    "reason", flat=True
                )
            )
            skipped = Counter(
                rows.filter(state=RolloutState.SKIPPED).values_list("reason", flat=True)
            )
            retried = rows.filter(attempts__gt=1).count()
            self._line(
                f"{stage.name:7} succeeded {by_state.get(RolloutState.SUCCEEDED, 0):3}"
                f"  failed {dict(failed) or 0}  skipped {dict(skipped) or 0}"
                f"  retried after resume {retried}"
            )
        on_new = Device.objects.filter(
            device_class=campaign.device_class, firmware_version="1.1.0"
        ).count()
        self._line(f"{on_new} devices now report firmware 1.1.0 (confirmed after reboot)")

    # --- helpers -------------------------------------------------------------------------------
    def _people(self, now: dt.datetime) -> dict[str, Any]:
        user_model = get_user_model()
        admin = user_model.objects.create_superuser(username="admin", password=DEMO_PASSWORD)
        people: dict[str, Any] = {"admin": (admin, None)}
        keys_dir = Path(settings.VAR_DIR) / "demo" / "keys"
        keys_dir.mkdir(parents=True, exist_ok=True)
        for name, role, alg in PEOPLE:
            user = user_model.objects.create_user(username=name, password=DEMO_PASSWORD)
            release_services.role_grant(
                user=user, role=role, actor=admin, now=now - dt.timedelta(minutes=5)
            )
            key = None
            if alg:
                key = suit.generate_private_key(alg)
                path = keys_dir / f"{name}.pem"
                path.write_bytes(suit.private_key_pem(key))
                path.chmod(0o600)
                release_services.signing_key_register(
                    owner=user,
                    public_key_pem=suit.public_key_pem(key.public_key()).decode(),
                    valid_from=now - dt.timedelta(minutes=5),
                )
            people[name] = (user, key)
            self._line(f"{name:6} {role:15} {alg or 'no key (read-only)'}")
        return people

    def _bootloader_key(self) -> str:
        """The MCUboot signing key of the image-profile class (private half kept with the other
        demo keys); its devices' bootloader holds the public half."""
        path = Path(settings.VAR_DIR) / "demo" / "keys" / f"mcuboot-{IMAGE_CLASS}.pem"
        imgtool.keygen(path)
        self.bootloader_key_path = path
        path.chmod(0o600)
        self._line(f"MCUboot signing key of {IMAGE_CLASS}: {path} (imgtool, ECDSA P-256)")
        return imgtool.public_key_pem(path).decode()

    def _spec_file(self) -> str:
        path = Path(settings.VAR_DIR) / "demo" / "thermo-1-1-rollout.yaml"
        path.write_text(SPEC)
        return str(path)

    def _wait(self, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _retry(predicate):
            time.sleep(0.2)

    def _step(self, text: str) -> None:
        self.stdout.write(f"\n== {text}")

    def _line(self, text: str) -> None:
        self.stdout.write(f"   {text}")
