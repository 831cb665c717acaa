"""Outbound webhooks: audited campaign / release / emergency events POSTed to receivers.

Trigger: ``post_save`` of ``AuditEvent`` (connected in ``ApiConfig.ready``), deferred with
``transaction.on_commit`` so a receiver never hears of a change that rolled back, and so every
audited change can notify with no edits to the services that make it.

Signature: ``X-Fwupd-Signature: sha256=<hex>`` where hex is HMAC-SHA256(secret,
``<timestamp>.<body>``) and ``X-Fwupd-Timestamp`` is the Unix time of the attempt. The timestamp
is inside the MAC so a receiver that rejects stale timestamps (say older than 5 minutes) cannot
be fed a replay; ``X-Fwupd-Delivery`` (the same id on every attempt) lets it drop duplicates.

Delivery: ``api.tasks.webhook_deliver_task``; connection errors, timeouts and 5xx are transient
(retried with exponential backoff), any other answer (4xx, 3xx: redirects are not followed) is a
permanent failure. Every attempt is recorded on the ``WebhookDelivery`` row.

Targets: a webhook makes the server send requests where an admin says, so it must not become a
way into the server's own network (its admin pages, the broker, a cloud metadata service): a
loopback, private, link-local, reserved, multicast or unspecified address is refused unless it
falls in ``WEBHOOK_ALLOWED_NETWORKS``. Checked twice: on the URL when a webhook is saved (an
address written in it, ``localhost``), and on every address the host name resolves to at
delivery time, when the connection is then made to the address that was checked (not resolved
again), so a name re-pointed between check and connect (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from api.models import DeliveryStatus, Webhook, WebhookDelivery
from audit.chain import canonical_time
from audit.models import AuditEvent
from audit.services import audit_record

FORWARDED_PREFIXES = ("campaign.", "release.", "emergency.")
SIGNATURE_HEADER = "X-Fwupd-Signature"
TIMESTAMP_HEADER = "X-Fwupd-Timestamp"
EVENT_HEADER = "X-Fwupd-Event"
DELIVERY_HEADER = "X-Fwupd-Delivery"
USER_AGENT = "fwupd-webhooks/1"
# Bytes of a receiver's error answer kept on the delivery row.
ERROR_SNIPPET = 300

logger = logging.getLogger(__name__)


class WebhookDeliveryError(Exception):
    """A delivery attempt failed; ``permanent`` says whether retrying could help."""

    code = "webhook.delivery_failed"

    def __init__(self, message: str, *, permanent: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


class WebhookTargetError(ValueError):
    """The webhook URL points at an address webhooks may not reach (loopback, private...)."""

    code = "webhook.target_refused"


# --- targets -------------------------------------------------------------------------------------
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOCAL_NAMES = ("localhost", ".localhost")  # RFC 6761: always the loopback interface


def address_refusal(address: IPAddress, *, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``address`` may not be a webhook target, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if any(address.version == net.version and address in net for net in allowed):
        return None
    kinds = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),
    )
    kind = next((name for name, flag in kinds if flag), None)
    if kind is None:
        return None
    return (
        f"{address} is a {kind} address; webhooks reach public addresses only "
        "(WEBHOOK_ALLOWED_NETWORKS lists exceptions)"
    )


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # Legacy IPv4 spellings resolvers accept without DNS: 127.1, 2130706433, 0x7f.0.0.1.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def url_refusal(url: str, *, allowed: Sequence[IPNetwork] | None = None) -> str | None:
    """Why ``url`` cannot be a webhook target as written, or None. A host name is checked
    when it is resolved, at delivery (``resolve_target``)."""
    allowed = settings.WEBHOOK_ALLOWED_NETWORKS if allowed is None else allowed
    try:
        parts = urllib.parse.urlsplit(url)
        hostname, _port = parts.hostname, parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not hostname:
        return "only http:// and https:// URLs with a host"
    host = hostname.rstrip(".").lower()
    literal = _literal_address(host)
    if literal is not None:
        return address_refusal(literal, allowed=allowed)
    if host == LOCAL_NAMES[0] or host.endswith(LOCAL_NAMES[1]):
        return address_refusal(ipaddress.ip_address("127.0.0.1"), allowed=allowed)
    return None


def check_url(url: str) -> None:
    refusal = url_refusal(url)
    if refusal is not None:
        raise WebhookTargetError(refusal)


def resolve_target(host: str, port: int, *, allowed: Sequence[IPNetwork]) -> list[str]:
    """The addresses of ``host`` to connect to, each checked; raises WebhookDeliveryError when
    the name does not resolve (transient) or any address is refused (permanent: a name with
    one internal address is not used at all)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookDeliveryError(f"cannot resolve {host!r}: {exc}", permanent=False) from exc
    addresses: list[str] = []
    for *_, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone id
        refusal = address_refusal(ipaddress.ip_address(text), allowed=allowed)
        if refusal is not None:
            raise WebhookDeliveryError(f"{host} resolves to {refusal}", permanent=True)
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise WebhookDeliveryError(f"{host!r} has no address", permanent=False)
    return addresses


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked beforehand; Host header from the URL's name."""

    def __init__(self, host: str, port: int | None, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """The same over TLS; the certificate is verified against the URL's host name."""

    def __init__(self, host: str, port: int | None, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


# --- signing -------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: str, *, signature: str, timestamp: str, body: bytes, now: float, tolerance: int = 300
) -> bool:
    """What a receiver does (here for tests and as the reference in docs/api.md)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


# --- management (audited) ------------------------------------------------------------------------
def webhook_create(
    *,
    actor: Any,
    url: str,
    secret: str | None = None,
    name: str = "",
    events: list[str] | None = None,
    active: bool = True,
) -> Webhook:
    check_url(url)
    with transaction.atomic():
        hook = Webhook.objects.create(
            name=name,
            url=url,
            secret=secret or secrets.token_urlsafe(32),
            events=list(events or []),
            active=active,
        )
        audit_record(
            actor=actor,
            action="webhook.create",
            object_type="webhook",
            object_id=hook.pk,
            details={"url": url, "events": hook.events, "active": active},
        )
        return hook


def webhook_update(*, webhook: Webhook, actor: Any, **changes: Any) -> Webhook:
    allowed = {"name", "url", "secret", "events", "active"}
    if "url" in changes:
        check_url(changes["url"])
    with transaction.atomic():
        hook = Webhook.objects.select_for_update().get(pk=webhook.pk)
        for field, value in changes.items():
            if field in allowed:
                setattr(hook, field, value)
        hook.save()
        audit_record(
            actor=actor,
            action="webhook.update",
            object_type="webhook",
            object_id=hook.pk,
            details={
                "changed": sorted(k for k in changes if k in allowed),
                "url": hook.url,
                "events": hook.events,
                "active": hook.active,
            },
        )
        return hook


def webhook_delete(*, webhook: Webhook, actor: Any) -> None:
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="webhook.delete",
            object_type="webhook",
            object_id=webhook.pk,
            details={"url": webhook.url},
        )
        webhook.delete()


class WebhookResendError(ValueError):
    """A delivery cannot be sent again now (still in flight, or its webhook is disabled)."""

    code = "webhook.resend_refused"


class DeliveryInFlightError(WebhookResendError):
    """The delivery is still pending or retrying: its own attempts are not over."""

    code = "webhook.delivery_in_flight"


class WebhookDisabledError(WebhookResendError):
    """The delivery's webhook is disabled: enable it first."""

    code = "webhook.disabled"


def webhook_delivery_resend(*, delivery: WebhookDelivery, actor: Any) -> WebhookDelivery:
    """Send a finished delivery (failed, or delivered but lost by its receiver) again: back to
    pending, attempted afresh by ``webhook_deliver_task`` after the commit. It keeps its id, so
    the receiver sees the same X-Fwupd-Delivery and can still drop a duplicate; the payload is
    the one recorded for the event, signed with the webhook's current secret."""
    with transaction.atomic():
        row = (
            WebhookDelivery.objects.select_for_update()
            .select_related("webhook")
            .get(pk=delivery.pk)
        )
        if row.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING):
            raise DeliveryInFlightError(
                f"delivery {row.pk} is {row.status}: wait for its attempts to finish"
            )
        if not row.webhook.active:
            raise WebhookDisabledError(
                f"webhook {row.webhook_id} is disabled: enable it before sending again"
            )
        previous = row.status
        row.status = DeliveryStatus.PENDING
        row.last_error = ""
        row.save(update_fields=["status", "last_error"])
        audit_record(
            actor=actor,
            action="webhook.resend",
            object_type="webhook_delivery",
            object_id=row.pk,
            details={
                "webhook": row.webhook_id,
                "event_seq": row.event_seq,
                "event": row.event_action,
                "previous_status": previous,
            },
        )
        delivery_id = str(row.pk)

        def enqueue() -> None:
            from api.tasks import webhook_deliver_task

            webhook_deliver_task.delay(delivery_id)

        transaction.on_commit(enqueue, robust=True)
        return row


