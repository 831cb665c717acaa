"""State changes of the device registry. The LwM2M gateway reports what it sees as events (through
``workers.tasks.device_events_task``); these services turn them into rows, one transaction each.

Events may arrive late, twice or out of order (several Celery workers, a gateway restarting, a
device moving to another gateway), so every service is idempotent and guarded: a deregistration
or expiry only takes a device offline when it names the registration the device currently holds,
and an older observation never overwrites a newer one (``last_seen`` only moves forward).

Liveness does not depend on the gateway staying alive: ``registrations_sweep`` (a beat task of
the workers) takes offline the devices whose stored registration expiry passed, grace included,
which is what the holding gateway would have reported had it not died.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from audit.services import audit_lock, audit_record
from campaigns import events
from campaigns.checks import CLASS_MISMATCH, CLOCK_SKEW, UNMAPPED_DEVICE
from campaigns.events import UnknownEventError
from campaigns.models import (
    CampaignStatus,
    CommandStatus,
    Device,
    DeviceCommand,
    DeviceEncryptionKey,
    DeviceEvent,
    DevicePSK,
    Rollout,
    RolloutState,
)
from campaigns.psk import (
    MAX_IDENTITY_BYTES,
    MAX_PSK_BYTES,
    PSKError,
    decrypt_psk,
    encrypt_psk,
)
from manifests.services import access, require_role
from manifests.suit import keys as suit_keys
from manifests.suit.errors import SUITError

# The gateway operation that reads /3/0/{0,1,2,3,13} and /5/0/{8,9} again and reports them as
# a ``device_info`` event (args {}; docs/lwm2m.md, "Command bus").
READ_INFO = "read_info"
# Devices asked to re-read their information when a vendor or class is created: bounds the
# creating transaction (one insert); devices beyond it are read at their next registration
# Update by the gateway, as any device whose information is incomplete.
REMAP_READ_BATCH = 1000
# Devices with an off clock asked to re-read per periodic pass (one insert per pass).
CLOCK_REREAD_BATCH = 500
# Devices the registry sweep takes offline per statement (``registrations_sweep``): bounds one
# transaction's row locks and its event insert, so a dead gateway's 50,000 devices are 50 short
# transactions that never hold up the gateways' event batches for long.
REGISTRY_SWEEP_BATCH = 1000
# Who the sweep's audit entries name, and the reason its ``expired`` events carry.
REGISTRY_SWEEPER = "system:registry-sweep"
SWEPT = "swept"

# The task that sends a stored command to its gateway, by its registered name: the worker side
# defines it, the fleet side only queues it (``command_queue``).
DEVICE_COMMAND_TASK = "workers.tasks.device_command_task"
# The same for a batch of commands (a reconcile pass's), and the most one task sends: a pass of
# 500 devices is 10 tasks behind the event batches in the workers' queue instead of 500, each
# command still sent in its own transaction.
DEVICE_COMMANDS_TASK = "workers.tasks.device_commands_task"
COMMAND_SEND_BATCH = 50

logger = logging.getLogger(__name__)


class DeviceRegistryError(Exception):
    """A device-registry operation was refused; nothing was written."""

    code = "device.registry_error"


class UnknownDeviceError(DeviceRegistryError):
    """No device with that endpoint or id."""

    code = "device.unknown"


class DeviceOfflineError(DeviceRegistryError):
    """The device holds no registration, so no gateway can reach it now."""

    code = "device.offline"


class DeviceEncryptionKeyError(DeviceRegistryError):
    """A device's payload encryption key is refused (not a P-256 public key, bad kid, or a kid
    another device already has)."""

    code = "device.encryption_key"


class CommandRefusedError(DeviceRegistryError):
    """The command bus refused a command (no such gateway, message too large): it fails."""

    code = "device.command_refused"

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        if code:
            self.code = code


class ReportKeyError(DeviceRegistryError):
    """A device report key that is not a PEM Ed25519 or P-256 public key."""

    code = "device.bad_report_key"


def report_key_pem(text: str) -> str:
    """``text`` as the stored form of a device report key (its public PEM), or ReportKeyError."""
    try:
        key = suit_keys.load_public_key_pem(text.strip().encode())
        suit_keys.key_info(key)
    except (SUITError, ValueError, TypeError) as exc:
        raise ReportKeyError(f"not a usable report key: {exc}") from None
    return suit_keys.public_key_pem(key).decode()


def device_report_key_set(
    *, endpoint: str, key_pem: str, actor: Any, now: dt.datetime | None = None
) -> Device:
    """Register (or replace) the public key a device signs its SUIT reports with; audited with
    the key's kid. A refused key writes nothing. ``actor`` is the operator, or the name of the
    system process that provisions simulated devices."""
    now = now or timezone.now()
    pem = report_key_pem(key_pem)
    kid = suit_keys.kid_for_public_key(suit_keys.load_public_key_pem(pem.encode())).hex()
    with transaction.atomic():
        device = _locked(endpoint)
        if device.report_key == pem:
            return device
        Device.objects.filter(pk=device.pk).update(report_key=pem)
        device.report_key = pem
        audit_record(
            actor=actor,
            action="device.report_key",
            object_type="device",
            object_id=endpoint,
            details={"kid": kid},
            now=now,
        )
        return device


# Report keys registered per statement by ``device_report_keys_register``.
REPORT_KEY_BATCH = 500


def device_report_keys_register(
    *, keys: dict[str, str], actor: Any, now: dt.datetime | None = None
) -> int:
    """Register many devices' report keys at once (a fleet provisioned together): every key is
    checked first (one bad key registers none), the missing registry rows are created, keys
    are written in batches, and one ``device.report_keys`` audit event records the count.
    Returns how many devices' keys changed."""
    now = now or timezone.now()
    pems = {endpoint: report_key_pem(pem) for endpoint, pem in keys.items()}
    if not pems:
        return 0
    with transaction.atomic():
        Device.objects.bulk_create(
            [Device(endpoint=endpoint) for endpoint in pems],
            ignore_conflicts=True,
            batch_size=REPORT_KEY_BATCH,
        )
        devices = list(
            Device.objects.select_for_update()
            .filter(endpoint__in=list(pems))
            .order_by("pk")
            .only("pk", "endpoint", "report_key")
        )
        changed = [d for d in devices if d.report_key != pems[d.endpoint]]
        for device in changed:
            device.report_key = pems[device.endpoint]
        Device.objects.bulk_update(changed, ["report_key"], batch_size=REPORT_KEY_BATCH)
        if changed:
            audit_record(
                actor=actor,
                action="device.report_keys",
                object_type="device",
                object_id="",
                details={"count": len(changed)},
                now=now,
            )
    return len(changed)


