"""Registry queries the gateway makes itself (read-only, on a worker thread, never on the loop)."""

from __future__ import annotations


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
