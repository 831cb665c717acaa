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

* **Adoption** (docs/lwm2m.md, "Shared registrations"). An Update or De-register for a
  registration this gateway does not hold is looked up in the registry; a live registration
  whose stored peer is the request's peer (same DTLS identity; for NoSec the same address and
  port, :func:`same_peer`) is adopted, under the rules above (admission, NoSec accepted, an
  endpoint with a PSK only over DTLS). What an unauthenticated peer can make the gateway do is
  bounded: ids that are not of the form the gateway hands out are not looked up, a lookup that
  found nothing is remembered (:class:`NegativeCache`), lookups start at most at a fixed rate
  (:class:`LookupBudget`) and only a few run at once; past that the answer is 5.03
  ``lwm2m.lookup_busy``.

The decision functions are pure; :class:`ProvisionedCache` refreshes through an injected runner
from a :class:`ProvisionedSource` (the database one: :mod:`workers.lwm2m.selectors`), and
adoption looks registrations up in a :class:`RegistrationSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


class LookupBusyError(LwM2MError):
    """Too many registration lookups at once or in the last second: try again later."""

    code = "lwm2m.lookup_busy"
    coap_code = "SERVICE_UNAVAILABLE"


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


def format_address(address: tuple[str, int | None]) -> str:
    """(host, port) as stored with a registration: "host:port", "[v6]:port"."""
    host, port = address
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port if port is not None else ''}"


def parse_address(text: str) -> tuple[str, int | None]:
    """The inverse of :func:`format_address` (what :func:`peer_address` makes of a remote)."""
    return peer_address(text)


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


# --- adoption of a registration held in the registry ---------------------------------------------


# The registration ids this project's gateways hand out (``secrets.token_hex(8)``); anything
# else cannot be in the registry, so it is not looked up.
REGISTRATION_ID = re.compile(r"^[0-9a-f]{16}$")


def plausible_registration_id(reg_id: str) -> bool:
    return REGISTRATION_ID.match(reg_id) is not None


@dataclass(frozen=True)
class StoredRegistration:
    """A live registration as the registry holds it (``campaigns.models.Device``)."""

    registration_id: str
    endpoint: str
    gateway_id: str
    expires_at: float  # seconds since the epoch
    lifetime: int
    binding: str
    queue_mode: bool
    lwm2m_version: str
    objects: tuple[str, ...]  # object links as stored: "/3/0", "/5"
    root_path: str
    address: str  # "host:port" of the registering NoSec peer
    identity: str  # DTLS PSK identity; "" for NoSec
    info_complete: bool  # manufacturer, model, firmware version (and /5/0/8) are known
    protocols: tuple[int, ...] | None  # /5/0/8 as stored; None when not known
    delivery_method: int | None = None  # /5/0/9 as stored; None when not known


class RegistrationSource(Protocol):
    def lookup(self, registration_id: str) -> StoredRegistration | None:
        """The registry's live registration with that id, or None (blocking: worker thread)."""


class LookupBudget:
    """Token bucket: at most ``burst`` lookups at once, refilled at ``rate`` per second."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, *, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class NegativeCache:
    """Registration ids that were not found, remembered ``seconds`` each, at most ``size`` of
    them (oldest dropped first): a repeated unknown id costs no second lookup for a while."""

    def __init__(self, *, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        self._until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, reg_id: object) -> bool:
        return reg_id in self._until

    def hit(self, reg_id: str, *, now: float) -> bool:
        until = self._until.get(reg_id)
        if until is None:
            return False
        if until <= now:
            del self._until[reg_id]
            return False
        return True

    def add(self, reg_id: str, *, now: float) -> None:
        self._until[reg_id] = now + self.seconds
        self._until.move_to_end(reg_id)
        while len(self._until) > self.size:
            self._until.popitem(last=False)

    def discard(self, reg_id: str) -> None:
        self._until.pop(reg_id, None)