def command_queue(command_id: str) -> None:
    """Send a stored command once the current transaction commits (at once outside one), through
    the task registered under ``DEVICE_COMMAND_TASK``."""
    from celery import current_app

    task = current_app.tasks[DEVICE_COMMAND_TASK]
    transaction.on_commit(lambda: task.delay(command_id))


def commands_queue(command_ids: list[str]) -> None:
    """``command_queue`` for a batch: one commit hook sends them all, in order, as tasks of up
    to COMMAND_SEND_BATCH commands each."""
    from celery import current_app

    task = current_app.tasks[DEVICE_COMMANDS_TASK]

    def send() -> None:
        for start in range(0, len(command_ids), COMMAND_SEND_BATCH):
            task.delay(command_ids[start : start + COMMAND_SEND_BATCH])

    transaction.on_commit(send)


def _ts(value: float | None) -> dt.datetime:
    if value is None:
        return timezone.now()
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)


# Event intake locks a device FOR NO KEY UPDATE (PostgreSQL): it serialises the device's events
# and never changes a key column, so it need not block the FOR KEY SHARE locks that rows
# referencing the device take (a campaign apply's COPY of rollouts, a dispatch's commands and
# its device window). With FOR UPDATE, a batch of events locking its devices in event order and
# an apply's foreign-key checks locking them in plan order deadlocked (issue 13's chaos run).
def _locked(endpoint: str) -> Device:
    device, _ = Device.objects.select_for_update(no_key=True).get_or_create(endpoint=endpoint)
    return device


def _address(address: str) -> str:
    """A peer address as stored: one that does not fit the column is not kept (such a NoSec
    registration cannot be adopted by another gateway; the device registers again there)."""
    limit = Device._meta.get_field("registration_address").max_length or 0
    return address if len(address) <= limit else ""


def _seen(device: Device, at: dt.datetime) -> None:
    if device.last_seen is None or at > device.last_seen:
        device.last_seen = at


def _log(device: Device, kind: str, data: dict[str, Any], gateway_id: str = "") -> None:
    DeviceEvent.objects.create(device=device, kind=kind, data=data, gateway_id=gateway_id)


def device_register(
    *,
    endpoint: str,
    gateway_id: str,
    registration_id: str,
    lifetime: int,
    binding: str = "U",
    lwm2m_version: str = "1.0",
    queue_mode: bool = False,
    objects: list[str] | None = None,
    address: str = "",
    identity: str = "",
    root_path: str = "/",
    at: dt.datetime | None = None,
) -> Device:
    """A Register: the device is online at ``gateway_id`` under ``registration_id``. The
    registering peer (``address``, ``identity``) and ``root_path`` are kept with it so that
    another gateway can adopt the registration at the device's next Update."""
    at = at or timezone.now()
    with transaction.atomic():
        device = _locked(endpoint)
        if device.registered_at is not None and at < device.registered_at:
            # A newer registration already won (e.g. at another gateway): keep it.
            _log(device, "register_stale", {"registration_id": registration_id}, gateway_id)
            return device
        device.online = True
        device.registration_id = registration_id
        device.gateway_id = gateway_id
        device.registered_at = at
        device.lifetime = lifetime
        device.registration_expires_at = at + dt.timedelta(seconds=lifetime)
        device.binding = binding
        device.lwm2m_version = lwm2m_version
        device.queue_mode = queue_mode
        device.lwm2m_objects = list(objects or [])
        device.registration_address = _address(address)
        device.registration_identity = identity
        device.registration_root_path = "" if root_path == "/" else root_path
        _seen(device, at)
        device.save()
        _log(device, "registered", {"registration_id": registration_id}, gateway_id)
        return device


