"""Console pages for device trust policies: per class, the policies, which devices hold which
version and whether its devices check approval thresholds themselves or only the server does;
per policy, its roles and signatures, the body to sign offline, the signature upload and the
release button. Each form calls the service the CLI and the API call (``trust_policy_draft``,
``trust_policy_sign``, ``trust_policy_release``); refusals come back as messages."""

from __future__ import annotations

import datetime as dt
import re

from django.conf import settings
from django.contrib import messages
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from campaigns.trust_holdings import protection_of, trust_holders, trust_holdings
from console.access import SERVICE_ERRORS, console_view, report_refusal
from console.views import _page
from manifests import device_trust
from manifests import services as release_services
from manifests.models import DeviceClass, DeviceTrustPolicy, TrustPolicyStatus
from manifests.services.access import KEY_HOLDERS, TRUST_POLICY_WRITERS, roles_of

HOLDER_ROWS = 200  # devices listed on a class's trust page (the counts cover them all)
# One role line of the draft form, as ``manage.py trustpolicy draft --role``:
# ``security=2:kid,kid`` (kids are 64 hex digits).
ROLE_LINE = re.compile(r"^\s*([a-z_]+)\s*=\s*([0-9]{1,3})\s*:\s*([0-9a-fA-F,\s]+)$")


class DraftFormError(ValueError):
    """The draft form's text does not say roles and an expiry the service can take."""


