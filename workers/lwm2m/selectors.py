"""Registry queries the gateway makes itself (read-only, on a worker thread, never on the loop)."""

from __future__ import annotations

import datetime as dt

from workers.lwm2m.admission import StoredRegistration


def provisioned_endpoints() -> set[str]:
    """Every endpoint the registry knows: ``Device`` rows and ``DevicePSK`` identities (two
    single-column queries; about 10 MB of strings at 100,000 devices)."""
    from campaigns.models import Device, DevicePSK

    known = set(Device.objects.values_list("endpoint", flat=True))
    known.update(DevicePSK.objects.values_list("identity", flat=True))
    return known


class DjangoProvisionedSource:
    """:class:`workers.lwm2m.admission.ProvisionedSource` over the database."""

    def endpoints(self) -> set[str]:
        return provisioned_endpoints()


def registration_lookup(
    registration_id: str, *, now: dt.datetime | None = None
) -> StoredRegistration | None:
    """The live registration with this id (online, not past its expiry), or None. One indexed
    single-row query (``Device.registration_id``)."""
    from django.utils import timezone

    from campaigns.models import Device

    now = now or timezone.now()
    row = (
        Device.objects.filter(
            registration_id=registration_id, online=True, registration_expires_at__gt=now
        )
        .values(
            "registration_id",
            "endpoint",
            "gateway_id",
            "registration_expires_at",
            "lifetime",
            "binding",
            "queue_mode",
            "lwm2m_version",
            "lwm2m_objects",
            "registration_root_path",
            "registration_address",
            "registration_identity",
            "manufacturer",
            "model",
            "firmware_version",
            "fw_protocols",
            "fw_delivery_method",
        )
        .first()
    )
    if row is None:
        return None
    objects = tuple(str(o) for o in row["lwm2m_objects"] or ())
    protocols = tuple(int(p) for p in row["fw_protocols"] or ()) or None
    has_object5 = any(o == "/5" or o.startswith("/5/") for o in objects)
    return StoredRegistration(
        registration_id=row["registration_id"],
        endpoint=row["endpoint"],
        gateway_id=row["gateway_id"],
        expires_at=row["registration_expires_at"].timestamp(),
        lifetime=row["lifetime"],
        binding=row["binding"] or "U",
        queue_mode=row["queue_mode"],
        lwm2m_version=row["lwm2m_version"] or "1.0",
        objects=objects,
        root_path=row["registration_root_path"] or "/",
        address=row["registration_address"],
        identity=row["registration_identity"],
        delivery_method=row["fw_delivery_method"],
        info_complete=bool(
            row["manufacturer"]
            and row["model"]
            and row["firmware_version"]
            and (protocols is not None or not has_object5)
        ),
        protocols=protocols,
    )


class DjangoRegistrationSource:
    """:class:`workers.lwm2m.admission.RegistrationSource` over the database."""

    def lookup(self, registration_id: str) -> StoredRegistration | None:
        return registration_lookup(registration_id)