def device_registration_update(
    *,
    endpoint: str,
    registration_id: str,
    gateway_id: str,
    lifetime: int | None = None,
    binding: str | None = None,
    objects: list[str] | None = None,
    address: str = "",
    identity: str = "",
    root_path: str | None = None,
    at: dt.datetime | None = None,
) -> Device:
    """An Update: refreshes the lifetime (and what changed) of the current registration, and
    moves the device to ``gateway_id`` (a gateway that adopted the registration: commands
    follow). An empty ``address`` / ``identity`` leaves the stored peer as it is."""
    at = at or timezone.now()
    with transaction.atomic():
        device = _locked(endpoint)
        if device.registration_id != registration_id:
            _log(device, "update_stale", {"registration_id": registration_id}, gateway_id)
            return device
        if lifetime is not None:
            device.lifetime = lifetime
        if binding is not None:
            device.binding = binding
        if objects is not None:
            device.lwm2m_objects = list(objects)
        if root_path is not None:
            device.registration_root_path = "" if root_path == "/" else root_path
        if address:
            device.registration_address = _address(address)
        if identity:
            device.registration_identity = identity
        if device.last_seen is None or at >= device.last_seen:
            device.registration_expires_at = at + dt.timedelta(seconds=device.lifetime)
        device.online = True
        device.gateway_id = gateway_id
        _seen(device, at)
        device.save()
        return device


def device_registration_end(
    *,
    endpoint: str,
    registration_id: str,
    reason: str,
    gateway_id: str = "",
    at: dt.datetime | None = None,
) -> Device | None:
    """De-register or lifetime expiry: offline only if this is still the current registration.

    An expiry reported by another gateway than the one the device is at now is stale: the
    registration moved (another gateway adopted it at an Update) and the old holder's copy ran
    out, not the registration."""
    at = at or timezone.now()
    with transaction.atomic():
        device = Device.objects.select_for_update(no_key=True).filter(endpoint=endpoint).first()
        if device is None:
            return None
        moved = (
            reason == "expired"
            and bool(gateway_id)
            and bool(device.gateway_id)
            and device.gateway_id != gateway_id
        )
        if moved:
            reason = "expired_elsewhere"
        if device.registration_id == registration_id and device.online and not moved:
            device.online = False
            device.save(update_fields=["online", "updated_at"])
        _log(device, reason, {"registration_id": registration_id})
        return device


def registration_grace() -> dt.timedelta:
    """How long after its expiry a registration is still left to its gateway (settings,
    ``REGISTRATION_GRACE_SECONDS``: why that long is said there)."""
    return dt.timedelta(seconds=settings.REGISTRATION_GRACE_SECONDS)


# The inner SELECT finds a batch in expiry order through the partial index
# ``device_online_expiry_idx``; on PostgreSQL it locks it, skipping rows another transaction
# holds (a Register or Update being applied now: it is refreshing them, and waiting for it could
# deadlock against an event batch locking devices in its own order). The outer WHERE checks the
# expiry again on the row as it is when updated: a Register or Update committed after the sweep
# read the row is never overwritten.
_SWEEP_SQL = (
    "UPDATE campaigns_device SET online = %s, updated_at = %s"
    " WHERE id IN (SELECT id FROM campaigns_device WHERE online = %s"
    " AND registration_expires_at < %s ORDER BY registration_expires_at, id LIMIT %s{lock})"
    " AND online = %s AND registration_expires_at < %s"
    " RETURNING id, registration_id, gateway_id"
)


def _sweep_sql() -> str:
    skip = connection.features.has_select_for_update_skip_locked
    return _SWEEP_SQL.format(lock=" FOR UPDATE SKIP LOCKED" if skip else "")


def registrations_sweep(
    *,
    grace: dt.timedelta | None = None,
    now: dt.datetime | None = None,
    batch: int = REGISTRY_SWEEP_BATCH,
) -> int:
    """Take offline every device whose registration expired more than ``grace`` ago
    (``registration_expires_at``: registration or last Update plus its lifetime), as the
    gateway holding it would have at the expiry, had it not died: the same ``expired`` event
    per device (``reason: swept``, naming the gateway that held it), one audit entry per batch.

    One set-based UPDATE per batch of at most ``batch`` devices (then one event insert and the
    audit entry, in the batch's transaction): the queries grow with the number of batches, not
    with the fleet. Idempotent: a device already offline, re-registered or updated since is not
    matched, so a second run, or two workers at once, change nothing more. A device that
    registers again afterwards is online again as usual. Returns the number taken offline."""
    now = now or timezone.now()
    grace = registration_grace() if grace is None else grace
    if batch < 1:
        raise ValueError("a sweep batch is at least one device")
    cutoff = connection.ops.adapt_datetimefield_value(now - grace)
    stamp = connection.ops.adapt_datetimefield_value(now)
    sql = _sweep_sql()
    total = 0
    while True:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql, [False, stamp, True, cutoff, batch, True, cutoff])
                rows = cursor.fetchall()
            if not rows:
                return total
            DeviceEvent.objects.bulk_create(
                [
                    DeviceEvent(
                        device_id=pk,
                        kind="expired",
                        data={"registration_id": registration_id, "reason": SWEPT},
                        gateway_id=gateway_id,
                    )
                    for pk, registration_id, gateway_id in rows
                ]
            )
            gateways: dict[str, int] = {}
            for _pk, _registration_id, gateway_id in rows:
                gateways[gateway_id] = gateways.get(gateway_id, 0) + 1
            audit_record(
                actor=REGISTRY_SWEEPER,
                action="device.registrations_swept",
                object_type="device",
                object_id="*",
                details={
                    "count": len(rows),
                    "gateways": gateways,
                    "grace_seconds": grace.total_seconds(),
                },
                now=now,
            )
        total += len(rows)
        if len(rows) < batch:
            return total