def parse_roles(text: str) -> dict[str, tuple[int, list[str]]]:
    """``role=threshold:kid,kid`` per line -> the service's ``roles`` mapping."""
    roles: dict[str, tuple[int, list[str]]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = ROLE_LINE.match(line)
        if match is None:
            raise DraftFormError(f"line {number}: write role=threshold:kid,kid")
        role, threshold, kids = match.groups()
        if role in roles:
            raise DraftFormError(f"line {number}: role {role} given twice")
        roles[role] = (int(threshold), [k.strip().lower() for k in kids.split(",") if k.strip()])
    if not roles:
        raise DraftFormError("give at least one role line (security is required)")
    return roles


def parse_expiry(text: str) -> dt.datetime:
    value = parse_datetime(text.strip()) if text.strip() else None
    if value is None:
        raise DraftFormError("expires: an ISO 8601 date and time, e.g. 2027-12-31T00:00Z")
    if timezone.is_naive(value):
        value = timezone.make_aware(value, dt.UTC)
    return value


def _class(pk: int) -> DeviceClass:
    return get_object_or_404(DeviceClass.objects.select_related("vendor"), pk=pk)


def _policy(pk: int) -> DeviceTrustPolicy:
    return get_object_or_404(
        DeviceTrustPolicy.objects.select_related("device_class__vendor", "created_by"), pk=pk
    )


@console_view()
def class_trust(request: HttpRequest, pk: int) -> HttpResponse:
    device_class = _class(pk)
    holdings = trust_holdings(device_class)
    holders = [
        (d, protection_of(d, device_side=holdings.device_side))
        for d in trust_holders(device_class)[:HOLDER_ROWS]
    ]
    policies = DeviceTrustPolicy.objects.filter(device_class=device_class).annotate(
        signature_count=Count("signatures")
    )
    return _page(
        request,
        "console/trust_class.html",
        {
            "device_class": device_class,
            "holdings": holdings,
            "holders": holders,
            "holder_rows": HOLDER_ROWS,
            "policies": policies.order_by("-version"),
            "can_draft": bool(roles_of(request.user) & TRUST_POLICY_WRITERS),
            "default_expiry": (timezone.now() + dt.timedelta(days=365)).strftime("%Y-%m-%dT%H:%MZ"),
        },
    )


@console_view(get=None, post=TRUST_POLICY_WRITERS)
def class_trust_draft(request: HttpRequest, pk: int) -> HttpResponse:
    device_class = _class(pk)
    try:
        roles = parse_roles(request.POST.get("roles", ""))
        expires_at = parse_expiry(request.POST.get("expires_at", ""))
    except DraftFormError as exc:
        messages.error(request, f"{exc} [trust_policy.form]")
        return redirect("console:class-trust", pk=pk)
    try:
        policy = release_services.trust_policy_draft(
            device_class=device_class,
            roles=roles,
            expires_at=expires_at,
            reason=request.POST.get("reason", "")[:2000],
            actor=request.user,
        )
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
        return redirect("console:class-trust", pk=pk)
    messages.success(request, f"drafted {policy}: sign its body offline and upload the signature")
    return redirect("console:trust-policy", pk=policy.pk)


@console_view()
def policy_detail(request: HttpRequest, pk: int) -> HttpResponse:
    policy = _policy(pk)
    roles = [
        (role, rule.threshold, sorted(k.hex() for k in rule.kids))
        for role, rule in device_trust.body_roles(policy.body_bytes).items()
    ]
    held = roles_of(request.user)
    return _page(
        request,
        "console/trust_policy.html",
        {
            "policy": policy,
            "policy_roles": roles,
            "signatures": policy.signatures.select_related("signer", "key").order_by("pk"),
            "refusal": (
                release_services.trust_policy_refusal(policy, now=timezone.now())
                if policy.status == TrustPolicyStatus.DRAFT
                else None
            ),
            "can_sign": bool(held & KEY_HOLDERS) and policy.status == TrustPolicyStatus.DRAFT,
            "can_release": bool(held & TRUST_POLICY_WRITERS)
            and policy.status == TrustPolicyStatus.DRAFT,
        },
    )


def _download(data: bytes, filename: str) -> HttpResponse:
    response = HttpResponse(data, content_type="application/cbor")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@console_view()
def policy_body(request: HttpRequest, pk: int) -> HttpResponse:
    """The exact body bytes to sign offline (``manage.py trustpolicy sign-body``)."""
    policy = _policy(pk)
    return _download(policy.body_bytes, f"trust-policy-v{policy.version}.body.cbor")


@console_view()
def policy_document(request: HttpRequest, pk: int) -> HttpResponse:
    policy = _policy(pk)
    if policy.document is None:
        messages.error(request, f"{policy} is not released yet [trust_policy.state]")
        return redirect("console:trust-policy", pk=pk)
    return _download(bytes(policy.document), f"trust-policy-v{policy.version}.cbor")


@console_view(get=None, post=KEY_HOLDERS)
def policy_sign(request: HttpRequest, pk: int) -> HttpResponse:
    """Upload a COSE_Sign1 over the body, made offline with the user's own key."""
    policy = _policy(pk)
    upload = request.FILES.get("signature")
    if upload is None:
        messages.error(request, "choose a signature file to upload")
        return redirect("console:trust-policy", pk=pk)
    if upload.size is not None and upload.size > settings.SUIT_MAX_ENVELOPE_SIZE:
        messages.error(request, f"the file is larger than {settings.SUIT_MAX_ENVELOPE_SIZE} bytes")
        return redirect("console:trust-policy", pk=pk)
    try:
        signed = release_services.trust_policy_sign(
            policy=policy, signer=request.user, cose=upload.read()
        )
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
    else:
        if signed.status == TrustPolicyStatus.RELEASED:
            messages.success(request, f"signature recorded; {signed} is released")
        else:
            messages.success(request, f"signature recorded; {signed} still needs signatures")
    return redirect("console:trust-policy", pk=pk)


@console_view(get=None, post=TRUST_POLICY_WRITERS)
def policy_release(request: HttpRequest, pk: int) -> HttpResponse:
    policy = _policy(pk)
    try:
        released = release_services.trust_policy_release(policy=policy, actor=request.user)
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
    else:
        messages.success(request, f"{released} is released (sha256 {released.sha256})")
    return redirect("console:trust-policy", pk=pk)