# --- fan-out -------------------------------------------------------------------------------------
def forwarded(action: str) -> bool:
    return action.startswith(FORWARDED_PREFIXES)


def wants(webhook: Webhook, action: str) -> bool:
    return not webhook.events or any(fnmatch.fnmatchcase(action, p) for p in webhook.events)


def event_payload(event: AuditEvent) -> dict[str, Any]:
    return {
        "event": event.action,
        "seq": event.seq,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "actor": event.actor,
        "at": canonical_time(event.created_at),
        "details": event.details,
        "hash": event.hash,
    }


def on_audit_event_saved(sender: Any, instance: AuditEvent, created: bool, **_: Any) -> None:
    if not created or not forwarded(instance.action):
        return
    seq = instance.seq
    # robust: a broker outage must not turn a committed change into an error for its caller.
    transaction.on_commit(lambda: enqueue_deliveries(seq), robust=True)


def enqueue_deliveries(seq: int) -> list[str]:
    """One delivery row per interested active webhook, then one task each."""
    event = AuditEvent.objects.filter(seq=seq).first()
    if event is None:
        return []
    hooks = [h for h in Webhook.objects.filter(active=True) if wants(h, event.action)]
    if not hooks:
        return []
    payload = event_payload(event)
    ids: list[str] = []
    for hook in hooks:
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(
                    webhook=hook, event_seq=seq, event_action=event.action, payload=payload
                )
        except IntegrityError:
            continue  # already queued for this event (the hook ran twice)
        ids.append(str(delivery.id))
    from api.tasks import webhook_deliver_task

    for delivery_id in ids:
        webhook_deliver_task.delay(delivery_id)
    return ids