def _map_vendor_class(manufacturer: str, model: str) -> tuple[Any, Any]:
    from manifests.models import DeviceClass, Vendor

    vendor = (
        Vendor.objects.filter(Q(name__iexact=manufacturer) | Q(domain__iexact=manufacturer))
        .order_by("pk")
        .first()
        if manufacturer
        else None
    )
    device_class = (
        DeviceClass.objects.filter(vendor=vendor, name__iexact=model).order_by("pk").first()
        if vendor is not None and model
        else None
    )
    return vendor, device_class


def device_info_record(
    *,
    endpoint: str,
    manufacturer: str = "",
    model: str = "",
    serial: str = "",
    firmware_version: str = "",
    device_time: float | None = None,
    protocols: list[int] | None = None,
    delivery_method: int | None = None,
    at: dt.datetime | None = None,
) -> Device:
    """What the gateway read from /3/0 and /5/0 after a registration. A value the gateway could
    not read comes as "" (or None) and leaves what the registry knows unchanged.

    ``at`` is when the gateway read the values. An observation older than the one the registry
    holds (``info_read_at``) only fills what the registry does not know yet: a batch applied
    late (retried after the database refused it, or redelivered after its worker died) must
    not write a device's old firmware version back over the one it reported after an update,
    or the update's rollout would never see its version and stay unconfirmed."""
    from manifests.models import Manifest

    at = at or timezone.now()
    with transaction.atomic():
        device = _locked(endpoint)
        older = device.info_read_at is not None and at < device.info_read_at
        if older:
            logger.info(
                "device information of %s read at %s is older than the registry's (%s): only "
                "what is unknown is taken",
                endpoint,
                at.isoformat(),
                device.info_read_at.isoformat() if device.info_read_at else None,
            )
            manufacturer = "" if device.manufacturer else manufacturer
            model = "" if device.model else model
            serial = "" if device.serial else serial
            firmware_version = "" if device.firmware_version else firmware_version
            device_time = None if device.device_time is not None else device_time
            protocols = None if device.fw_protocols else protocols
            delivery_method = None if device.fw_delivery_method is not None else delivery_method
        if manufacturer:
            device.manufacturer = manufacturer[:255]
        if model:
            device.model = model[:255]
        if serial:
            device.serial = serial[:255]
        vendor, device_class = _map_vendor_class(device.manufacturer, device.model)
        newly_mapped = device_class is not None and device_class.pk != device.device_class_id
        device.vendor = vendor
        device.device_class = device_class
        if firmware_version and firmware_version != device.firmware_version:
            device.firmware_version = firmware_version[:64]
            device.sequence_number = None
            # Another version than the one installed through us: its bytes are not known.
            device.installed_image_digest = ""
        if device_class is not None and device.firmware_version:
            manifest = (
                Manifest.objects.filter(device_class=device_class, version=device.firmware_version)
                .order_by("-sequence_number")
                .first()
            )
            if manifest is not None:
                device.sequence_number = max(device.sequence_number or 0, manifest.sequence_number)
                device.security_counter = max(device.security_counter, manifest.security_counter)
        if device_time is not None and math.isfinite(float(device_time)):
            # Kept together: the reported time tells a clockless device from a wrong clock.
            device.device_time = float(device_time)
            device.clock_offset_seconds = device.device_time - at.timestamp()
        if device.info_read_at is None or at > device.info_read_at:
            device.info_read_at = at
        if protocols is not None:
            device.fw_protocols = sorted({int(p) for p in protocols})
        if delivery_method is not None:
            device.fw_delivery_method = int(delivery_method)
        _seen(device, at)
        device.save()
        if newly_mapped:
            _forget_mismatch(device, device_class)
        return device


def device_clock_trust(
    *, endpoint: str, actor: Any, trusted: bool = True, now: dt.datetime | None = None
) -> Device:
    """An operator accepts a device's clock as it is (``trusted=False`` withdraws that): a
    clock that is off no longer holds the device back in any campaign, and its rollouts
    record that only the server's use-before check applied. Fleet operator or admin; audited
    with the clock as last read, so the log says what was accepted."""
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    with transaction.atomic():
        device = Device.objects.select_for_update().filter(endpoint=endpoint).first()
        if device is None:
            raise UnknownDeviceError(f"no device {endpoint!r}")
        device.clock_trusted_at = now if trusted else None
        device.save(update_fields=["clock_trusted_at", "updated_at"])
        audit_record(
            actor=actor,
            action="device.clock_trust" if trusted else "device.clock_untrust",
            object_type="device",
            object_id=endpoint,
            details={
                "clock_offset_seconds": device.clock_offset_seconds,
                "device_time": device.device_time,
            },
            now=now,
        )
        return device


