"""Console pages. Each view finds rows, calls one service (the same functions the CLI and the
API call), and renders; refusals come back as messages. Who may do what is
``console.access.console_view`` with the role sets of ``manifests.services.access`` (the API's
too)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import yaml
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_verify
from campaigns import eligibility, planning, rollback
from campaigns import selectors as campaign_selectors
from campaigns import services as campaign_services
from campaigns.models import (
    Campaign,
    EmergencyStop,
    Rollout,
    RolloutState,
)
from campaigns.spec import parse_spec
from console import dashboard as dashboard_selectors
from console import selectors
from console.access import SERVICE_ERRORS, console_view, report_refusal
from manifests import services as release_services
from manifests import suit
from manifests.management.commands.release import signature_blocks
from manifests.models import (
    DeliveryMethod,
    DeliveryProfile,
    DeviceClass,
    ManifestProfile,
    Release,
    ReleaseKind,
    ReleaseStatus,
)
from manifests.selectors import threshold_enforcement
from manifests.services.access import (
    APPROVERS,
    CATALOG_ADMINS,
    GATEKEEPERS,
    LIFTERS,
    OPERATORS,
    REVOKERS,
    STOPPERS,
    role_names,
    roles_of,
)

DEVICE_ROWS = 200  # device table of a campaign (per page), device list (first rows only)
AUDIT_ROWS = 200  # audit viewer: latest events
HISTORY_ROWS = 20  # a device's rollout history, recent stops
SPEC_SOURCE = "console"  # where revisions and spec errors say a spec came from


def _page(request: HttpRequest, template: str, context: dict[str, Any], **kw: Any) -> HttpResponse:
    """Render with what every page's frame shows: the user's roles and any stop in force."""
    roles = roles_of(request.user)
    context = {
        "roles": sorted(roles),
        "can": {
            "operate": bool(roles & OPERATORS),
            "promote": bool(roles & GATEKEEPERS),
            "stop": bool(roles & STOPPERS),
            "lift": bool(roles & LIFTERS),
            "revoke": bool(roles & REVOKERS),
            "approve": bool(roles & APPROVERS),
            "catalog": bool(roles & CATALOG_ADMINS),
        },
        "stops": selectors.active_stops(),
        "inbox_count": len(selectors.approvals_inbox(request.user)),
        **context,
    }
    return render(request, template, context, **kw)


# --- dashboard ------------------------------------------------------------------------------
@console_view()
def dashboard(request: HttpRequest) -> HttpResponse:
    recent = Campaign.objects.exclude(status__in=selectors.LIVE_STATUSES).select_related(
        "release", "trust_policy"
    )
    live = selectors.live_campaigns()
    rolling = dashboard_selectors.rolling_out(live)
    now = timezone.now()
    for row in rolling:
        row["chart"] = dashboard_selectors.campaign_progress(
            row["campaign"], now=now, total=row["eligible"]
        )
    return _page(
        request,
        "console/dashboard.html",
        {
            "campaigns": live,
            "rolling": rolling,
            "versions": dashboard_selectors.installed_versions(),
            "alerts": selectors.alerts(request.user),
            "recent": recent.order_by("-created_at")[:10],
        },
    )


@console_view()
def dashboard_campaigns(request: HttpRequest) -> HttpResponse:
    """The live block of the dashboard (htmx polls it every 2 s)."""
    return render(
        request,
        "console/_campaign_cards.html",
        {"campaigns": selectors.live_campaigns(), "stops": selectors.active_stops()},
    )


# --- campaigns ------------------------------------------------------------------------------
def _campaign(name: str) -> Campaign:
    return get_object_or_404(
        Campaign.objects.select_related(
            "release", "trust_policy", "device_class__vendor", "created_by"
        ),
        name=name,
    )


def _live_context(campaign: Campaign) -> dict[str, Any]:
    return {
        "campaign": campaign,
        "stages": selectors.stage_rows(campaign),
        "reasons": selectors.reason_breakdown(campaign),
        "campaign_stops": eligibility.active_stops(campaign),
        "server_time_only": campaign_selectors.server_time_only(campaign),
    }


@console_view()
def campaign_list(request: HttpRequest) -> HttpResponse:
    campaigns = Campaign.objects.select_related("release", "trust_policy", "device_class__vendor")
    return _page(
        request, "console/campaigns.html", {"campaigns": campaigns.order_by("-created_at")[:200]}
    )


class BadQuery(ValueError):
    """A filter or page number in the query string that the console never produces."""


def _device_table(request: HttpRequest, campaign: Campaign) -> dict[str, Any]:
    """One page of the campaign's device table, filtered by state: two queries (the count and
    the rows with their device joined) whatever the fleet size. An unknown state or a page that
    is not a positive number is refused; a page past the end (the filter's set shrank since the
    last refresh) shows the last page."""
    state = request.GET.get("state", "")
    if state and state not in RolloutState.values:
        raise BadQuery(f"unknown state {state!r}; states are {', '.join(RolloutState.values)}")
    number = request.GET.get("page", "1")
    if not re.fullmatch(r"[1-9][0-9]{0,8}", number):
        raise BadQuery(f"page must be a whole number from 1, not {number!r}")
    rollouts = Rollout.objects.filter(campaign=campaign).select_related("device")
    if state:
        rollouts = rollouts.filter(state=state)
    paginator = Paginator(rollouts.order_by("stage", "device__endpoint", "pk"), DEVICE_ROWS)
    page = paginator.get_page(int(number))

    def query(n: int) -> str:
        return urlencode({"state": state, "page": n} if state else {"page": n})

    links = []
    if page.has_previous():
        links += [("first", query(1)), ("previous", query(page.previous_page_number()))]
    if page.has_next():
        links += [("next", query(page.next_page_number())), ("last", query(paginator.num_pages))]
    return {
        "campaign": campaign,
        "state": state,
        "page": page,
        "rollouts": page.object_list,
        "query": query(page.number),
        "page_links": links,
    }


def _bad_query(exc: BadQuery) -> HttpResponse:
    return HttpResponseBadRequest(f"{exc}\n", content_type="text/plain; charset=utf-8")


@console_view()
def campaign_detail(request: HttpRequest, name: str) -> HttpResponse:
    campaign = _campaign(name)
    try:
        devices = _device_table(request, campaign)
    except BadQuery as exc:
        return _bad_query(exc)
    return _page(
        request,
        "console/campaign.html",
        {
            **_live_context(campaign),
            **devices,
            "states": RolloutState.choices,
            "spec_yaml": yaml.safe_dump(campaign.spec, sort_keys=False, allow_unicode=True),
            "revisions": campaign.revisions.select_related("created_by").order_by("-revision"),
            "timeline": campaign_selectors.campaign_timeline(campaign)[-50:],
            "stage_names": {i: s["name"] for i, s in enumerate(campaign.spec.get("stages", []))},
        },
    )


@console_view()
def campaign_live(request: HttpRequest, name: str) -> HttpResponse:
    """The campaign page's live block (status, stages, reasons), polled every 2 s."""
    return render(request, "console/_campaign_live.html", _live_context(_campaign(name)))


