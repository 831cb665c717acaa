"""Which device trust policy the devices of a class hold, and which of them check the approval
thresholds themselves (read-only; the API's and the console's per-class trust pages).

A device counts as protected on the device only when its class is a SUIT class with a released
trust policy (``manifests.selectors.threshold_enforcement``) *and* the registry records a
confirmed install of a policy on it (``Device.trust_policy_version``, set only from the
device's own word: ``campaigns.trust_delivery``). Every other device, and every device of an
``image``-profile class, is protected by the server's release checks only: the same rule as the
campaign plan's ``threshold_enforcement``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, QuerySet

from campaigns.models import Device
from manifests.models import DeviceClass
from manifests.selectors import current_trust_policy, threshold_enforcement

DEVICE_SIDE = "device"
SERVER_ONLY = "server_only"


@dataclass(frozen=True)
class TrustHoldings:
    device_class: DeviceClass
    device_side: bool  # the class's devices can check thresholds (SUIT, a released policy)
    why: str
    current_version: int | None
    current_sha256: str
    # Devices by the version the registry says they hold (None: none known), ascending.
    by_version: tuple[tuple[int | None, int], ...]

    @property
    def devices(self) -> int:
        return sum(n for _, n in self.by_version)

    @property
    def protected_on_device(self) -> int:
        if not self.device_side:
            return 0
        return sum(n for version, n in self.by_version if version is not None)

    @property
    def server_only(self) -> int:
        return self.devices - self.protected_on_device


def trust_holdings(device_class: DeviceClass) -> TrustHoldings:
    """The class's trust-policy holdings in two queries (its current policy, one GROUP BY)."""
    device_side, why = threshold_enforcement(device_class)
    current = current_trust_policy(device_class)
    counts = (
        Device.objects.filter(device_class=device_class)
        .values_list("trust_policy_version")
        .annotate(n=Count("pk"))
        .order_by("trust_policy_version")
    )
    by_version = sorted(
        ((version, n) for version, n in counts), key=lambda row: (row[0] is not None, row[0] or 0)
    )
    return TrustHoldings(
        device_class=device_class,
        device_side=device_side,
        why=why,
        current_version=current.version if current else None,
        current_sha256=current.sha256 if current else "",
        by_version=tuple(by_version),
    )


def protection_of(device: Device, *, device_side: bool) -> str:
    """``device`` or ``server_only`` for one device of a class whose enforcement is known."""
    return DEVICE_SIDE if device_side and device.trust_policy_version is not None else SERVER_ONLY


def trust_holders(device_class: DeviceClass) -> QuerySet[Device]:
    """The class's devices with what they hold, in endpoint order (paginate it)."""
    return (
        Device.objects.filter(device_class=device_class)
        .only(
            "pk",
            "endpoint",
            "device_class_id",
            "trust_policy_version",
            "trust_policy_sha256",
            "trust_policy_confirmed_at",
        )
        .order_by("endpoint")
    )