def devices_map_to_catalog(*, vendor: Any = None, device_class: Any = None) -> dict[str, int]:
    """A vendor or device class was just created (called in the creating transaction): devices
    that reported its name before it existed are mapped now, as ``device_info_record`` would map
    them, and unmapped online devices whose manufacturer or model was never read are asked to
    read it again (``read_info``), so none waits for a re-registration. Constant queries: one
    update, one read, one insert. Returns the counts ("mapped", "asked")."""
    if vendor is None and device_class is None:
        raise ValueError("give a vendor or a device class")
    mapped = 0
    if vendor is not None:
        # The first vendor (by pk) that matches wins in ``_map_vendor_class``; a device with no
        # vendor matched none before, so the new one is its first match.
        mapped = (
            Device.objects.filter(vendor__isnull=True)
            .filter(Q(manufacturer__iexact=vendor.name) | Q(manufacturer__iexact=vendor.domain))
            .exclude(manufacturer="")
            .update(vendor=vendor)
        )
    if device_class is not None:
        # A new class has no manifest yet, so no sequence number or counter to derive.
        mapped = (
            Device.objects.filter(
                vendor=device_class.vendor,
                device_class__isnull=True,
                model__iexact=device_class.name,
            )
            .exclude(model="")
            .update(device_class=device_class)
        )
    missing = (
        Device.objects.filter(online=True, device_class__isnull=True)
        .filter(Q(manufacturer="") | Q(model=""))
        .order_by("pk")
        .values_list("pk", flat=True)[:REMAP_READ_BATCH]
    )
    asked = _queue_read_info(list(missing))
    return {"mapped": mapped, "asked": asked}


def _queue_read_info(device_ids: list[int]) -> int:
    """One ``read_info`` command per device, in one insert, each sent after commit."""
    commands = DeviceCommand.objects.bulk_create(
        [DeviceCommand(device_id=pk, operation=READ_INFO, args={}) for pk in device_ids]
    )
    for command in commands:
        command_queue(str(command.pk))
    return len(commands)


def devices_clock_reread(
    *, now: dt.datetime | None = None, older_than: dt.timedelta, batch: int = CLOCK_REREAD_BATCH
) -> int:
    """Ask online devices held back for their clock (a rollout pending with ``clock_skew`` in a
    running campaign) to read their information again when the last reading is older than
    ``older_than`` and none was asked for within that time: a clock fixed since (NTP after
    boot, an operator) then lets the device go without a re-registration. Constant queries
    (one read, one insert) for at most ``batch`` devices. Returns the number asked."""
    now = now or timezone.now()
    cutoff = now - older_than
    held = Rollout.objects.filter(
        device=OuterRef("pk"),
        state=RolloutState.PENDING,
        reason=CLOCK_SKEW,
        campaign__status=CampaignStatus.RUNNING,
    )
    asked_recently = DeviceCommand.objects.filter(
        device=OuterRef("pk"), operation=READ_INFO, created_at__gte=cutoff
    )
    due = (
        Device.objects.filter(online=True)
        .filter(Q(info_read_at__isnull=True) | Q(info_read_at__lt=cutoff))
        .filter(Exists(held))
        .exclude(Exists(asked_recently))
        .order_by("info_read_at", "pk")
        .values_list("pk", flat=True)[:batch]
    )
    with transaction.atomic():
        return _queue_read_info(list(due))


def _forget_mismatch(device: Device, device_class: Any) -> None:
    """A device just mapped to ``device_class`` (its information was read late, or read again)
    was skipped as another class by that class's live campaigns: those rollouts, never
    dispatched, are dropped, so the campaigns' enrolment takes the device in with every rule
    checked and in a stage not yet finished, as any device mapped after the campaign began."""
    Rollout.objects.filter(
        device=device,
        state=RolloutState.SKIPPED,
        reason__in=[CLASS_MISMATCH, UNMAPPED_DEVICE],
        attempts=0,
        campaign__device_class=device_class,
        campaign__status__in=[CampaignStatus.RUNNING, CampaignStatus.PAUSED],
    ).delete()


def device_fw_status_record(
    *, endpoint: str, state: int, result: int, gateway_id: str = "", at: dt.datetime | None = None
) -> Device:
    """An Object 5 State/Update Result report; an older report never overwrites a newer one."""
    at = at or timezone.now()
    with transaction.atomic():
        device = _locked(endpoint)
        if device.fw_reported_at is None or at >= device.fw_reported_at:
            device.fw_state, device.fw_result, device.fw_reported_at = state, result, at
        _seen(device, at)
        device.save()
        _log(device, "fw_status", {"state": state, "result": result}, gateway_id)
        return device


def device_fw_installed(
    *,
    endpoint: str,
    manifest_digest: str,
    gateway_id: str = "",
    at: dt.datetime | None = None,
) -> Device:
    """A dispatched update succeeded: the device now runs that manifest's firmware."""
    from manifests.models import Manifest

    at = at or timezone.now()
    with transaction.atomic():
        device = _locked(endpoint)
        manifest = Manifest.objects.filter(manifest_digest=manifest_digest).first()
        # The version is what the device itself reports (/3/0/3 after its reboot), never
        # assumed from the manifest: success must be confirmed by the device.
        if manifest is not None and device.firmware_version == manifest.version:
            device.sequence_number = max(device.sequence_number or 0, manifest.sequence_number)
            device.security_counter = max(device.security_counter, manifest.security_counter)
            device.installed_image_digest = manifest.image_digest
        _seen(device, at)
        device.save()
        _log(device, "fw_installed", {"manifest_digest": manifest_digest}, gateway_id)
        return device


