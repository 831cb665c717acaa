"""Console pages for outbound webhooks: the targets, their recent deliveries, and re-sending one.

The same services as the API (``api.webhooks``: ``webhook_create`` / ``webhook_update`` /
``webhook_delete`` / ``webhook_delivery_resend``, each audited) behind the API's permissions:
admins and auditors read (``WEBHOOK_READ``), admins change (``ADMINS``). A webhook's secret is
never shown again after the page that created it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from django import forms
from django.contrib import messages
from django.db.models import Count, Max, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect

from api import webhooks
from api.models import DeliveryStatus, Webhook, WebhookDelivery
from console.access import console_view
from console.views import _page
from manifests.services.access import ADMINS, WEBHOOK_READ, roles_of

DELIVERY_ROWS = 50  # recent deliveries shown on a webhook's page
# An events pattern: an audit action or an fnmatch pattern over them ("campaign.*").
EVENT_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,100}$")
WEBHOOK_ERRORS = (webhooks.WebhookTargetError, webhooks.WebhookResendError)


class WebhookForm(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    url = forms.URLField(max_length=2048, assume_scheme="https")
    events = forms.CharField(
        required=False,
        max_length=2000,
        help_text="patterns over audit actions, comma- or space-separated (campaign.*); "
        "empty: every campaign, release and emergency event",
    )
    secret = forms.CharField(required=False, min_length=16, max_length=200, strip=True)

    def clean_url(self) -> str:
        url: str = self.cleaned_data["url"]
        refusal = webhooks.url_refusal(url)
        if refusal is not None:
            raise forms.ValidationError(refusal, code="target_refused")
        return url

    def clean_events(self) -> list[str]:
        patterns = [p for p in re.split(r"[\s,]+", self.cleaned_data["events"]) if p]
        bad = [p for p in patterns if not EVENT_PATTERN.match(p)]
        if bad:
            raise forms.ValidationError(
                f"not an event pattern: {bad[0][:40]!r} (e.g. campaign.*, release.revoked)"
            )
        return patterns


def _report_form(request: HttpRequest, form: forms.Form) -> None:
    for field, errors in form.errors.items():
        for error in errors:
            messages.error(request, f"{field}: {error}")


def _is_admin(request: HttpRequest) -> bool:
    return bool(roles_of(request.user) & ADMINS)


@console_view(get=WEBHOOK_READ, post=ADMINS)
def webhook_list(request: HttpRequest) -> HttpResponse:
    """The targets (GET), or a new one (POST)."""
    if request.method == "POST":
        form = WebhookForm(request.POST)
        if not form.is_valid():
            _report_form(request, form)
            return redirect("console:webhooks")
        data = form.cleaned_data
        try:
            hook = webhooks.webhook_create(
                actor=request.user,
                url=data["url"],
                name=data["name"],
                events=data["events"],
                secret=data["secret"] or None,
                active=request.POST.get("active") == "on",
            )
        except WEBHOOK_ERRORS as exc:
            messages.error(request, f"{exc} [{exc.code}]")
            return redirect("console:webhooks")
        if data["secret"]:
            messages.success(request, f"Webhook {hook.pk} created.")
        else:
            messages.success(
                request,
                f"Webhook {hook.pk} created. Its signing secret, shown only now: {hook.secret}",
            )
        return redirect("console:webhook", pk=hook.pk)
    hooks = Webhook.objects.annotate(
        delivered=Count("deliveries", filter=Q(deliveries__status=DeliveryStatus.SUCCEEDED)),
        failed=Count("deliveries", filter=Q(deliveries__status=DeliveryStatus.FAILED)),
        in_flight=Count(
            "deliveries",
            filter=Q(deliveries__status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING]),
        ),
        last_delivery=Max("deliveries__created_at"),
    ).order_by("pk")
    return _page(
        request,
        "console/webhooks.html",
        {"hooks": hooks, "admin": _is_admin(request), "form": WebhookForm()},
    )


@console_view(get=WEBHOOK_READ, post=ADMINS)
def webhook_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One target with its recent deliveries (GET), or its new settings (POST)."""
    hook = get_object_or_404(Webhook, pk=pk)
    if request.method == "POST":
        form = WebhookForm(request.POST)
        if not form.is_valid():
            _report_form(request, form)
            return redirect("console:webhook", pk=hook.pk)
        data = form.cleaned_data
        changes: dict[str, Any] = {
            "name": data["name"],
            "url": data["url"],
            "events": data["events"],
        }
        if data["secret"]:  # blank keeps the current secret
            changes["secret"] = data["secret"]
        try:
            webhooks.webhook_update(webhook=hook, actor=request.user, **changes)
        except WEBHOOK_ERRORS as exc:
            messages.error(request, f"{exc} [{exc.code}]")
        else:
            messages.success(request, f"Webhook {hook.pk} saved.")
        return redirect("console:webhook", pk=hook.pk)
    deliveries = hook.deliveries.order_by("-created_at")[:DELIVERY_ROWS]
    initial = {"name": hook.name, "url": hook.url, "events": ", ".join(hook.events)}
    return _page(
        request,
        "console/webhook.html",
        {
            "hook": hook,
            "deliveries": deliveries,
            "delivery_rows": DELIVERY_ROWS,
            "admin": _is_admin(request),
            "form": WebhookForm(initial=initial),
            "finished": (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED),
        },
    )


WEBHOOK_ACTIONS = ("enable", "disable", "delete")


@console_view(get=None, post=ADMINS)
def webhook_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    if action not in WEBHOOK_ACTIONS:
        raise Http404("no such webhook action")
    hook = get_object_or_404(Webhook, pk=pk)
    if action == "delete":
        webhooks.webhook_delete(webhook=hook, actor=request.user)
        messages.success(request, f"Webhook {pk} ({hook.url}) deleted.")
        return redirect("console:webhooks")
    active = action == "enable"
    if hook.active != active:
        webhooks.webhook_update(webhook=hook, actor=request.user, active=active)
    messages.success(request, f"Webhook {pk} {'enabled' if active else 'disabled'}.")
    return redirect("console:webhook", pk=pk)


@console_view(get=None, post=ADMINS)
def webhook_delivery_resend(request: HttpRequest, delivery_id: uuid.UUID) -> HttpResponse:
    delivery = get_object_or_404(WebhookDelivery, pk=delivery_id)
    try:
        webhooks.webhook_delivery_resend(delivery=delivery, actor=request.user)
    except WEBHOOK_ERRORS as exc:
        messages.error(request, f"{exc} [{exc.code}]")
    else:
        delivery.refresh_from_db()
        messages.success(
            request,
            f"Delivery of {delivery.event_action} (event {delivery.event_seq}) sent again: "
            f"{delivery.get_status_display().lower()}.",
        )
    return redirect("console:webhook", pk=delivery.webhook_id)