@console_view()
def campaign_devices(request: HttpRequest, name: str) -> HttpResponse:
    """The campaign page's device table for the page's filter and page number, polled every
    2 s; the fragment carries its own polling URL, so it keeps both."""
    campaign = _campaign(name)
    try:
        devices = _device_table(request, campaign)
    except BadQuery as exc:
        return _bad_query(exc)
    return render(request, "console/_campaign_devices.html", devices)


CAMPAIGN_ACTIONS = {"pause", "resume", "abort", "promote"}


@console_view(get=None, post=OPERATORS | GATEKEEPERS)
def campaign_action(request: HttpRequest, name: str, action: str) -> HttpResponse:
    campaign = _campaign(name)
    if action not in CAMPAIGN_ACTIONS:
        messages.error(request, f"unknown action {action!r}")
        return redirect("console:campaign", name=name)
    if action != "promote" and not roles_of(request.user) & OPERATORS:
        # Only promote is open to gatekeepers (qa/security) beyond the operators.
        return _page(
            request,
            "console/forbidden.html",
            {"reason": f"{action} needs one of the roles {role_names(OPERATORS)}"},
            status=403,
        )
    reason = request.POST.get("reason", "").strip()
    try:
        if action == "pause":
            campaign_services.campaign_pause(campaign=campaign, actor=request.user, reason=reason)
        elif action == "resume":
            campaign_services.campaign_resume(
                campaign=campaign,
                actor=request.user,
                # The form sends the checkbox ("on" when ticked) followed by a hidden "off",
                # so the box was ticked exactly when "on" is among the values.
                retry_failed="on" in request.POST.getlist("retry_failed", ["on"]),
            )
        elif action == "abort":
            campaign_services.campaign_abort(
                campaign=campaign, actor=request.user, reason=reason or "aborted in the console"
            )
        else:
            campaign_services.campaign_promote(campaign=campaign, actor=request.user)
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
    else:
        messages.success(request, f"campaign {campaign.name}: {action} done")
    return redirect("console:campaign", name=name)


