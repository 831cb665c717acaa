"""Who may register, update and de-register at this gateway (docs/lwm2m.md, "Admission").

Rules, checked by the gateway's registration handlers:

* **Admission.** ``provisioned``: only endpoints the registry knows may register - a ``Device``
  row (created by an operator, an import, or ``device_psk_set``) or a ``DevicePSK`` row; any
  other endpoint gets 4.03 ``lwm2m.not_provisioned``, is counted, and nothing is written.
  ``open`` (labs, the demo, simulated fleets): any endpoint whose name passes
  :mod:`workers.lwm2m.names`. The known endpoints are held in memory (:class:`ProvisionedCache`),
  loaded before the listener opens and rebuilt off the loop, like the PSK cache; a miss brings
  the next reload forward (debounced), so a device provisioned a moment ago gets in at its next
  attempt.
* **Same peer.** Update and De-register of a registration come only from its own peer: the same
  DTLS identity (the registration then follows the device's newest session), or, for a NoSec
  registration, the same address and port. A NoSec device that moved registers again.
* **NoSec re-registration from another address or port** (:func:`reregistration_rule`): with
  open admission the new one replaces the old one (as before; labs only). With provisioned
  admission it replaces the old one only if the old one has expired or nothing answers at the
  old registration's address any more: the gateway sends one probe there (a device that
  rebooted or moved has closed its old socket, so the probe fails at once with an ICMP error, or
  times out); while the old holder still answers, the newcomer gets 4.03
  ``lwm2m.registration_conflict``. A positive probe is remembered for a short while, so a
  stream of impostor registrations costs the real device one probe per interval.

The decision functions are pure; :class:`ProvisionedCache` refreshes through an injected runner
from a :class:`ProvisionedSource` (the database one: :mod:`workers.lwm2m.selectors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from workers.lwm2m.errors import LwM2MError

log = logging.getLogger("workers.lwm2m.admission")

ADMISSION_MODES = ("provisioned", "open")


class AdmissionError(LwM2MError):
    """A registration, update or de-registration this peer may not make."""

    code = "lwm2m.admission"
    coap_code = "FORBIDDEN"


class NotProvisionedError(AdmissionError):
    """The endpoint is not in the registry and admission is ``provisioned``."""

    code = "lwm2m.not_provisioned"


class NotSamePeerError(AdmissionError):
    """Update or De-register of a NoSec registration from another address than its own."""

    code = "lwm2m.not_same_peer"


class RegistrationConflictError(AdmissionError):
    """A NoSec registration of an endpoint whose live registration belongs to another host."""

    code = "lwm2m.registration_conflict"


class RegistryFullError(LwM2MError):
    """The gateway holds as many registrations as it may; a new endpoint must try later."""

    code = "lwm2m.registry_full"
    coap_code = "SERVICE_UNAVAILABLE"


def check_mode(mode: str) -> str:
    if mode not in ADMISSION_MODES:
        raise ValueError(f"admission {mode!r} is not one of {', '.join(ADMISSION_MODES)}")
    return mode


# --- peers ----------------------------------------------------------------------------------------


def peer_address(remote: Any) -> tuple[str, int | None]:
    """(host, port) of a NoSec remote, IPv4-mapped addresses shown as IPv4."""
    sockaddr = getattr(remote, "sockaddr", None)
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return str(sockaddr[0]).removeprefix("::ffff:"), int(sockaddr[1])
    host, _, port = str(getattr(remote, "hostinfo", remote)).rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def same_peer(
    *,
    reg_identity: str | None,
    reg_address: tuple[str, int | None],
    identity: str | None,
    address: tuple[str, int | None],
) -> bool:
    """Whether a request from (``identity``, ``address``) may act on a registration made by
    (``reg_identity``, ``reg_address``): the same DTLS identity, or both NoSec from one address."""
    if reg_identity is not None or identity is not None:
        return identity == reg_identity
    return address == reg_address


class Rule(enum.Enum):
    """What to do with a NoSec registration of an endpoint another address holds."""

    REPLACE = "replace"
    PROBE = "probe"  # replace if the old address no longer answers, else refuse


def reregistration_rule(
    *,
    mode: str,
    old_address: tuple[str, int | None],
    new_address: tuple[str, int | None],
    old_expired: bool,
) -> Rule:
    """See the module docstring: the same address, an expired registration or open admission
    replace; otherwise the old address is probed."""
    if mode == "open" or old_expired or old_address == new_address:
        return Rule.REPLACE
    return Rule.PROBE


# --- the provisioned set --------------------------------------------------------------------------


class ProvisionedSource(Protocol):
    def endpoints(self) -> set[str]:
        """Every endpoint the registry knows (blocking: called on a worker thread)."""


class ProvisionedCache:
    """The known endpoints in memory, swapped whole (a lookup sees one snapshot)."""

    def __init__(
        self,
        source: ProvisionedSource,
        *,
        refresh_seconds: float = 60.0,
        miss_refresh_seconds: float = 2.0,
    ) -> None:
        self.source = source
        self.refresh_seconds = refresh_seconds
        self.miss_refresh_seconds = miss_refresh_seconds
        self._known: frozenset[str] = frozenset()
        self._early = asyncio.Event()
        self.loaded_at: float | None = None

    def __len__(self) -> int:
        return len(self._known)

    def has(self, endpoint: str) -> bool:
        """Whether ``endpoint`` is provisioned; a miss asks for an early refresh."""
        if endpoint in self._known:
            return True
        self._early.set()
        return False

    def add(self, endpoint: str) -> None:
        """Known from now on (the registry gained it: e.g. a DTLS identity authenticated)."""
        self._known = self._known | {endpoint}

    async def refresh(self, run: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
        self._early.clear()
        self._known = frozenset(await run(self.source.endpoints))
        self.loaded_at = time.monotonic()

    async def run_forever(self, run: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
        """Reload every ``refresh_seconds``, or early after a miss (at most every
        ``miss_refresh_seconds``); a failed reload keeps the previous set."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._early.wait(), timeout=self.refresh_seconds)
            if self._early.is_set() and self.loaded_at is not None:
                wait = self.loaded_at + self.miss_refresh_seconds - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                await self.refresh(run)
            except Exception as exc:
                log.error("provisioned-endpoint reload failed; keeping the previous set: %r", exc)
                self._early.clear()
                self.loaded_at = time.monotonic()