def device_installed_images_record(*, rollout_ids: list[Any]) -> int:
    """Record the image each of these just-confirmed rollouts installed as its device's
    ``installed_image_digest``, where the device still reports the manifest's version.

    A confirmed success (``campaigns.rollouts.confirm_successes``: Update Result 1, the
    reported version equal to the manifest's, and for SUIT devices a verified report) is the
    install through the product, whichever of the device's events came last: the gateway's
    ``fw_installed`` may be applied before the registration's device information carries the
    new version (``device_fw_installed`` then cannot record it), and two events applied in
    concurrent transactions may each see only half of the success, leaving it to the engine's
    pass. Called after the confirmation committed; each device is locked alone, in its own
    transaction (no lock held while waiting for another, whatever order event batches lock
    devices in), and a version reported meanwhile wins. Returns the number of devices
    recorded."""
    from manifests.versions import VersionError, parse_version

    if not rollout_ids:
        return 0
    installs = Rollout.objects.filter(
        pk__in=rollout_ids, state=RolloutState.SUCCEEDED, manifest__isnull=False
    ).values_list("device_id", "manifest__version", "manifest__image_digest")
    recorded = 0
    for device_id, version, digest in sorted(installs):
        with transaction.atomic():
            device = Device.objects.select_for_update().filter(pk=device_id).first()
            if device is None or not digest or device.installed_image_digest == digest:
                continue
            try:
                same = parse_version(device.firmware_version or "") == parse_version(version)
            except VersionError:
                same = False
            if same:
                device.installed_image_digest = digest
                device.save(update_fields=["installed_image_digest", "updated_at"])
                recorded += 1
    return recorded


def device_command_create(
    *, endpoint: str, operation: str, args: dict[str, Any] | None = None
) -> DeviceCommand:
    """Ask the gateway holding the device for an operation; sent after commit by a task."""
    with transaction.atomic():
        device = Device.objects.filter(endpoint=endpoint).first()
        if device is None:
            raise UnknownDeviceError(f"no device {endpoint!r}")
        command = DeviceCommand.objects.create(
            device=device, operation=operation, args=dict(args or {})
        )
        command_queue(str(command.pk))
        return command


def device_command_send(*, command_id: str, publish: Callable[[str, dict[str, Any]], None]) -> str:
    """Send a pending command to the gateway holding its device, at least once.

    The command row stays locked while ``publish(gateway_id, message)`` runs and is marked sent
    only after it returned, in the same transaction: a worker that dies before the commit
    leaves the command pending, and it is sent again (by the task's redelivery or the
    reconcile's resend), never silently dropped. Gateways skip a command id they have already
    run, so a second delivery does nothing twice. A refusal from the bus
    (``CommandRefusedError``) fails the command; any other error propagates and leaves it pending.

    Returns "sent", "offline" (device holds no registration: failed), "refused" (bus refused:
    failed) or "skipped" (unknown, or no longer pending).
    """
    with transaction.atomic():
        command = (
            DeviceCommand.objects.select_for_update()
            .select_related("device")
            .filter(pk=command_id)
            .first()
        )
        if command is None or command.status != CommandStatus.PENDING:
            return "skipped"
        device = command.device
        lapsed = device.registration_expires_at is not None and (
            device.registration_expires_at < timezone.now() - registration_grace()
        )
        if not device.online or not device.gateway_id or lapsed:
            # A lapsed registration (its gateway died before the sweep came by) is offline too:
            # the command would wait in the stream of a gateway that no longer holds the device.
            _command_failed(command, DeviceOfflineError.code, f"{device.endpoint} is offline")
            return "offline"
        message = {
            "command_id": str(command.pk),
            "endpoint": device.endpoint,
            "operation": command.operation,
            "args": command.args,
        }
        try:
            publish(device.gateway_id, message)
        except CommandRefusedError as exc:
            _command_failed(command, exc.code, str(exc))
            return "refused"
        command.status = CommandStatus.SENT
        command.gateway_id = device.gateway_id
        command.attempts += 1
        command.save()
        return "sent"


def _command_failed(command: DeviceCommand, code: str, error: str) -> None:
    command.status = CommandStatus.FAILED
    command.error_code = code
    command.error = error
    command.completed_at = timezone.now()
    command.save()


def device_command_complete(
    *,
    command_id: str,
    ok: bool,
    result: dict[str, Any] | None = None,
    error_code: str = "",
    error: str = "",
    at: dt.datetime | None = None,
) -> DeviceCommand | None:
    """The gateway finished a command; a second report of the same command changes nothing."""
    at = at or timezone.now()
    with transaction.atomic():
        command = (
            DeviceCommand.objects.select_for_update()
            .select_related("device")
            .filter(pk=command_id)
            .first()
        )
        if command is None or command.status in (CommandStatus.SUCCEEDED, CommandStatus.FAILED):
            return command
        command.status = CommandStatus.SUCCEEDED if ok else CommandStatus.FAILED
        command.result = dict(result or {})
        command.error_code, command.error = error_code[:64], error
        command.completed_at = at
        command.save()
        _log(
            command.device,
            "command_result",
            {
                "command": str(command.pk),
                "operation": command.operation,
                "ok": ok,
                **command.result,
            },
            command.gateway_id,
        )
        return command