@console_view(post=OPERATORS)
def campaign_new(request: HttpRequest) -> HttpResponse:
    """Paste a spec; "Plan" validates and counts (writes nothing), "Apply" creates the campaign
    (or revises the one of that name)."""
    text = request.POST.get("spec", "")
    context: dict[str, Any] = {"spec_text": text, "plan": None, "errors": []}
    if request.method == "POST":
        try:
            spec = parse_spec(text, source=SPEC_SOURCE)
            if request.POST.get("action") == "apply":
                campaign, outcome = campaign_services.campaign_apply(
                    spec=spec, actor=request.user, source=SPEC_SOURCE
                )
                messages.success(request, f"campaign {campaign.name} {outcome}")
                return redirect("console:campaign", name=campaign.name)
            context["plan"] = planning.campaign_plan(spec=spec, source=SPEC_SOURCE).as_dict()
            if spec.start_at is not None and spec.start_at > timezone.now():
                context["scheduled"] = campaign_selectors.describe_start(spec.start_at)
        except SERVICE_ERRORS as exc:
            errors = getattr(exc, "errors", None) or [exc]
            context["errors"] = [
                {"path": getattr(e, "path", "") or "", "reason": getattr(e, "reason", str(e))}
                for e in errors
            ]
            context["error_code"] = getattr(exc, "code", "error")
    return _page(request, "console/campaign_new.html", context)


# --- releases -------------------------------------------------------------------------------
def _release(name: str) -> Release:
    return get_object_or_404(
        Release.objects.select_related(
            "manifest__device_class__vendor", "manifest__image", "manifest__author_key"
        ),
        name=name,
    )


@console_view(delegable=True)
def release_list(request: HttpRequest) -> HttpResponse:
    releases = Release.objects.select_related("manifest__device_class__vendor")
    return _page(
        request,
        "console/releases.html",
        {
            "inbox": selectors.approvals_inbox(request.user),
            "releases": releases.order_by("-created_at")[:200],
        },
    )


@console_view(delegable=True)
def release_detail(request: HttpRequest, name: str) -> HttpResponse:
    release = _release(name)
    return _page(
        request,
        "console/release.html",
        {
            "release": release,
            "manifest": release.manifest,
            **selectors.release_view(release),
            "approve_choices": selectors.approve_choices(request.user, release),
            "campaigns": selectors.campaigns_for_release(release),
        },
    )


@console_view(get=None, post=APPROVERS, delegable=True)
def release_approve(request: HttpRequest, name: str) -> HttpResponse:
    """Upload a signature file: a raw COSE_Sign1, or an envelope from ``suit sign`` whose
    blocks by the signer's registered keys are taken (as ``manage.py release approve``)."""
    release = _release(name)
    upload = request.FILES.get("signature")
    role = request.POST.get("role", "")
    if upload is None:
        messages.error(request, "choose a signature file to upload")
        return redirect("console:release", name=name)
    if upload.size is not None and upload.size > settings.SUIT_MAX_ENVELOPE_SIZE:
        messages.error(request, f"the file is larger than {settings.SUIT_MAX_ENVELOPE_SIZE} bytes")
        return redirect("console:release", name=name)
    data = upload.read()
    registered = set(request.user.signing_keys.values_list("kid", flat=True))
    blocks = []
    for raw in signature_blocks(data):
        try:
            kid = suit.parse_signature_block(raw).kid
        except suit.SUITError:
            kid = None
        if kid is None or kid.hex() in registered:
            blocks.append(raw)
    if not blocks:
        messages.error(request, f"the file carries no signature by a key of {request.user}")
        return redirect("console:release", name=name)
    try:
        for block in blocks:
            _, verdict = release_services.release_approve(
                release=release, signer=request.user, role=role, cose=block
            )
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
    else:
        messages.success(request, f"approval recorded as {role}: {verdict.summary()}")
    return redirect("console:release", name=name)


def _revoke(request: HttpRequest, release: Release) -> None:
    try:
        release_services.release_revoke(
            release=release, reason=request.POST.get("reason", ""), actor=request.user
        )
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
    else:
        messages.success(request, f"release {release.name} revoked; its campaigns are aborted")


@console_view(get=None, post=REVOKERS)
def release_revoke(request: HttpRequest, name: str) -> HttpResponse:
    _revoke(request, _release(name))
    return redirect("console:release", name=name)


# --- incidents ------------------------------------------------------------------------------
@console_view()
def incident(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        "console/incident.html",
        {
            "history": EmergencyStop.objects.select_related(
                "release", "device_class__vendor", "created_by", "lifted_by"
            ).order_by("-created_at")[:HISTORY_ROWS],
            "releases": Release.objects.exclude(status=ReleaseStatus.REVOKED).order_by("name"),
            "all_releases": Release.objects.order_by("name"),
            "rollback_releases": Release.objects.filter(kind=ReleaseKind.ROLLBACK)
            .exclude(status=ReleaseStatus.REVOKED)
            .order_by("name"),
            "device_classes": DeviceClass.objects.select_related("vendor"),
            "running": Campaign.objects.filter(status__in=selectors.LIVE_STATUSES).count(),
        },
    )