# --- one attempt ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    status: int
    body: bytes


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    allowed: Sequence[IPNetwork] | None = None,
) -> Attempt:
    """POST without following redirects (a redirect is reported, never chased), to an address
    of the URL's host that passed ``address_refusal``."""
    allowed = settings.WEBHOOK_ALLOWED_NETWORKS if allowed is None else allowed
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookDeliveryError(f"invalid webhook URL: {exc}", permanent=True) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookDeliveryError(f"unsupported webhook URL {url!r}", permanent=True)
    https = parts.scheme == "https"
    port = port or (443 if https else 80)
    addresses = resolve_target(parts.hostname, port, allowed=allowed)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn_cls = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    last: Exception | None = None
    for address in addresses:
        conn = conn_cls(parts.hostname, port, address=address, timeout=timeout)
        try:
            conn.connect()
        except OSError as exc:
            last = exc
            conn.close()
            continue  # the next address of the name
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            return Attempt(status=response.status, body=response.read(ERROR_SNIPPET))
        except (OSError, http.client.HTTPException) as exc:
            raise WebhookDeliveryError(f"{type(exc).__name__}: {exc}", permanent=False) from exc
        finally:
            conn.close()
    raise WebhookDeliveryError(f"{type(last).__name__}: {last}", permanent=False) from last


def attempt_delivery(delivery_id: str) -> WebhookDelivery | None:
    """Send once and record the outcome; raises WebhookDeliveryError on failure (the caller
    decides about retrying). Returns None when there is nothing to do (gone or finished)."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED):
        return None
    hook = delivery.webhook
    body = json.dumps(
        {"delivery": str(delivery.id), **delivery.payload}, sort_keys=True, ensure_ascii=False
    ).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: delivery.event_action,
        DELIVERY_HEADER: str(delivery.id),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(hook.secret, timestamp, body),
    }
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        attempts=delivery.attempts + 1, last_attempt_at=now
    )
    try:
        result = post(hook.url, body, headers, timeout=settings.WEBHOOK_TIMEOUT_SECONDS)
    except WebhookDeliveryError as exc:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(last_error=str(exc)[:2000])
        raise
    if 200 <= result.status < 300:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.SUCCEEDED,
            response_status=result.status,
            delivered_at=now,
            last_error="",
        )
        return WebhookDelivery.objects.get(pk=delivery.pk)
    snippet = result.body.decode("utf-8", "replace")
    message = f"HTTP {result.status}: {snippet}".strip()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        response_status=result.status, last_error=message[:2000]
    )
    raise WebhookDeliveryError(message, permanent=result.status < 500, status=result.status)


def mark(delivery_id: str, status: str) -> None:
    WebhookDelivery.objects.filter(pk=delivery_id).exclude(
        status__in=[DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED]
    ).update(status=status)


RETRY = "retry"


def deliver_once(delivery_id: str, *, attempt: int) -> str:
    """Attempt ``attempt`` (0-based) and decide: the final status, "skipped", or RETRY."""
    try:
        delivery = attempt_delivery(delivery_id)
    except WebhookDeliveryError as exc:
        if exc.permanent or attempt + 1 >= settings.WEBHOOK_MAX_ATTEMPTS:
            mark(delivery_id, DeliveryStatus.FAILED)
            return DeliveryStatus.FAILED
        mark(delivery_id, DeliveryStatus.RETRYING)
        return RETRY
    return delivery.status if delivery is not None else "skipped"


def backoff_seconds(retries: int) -> int:
    """base * 2**retries, capped, with up to 10% jitter so failed receivers are not hit in
    lockstep when they come back."""
    base = settings.WEBHOOK_BACKOFF_BASE_SECONDS * (2**retries)
    capped = min(base, settings.WEBHOOK_BACKOFF_MAX_SECONDS)
    return int(capped + secrets.randbelow(max(1, capped // 10 + 1)))