def psk_secret() -> str:
    """The deployment secret DTLS PSKs are encrypted under at rest."""
    secret: str = settings.LWM2M_PSK_ENCRYPTION_KEY or settings.SECRET_KEY
    return secret


def psk_tokens() -> dict[str, bytes]:
    """Every stored PSK as identity -> encrypted token (decrypt with ``psk_secret()``)."""
    return {
        identity: bytes(token)
        for identity, token in DevicePSK.objects.values_list("identity", "key_encrypted")
    }


def device_psk_set(*, endpoint: str, key: bytes) -> DevicePSK:
    """Provision (or rotate) a device's DTLS PSK; the identity is its endpoint name."""
    if not 1 <= len(key) <= MAX_PSK_BYTES:
        raise PSKError(f"a PSK is 1..{MAX_PSK_BYTES} bytes (the DTLS transport's limit)")
    if len(endpoint.encode("utf-8")) > MAX_IDENTITY_BYTES:
        raise PSKError(
            f"endpoint {endpoint!r} is longer than {MAX_IDENTITY_BYTES} bytes, the longest "
            "DTLS PSK identity the transport sends"
        )
    with transaction.atomic():
        device = _locked(endpoint)
        psk, _ = DevicePSK.objects.update_or_create(
            device=device,
            defaults={
                "identity": endpoint,
                "key_encrypted": encrypt_psk(key, secret=psk_secret()),
            },
        )
        return psk


_MAX_KID_BYTES = 64


def device_encryption_key_register(
    *, endpoint: str, kid: bytes, public_key_pem: str, actor: Any, now: dt.datetime | None = None
) -> DeviceEncryptionKey:
    """Register (or replace) the P-256 public key a device decrypts payloads with, named by
    ``kid`` as the device names it (ECDH-ES + AES-KW recipients, docs/suit.md). Operator or
    admin; audited with the kid only. Registering the same key again changes nothing."""
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    if type(kid) is not bytes or not 1 <= len(kid) <= _MAX_KID_BYTES:
        raise DeviceEncryptionKeyError(f"a kid is 1..{_MAX_KID_BYTES} bytes")
    try:
        public = serialization.load_pem_public_key(public_key_pem.encode())
    except (ValueError, UnicodeError):
        raise DeviceEncryptionKeyError("not a PEM public key") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise DeviceEncryptionKeyError("a device encryption key is a P-256 public key")
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    with transaction.atomic():
        device = Device.objects.select_for_update().filter(endpoint=endpoint).first()
        if device is None:
            raise UnknownDeviceError(f"no device {endpoint!r}")
        taken = DeviceEncryptionKey.objects.filter(kid=kid.hex()).exclude(device=device)
        if taken.exists():
            raise DeviceEncryptionKeyError(f"kid {kid.hex()} belongs to another device")
        current = DeviceEncryptionKey.objects.filter(device=device).first()
        if current is not None and (current.kid, current.public_key_pem) == (kid.hex(), pem):
            return current
        row, _ = DeviceEncryptionKey.objects.update_or_create(
            device=device, defaults={"kid": kid.hex(), "public_key_pem": pem}
        )
        audit_record(
            actor=actor,
            action="device.encryption_key",
            object_type="device",
            object_id=endpoint,
            details={"kid": row.kid, "replaced": current.kid if current is not None else None},
            now=now,
        )
        return row


def device_encryption_recipients(device_class_id: int) -> list[tuple[str, str]]:
    """``(kid hex, public PEM)`` of every device of the class with a registered key."""
    return list(
        DeviceEncryptionKey.objects.filter(device__device_class_id=device_class_id)
        .order_by("kid")
        .values_list("kid", "public_key_pem")
    )


def device_provision(
    *,
    endpoint: str,
    actor: Any,
    psk: bytes | None = None,
    report_key: str | None = None,
    now: dt.datetime | None = None,
) -> Device:
    """An operator provisions a device: its registry row (what ``provisioned`` admission lets
    register) and, with ``psk``, its DTLS key (identity = endpoint; a second call rotates it).
    Fleet operator or admin; audited (whether a key was set, never the key). A refused key
    writes nothing."""
    now = now or timezone.now()
    require_role(actor, *access.OPERATORS, at=now)
    endpoint = endpoint.strip()
    if not endpoint or not endpoint.isprintable():
        raise DeviceRegistryError("a device needs a printable endpoint name")
    with transaction.atomic():
        created = not Device.objects.filter(endpoint=endpoint).exists()
        if psk is not None:
            device_psk_set(endpoint=endpoint, key=psk)  # PSKError before anything is kept
        if report_key is not None:
            device_report_key_set(endpoint=endpoint, key_pem=report_key, actor=actor, now=now)
        device = _locked(endpoint)
        audit_record(
            actor=actor,
            action="device.provision",
            object_type="device",
            object_id=endpoint,
            details={
                "created": created,
                "psk": psk is not None,
                "report_key": report_key is not None,
            },
            now=now,
        )
        return device