@console_view(get=None, post=OPERATORS)
def rollback_launch(request: HttpRequest) -> HttpResponse:
    """Launch an approved rollback release to the devices the bad release reached."""
    rollback_release = Release.objects.filter(pk=request.POST.get("rollback") or None).first()
    bad_release = Release.objects.filter(pk=request.POST.get("from_release") or None).first()
    if rollback_release is None or bad_release is None:
        messages.error(request, "choose the rollback release and the release it replaces")
        return redirect("console:incident")
    try:
        campaign, outcome, plan = rollback.rollback_launch(
            rollback_release=rollback_release,
            bad_release=bad_release,
            actor=request.user,
            name=request.POST.get("campaign", "").strip() or None,
        )
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
        return redirect("console:incident")
    messages.success(
        request,
        f"rollback campaign {campaign.name} {outcome} for "
        f"{len(plan.affected_endpoints)} affected devices",
    )
    return redirect("console:campaign", campaign.name)


@console_view(get=None, post=STOPPERS)
def emergency_stop(request: HttpRequest) -> HttpResponse:
    """Halt dispatching: everything, one release or one device class."""
    scope = request.POST.get("scope", "global")
    release = device_class = None
    if scope == "release":
        release = Release.objects.filter(pk=request.POST.get("release") or None).first()
        if release is None:
            messages.error(request, "choose the release to stop")
            return redirect("console:incident")
    elif scope == "device_class":
        device_class = DeviceClass.objects.filter(pk=request.POST.get("device_class") or None)
        device_class = device_class.first()
        if device_class is None:
            messages.error(request, "choose the device class to stop")
            return redirect("console:incident")
    try:
        stop = campaign_services.emergency_stop(
            actor=request.user,
            reason=request.POST.get("reason", ""),
            release=release,
            device_class=device_class,
        )
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
    else:
        messages.warning(
            request, f"EMERGENCY STOP ({stop.get_scope_display()}) in force: dispatch halted"
        )
    return redirect("console:incident")


@console_view(get=None, post=REVOKERS)
def incident_revoke(request: HttpRequest) -> HttpResponse:
    release = Release.objects.filter(pk=request.POST.get("release") or None).first()
    if release is None:
        messages.error(request, "choose the release to revoke")
    else:
        _revoke(request, release)
    return redirect("console:incident")


@console_view(get=None, post=LIFTERS)
def emergency_lift(request: HttpRequest, pk: int) -> HttpResponse:
    stop = get_object_or_404(EmergencyStop, pk=pk)
    try:
        campaign_services.emergency_lift(stop=stop, actor=request.user)
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
    else:
        messages.success(request, f"emergency stop {stop.pk} lifted")
    return redirect("console:incident")


# --- audit, devices -------------------------------------------------------------------------
@console_view()
def audit_log(request: HttpRequest) -> HttpResponse:
    events = AuditEvent.objects.all()
    filters = {k: request.GET.get(k, "").strip() for k in ("action", "object_type", "object_id")}
    for field, value in filters.items():
        if value:
            events = events.filter(**{field: value})
    return _page(
        request,
        "console/audit.html",
        {
            "verdict": audit_verify(),
            "events": events.order_by("-seq")[:AUDIT_ROWS],
            "filters": filters,
            "audit_rows": AUDIT_ROWS,
        },
    )


# --- device classes -------------------------------------------------------------------------
@console_view()
def device_class_list(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        "console/device_classes.html",
        {
            "classes": [
                (c, *threshold_enforcement(c)) for c in DeviceClass.objects.select_related("vendor")
            ],
            "profiles": DeliveryProfile.choices,
            "methods": DeliveryMethod.choices,
            "manifest_profiles": ManifestProfile.choices,
        },
    )


@console_view(get=None, post=CATALOG_ADMINS)
def device_class_delivery(request: HttpRequest, pk: int) -> HttpResponse:
    """Change how a class's devices take firmware and which SUIT envelopes they take
    (``device_class_update``: both changes or neither)."""
    device_class = get_object_or_404(DeviceClass.objects.select_related("vendor"), pk=pk)
    try:
        release_services.device_class_update(
            device_class=device_class,
            delivery=request.POST.get("delivery", ""),
            delivery_method=request.POST.get("delivery_method") or None,
            manifest_profile=request.POST.get("manifest_profile") or None,
            actor=request.user,
        )
    except SERVICE_ERRORS as exc:
        report_refusal(request, exc)
    else:
        messages.success(
            request,
            f"{device_class}: delivery {device_class.delivery} "
            f"(method {device_class.delivery_method}), "
            f"manifest profile {device_class.manifest_profile}",
        )
    return redirect("console:device-classes")
