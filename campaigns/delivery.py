"""How one device takes a release: pull or push, or neither. Pure (no Django).

Inputs are what the registry stored from the device's Object 5 and what the class forces:

* ``/5/0/9`` Firmware Update Delivery Method: 0 pull only, 1 push only, 2 both; ``None`` when the
  device never reported it (LwM2M 1.0 clients, where the resource is optional): pull, the mode
  every such client implements.
* ``/5/0/8`` Firmware Update Protocol Support: 0 CoAP, 1 CoAPS, 2 HTTP, 3 HTTPS, 4 CoAP/TCP,
  5 CoAP/TLS; empty when never reported: CoAP only (the gateway's rule for 1.0 clients).
* whether the device authenticates over DTLS (it has a PSK): the gateway gives such a device
  ``coaps`` Package URIs only, never plaintext ones.
* the class's ``delivery_method``: ``auto``, or ``pull`` / ``push`` forced.

Invariants: pull is chosen only when the device supports pull and lists the protocol the gateway
serves it (``coap``, or ``coaps`` for a DTLS device); push only when the device supports push
(``/5/0/9`` 1 or 2) or its support is unknown and the class forces push (Object 5's Package
resource, the push target, is mandatory); a device that fits neither gets no method and a
reason, and is never dispatched (refusal ``no_supported_delivery``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

PULL, PUSH, AUTO = "pull", "push", "auto"

# /5/0/8 values and their names, for the reasons shown to operators.
PROTOCOL_NAMES = {0: "CoAP", 1: "CoAPS", 2: "HTTP", 3: "HTTPS", 4: "CoAP/TCP", 5: "CoAP/TLS"}
COAP, COAPS = 0, 1
# /5/0/9 values.
PULL_ONLY, PUSH_ONLY, BOTH = 0, 1, 2
METHOD_NAMES = {PULL_ONLY: "pull only", PUSH_ONLY: "push only", BOTH: "pull and push"}

NO_SUPPORTED_DELIVERY = "no_supported_delivery"


@dataclass(frozen=True)
class DeliveryDecision:
    """``method`` is ``"pull"``, ``"push"`` or None (then ``reason`` says why)."""

    method: str | None
    reason: str = ""


def decide_method(
    *,
    forced: str,
    device_method: int | None,
    protocols: Iterable[int] | None,
    dtls: bool,
) -> DeliveryDecision:
    """The method the gateway uses for this device, or None with the reason it has none."""
    if forced not in (AUTO, PULL, PUSH):
        return DeliveryDecision(None, f"unknown delivery method {forced!r} for the class")
    listed = sorted({int(p) for p in protocols or ()})
    known = listed or [COAP]
    needed = COAPS if dtls else COAP
    can_pull = device_method in (None, PULL_ONLY, BOTH) and needed in known
    can_push = device_method in (PUSH_ONLY, BOTH) or (device_method is None and forced == PUSH)
    if forced != PUSH and can_pull:
        return DeliveryDecision(PULL)
    if forced != PULL and can_push:
        return DeliveryDecision(PUSH)
    return DeliveryDecision(None, _why(forced, device_method, listed, needed))


def _why(forced: str, device_method: int | None, listed: list[int], needed: int) -> str:
    supports = (
        "does not report /5/0/9 (pull only)"
        if device_method is None
        else f"supports {METHOD_NAMES.get(device_method, f'/5/0/9 = {device_method}')}"
    )
    protocols = ", ".join(PROTOCOL_NAMES.get(p, str(p)) for p in listed) or "CoAP (assumed)"
    need = PROTOCOL_NAMES[needed] + (" (it registered over DTLS)" if needed == COAPS else "")
    if forced == PUSH:
        return f"the class forces push but the device {supports}"
    pull = f"pull needs {need}, the device lists {protocols}"
    if forced == PULL:
        return f"the class forces pull: {pull}"
    return f"the device {supports}; {pull}"


def methods_for(
    forced: str,
) -> Callable[[Iterable[int] | None, int | None, bool], DeliveryDecision]:
    """``decide_method`` for one class, remembered per distinct (/5/0/8, /5/0/9, DTLS): a fleet
    has a handful of such combinations, and dispatch and planning ask once per device."""
    memo: dict[tuple[tuple[int, ...], int | None, bool], DeliveryDecision] = {}

    def method_of(
        protocols: Iterable[int] | None, device_method: int | None, dtls: bool
    ) -> DeliveryDecision:
        key = (tuple(protocols or ()), device_method, dtls)
        decision = memo.get(key)
        if decision is None:
            decision = memo[key] = decide_method(
                forced=forced, device_method=device_method, protocols=key[0], dtls=dtls
            )
        return decision

    return method_of


def delta_deliverable(profile: str, method: str) -> bool:
    """Whether a delta can reach a device of this delivery profile by this method: an ``image``
    device takes it pulled or pushed; a ``suit`` device fetches it beside the envelope it pulls
    (a pushed envelope carries no delta); a ``suit-integrated`` envelope carries the full
    payload by definition. The plan and the dispatcher both ask this, so they agree."""
    return profile == "image" or (profile == "suit" and method == PULL)