def device_psk_lookup(*, identity: str) -> bytes | None:
    """The PSK for a DTLS identity, or None (unknown identities are refused by the caller)."""
    psk = DevicePSK.objects.filter(identity=identity).first()
    if psk is None:
        return None
    return decrypt_psk(bytes(psk.key_encrypted), secret=psk_secret())


def _apply_registered(event: events.Registered, at: dt.datetime) -> None:
    device_register(
        endpoint=event.endpoint,
        gateway_id=event.gateway_id,
        registration_id=event.registration_id,
        lifetime=event.lifetime,
        binding=event.binding,
        lwm2m_version=event.lwm2m_version,
        queue_mode=event.queue_mode,
        objects=list(event.objects),
        address=event.address,
        identity=event.identity,
        root_path=event.root_path,
        at=at,
    )


def _apply_updated(event: events.Updated, at: dt.datetime) -> None:
    device_registration_update(
        endpoint=event.endpoint,
        registration_id=event.registration_id,
        gateway_id=event.gateway_id,
        lifetime=event.lifetime,
        binding=event.binding,
        objects=None if event.objects is None else list(event.objects),
        address=event.address,
        identity=event.identity,
        root_path=event.root_path,
        at=at,
    )


def _apply_ended(event: events.Deregistered | events.Expired, at: dt.datetime) -> None:
    device_registration_end(
        endpoint=event.endpoint,
        registration_id=event.registration_id,
        reason=event.type,
        gateway_id=event.gateway_id,
        at=at,
    )


def _apply_device_info(event: events.DeviceInfo, at: dt.datetime) -> None:
    device_info_record(
        endpoint=event.endpoint,
        manufacturer=event.manufacturer,
        model=event.model,
        serial=event.serial,
        firmware_version=event.firmware_version,
        device_time=event.device_time,
        protocols=None if event.protocols is None else list(event.protocols),
        delivery_method=event.delivery_method,
        at=at,
    )


def _apply_fw_status(event: events.FwStatus, at: dt.datetime) -> None:
    device_fw_status_record(
        endpoint=event.endpoint,
        state=event.state,
        result=event.result,
        gateway_id=event.gateway_id,
        at=at,
    )


def _apply_fw_installed(event: events.FwInstalled, at: dt.datetime) -> None:
    device_fw_installed(
        endpoint=event.endpoint,
        manifest_digest=event.manifest_digest,
        gateway_id=event.gateway_id,
        at=at,
    )


def _apply_command_result(event: events.CommandResult, at: dt.datetime) -> None:
    device_command_complete(
        command_id=event.command_id,
        ok=event.ok,
        result=event.result,
        error_code=event.error_code,
        error=event.error,
        at=at,
    )


# One registry service per event class (the contract is ``campaigns.events``).
_REGISTRY_APPLY: dict[type[events.DeviceEvent], Callable[[Any, dt.datetime], None]] = {
    events.Registered: _apply_registered,
    events.Updated: _apply_updated,
    events.Deregistered: _apply_ended,
    events.Expired: _apply_ended,
    events.DeviceInfo: _apply_device_info,
    events.FwStatus: _apply_fw_status,
    events.FwInstalled: _apply_fw_installed,
    events.CommandResult: _apply_command_result,
}


def device_events_lock(*, batch: list[events.DeviceEvent]) -> int:
    """Take, at the start of an event batch's transaction, the locks its events will take, in
    one order for every batch: the audit chain's append lock first (when a command result may
    record a device's report), then the rows of the batch's devices by primary key. Two
    workers applying two batches then wait for each other instead of deadlocking: event by
    event, one batch would lock a device and then wait for the audit lock that the other holds
    while it waits for that device (each deadlock cost a second's detection and a retry of the
    whole batch with backoff). Devices not yet in the registry are created by their event, in
    its savepoint, as before. Returns the number of devices locked."""
    if len(batch) == 1 and not isinstance(batch[0], events.CommandResult):
        return 0  # one device, and the first lock its event takes is that device's row
    endpoints = sorted({e.endpoint for e in batch if e.endpoint})
    command_ids = []
    for event in batch:
        if isinstance(event, events.CommandResult):
            try:
                command_ids.append(uuid.UUID(str(event.command_id)))
            except ValueError:
                continue
    if any(isinstance(e, events.CommandResult) for e in batch):
        audit_lock()
    device_ids = (
        set(DeviceCommand.objects.filter(pk__in=command_ids).values_list("device_id", flat=True))
        if command_ids
        else set()
    )
    if not endpoints and not device_ids:
        return 0
    # FOR NO KEY UPDATE, as each event locks its device: a campaign apply's foreign keys
    # (FOR KEY SHARE on the device rows) neither wait for an event batch nor deadlock with it.
    return len(
        Device.objects.select_for_update(no_key=True)
        .filter(Q(endpoint__in=endpoints) | Q(pk__in=device_ids))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def device_event_apply(*, event: events.DeviceEvent) -> None:
    """Apply one gateway event to the registry (one of the batch of ``device_events_task``)."""
    apply = _REGISTRY_APPLY.get(type(event))
    if apply is None:
        raise UnknownEventError(f"unknown device event type {event.type!r}")
    apply(event, _ts(event.at))
