"""Every error leaves the API as ``{"code", "message", ...}`` with a status that says whose fault
it is: 400 bad input, 401 not signed in, 403 not allowed, 404 unknown, 409 state / conflict.

The codes are the services' own stable ``code`` attributes (``approval.self_approval``,
``campaign.state``, ``suit.truncated``...), so a client handles one vocabulary whether it talks
to the CLI or the API. Spec problems list every ``{path, reason}``, as the CLI prints them.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults as django_defaults
from rest_framework import exceptions, status
from rest_framework.response import Response

from api.webhooks import WebhookResendError, WebhookTargetError
from audit.models import AuditImmutableError
from campaigns import errors as campaign_errors
from campaigns import fleet
from campaigns.device_services import DeviceRegistryError, UnknownDeviceError
from manifests import errors as manifest_errors
from manifests.policy import PolicyError
from manifests.suit import SUITError

logger = logging.getLogger(__name__)

# Most specific class first; the first isinstance match decides the status.
STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    # release side: who may act
    (manifest_errors.PermissionDeniedError, status.HTTP_403_FORBIDDEN),
    (manifest_errors.NotAuthorizedToApproveError, status.HTTP_403_FORBIDDEN),
    (manifest_errors.SelfApprovalError, status.HTTP_403_FORBIDDEN),
    # release side: the thing exists already / is in the wrong state
    (manifest_errors.VendorExistsError, status.HTTP_409_CONFLICT),
    (manifest_errors.DeviceClassExistsError, status.HTTP_409_CONFLICT),
    (manifest_errors.DuplicateManifestError, status.HTTP_409_CONFLICT),
    (manifest_errors.DeliveryConflictError, status.HTTP_409_CONFLICT),
    (manifest_errors.ManifestProfileConflictError, status.HTTP_409_CONFLICT),
    (manifest_errors.SequenceNumberConflictError, status.HTTP_409_CONFLICT),
    (manifest_errors.KeyExistsError, status.HTTP_409_CONFLICT),
    (manifest_errors.KeyStateError, status.HTTP_409_CONFLICT),
    (manifest_errors.PayloadKeyStateError, status.HTTP_409_CONFLICT),
    (manifest_errors.ImmutableRecordError, status.HTTP_409_CONFLICT),
    (manifest_errors.ReleaseExistsError, status.HTTP_409_CONFLICT),
    (manifest_errors.ReleaseStateError, status.HTTP_409_CONFLICT),
    (manifest_errors.DuplicateApprovalError, status.HTTP_409_CONFLICT),
    (manifest_errors.TrustPolicyStateError, status.HTTP_409_CONFLICT),
    (manifest_errors.ImageTooLargeError, status.HTTP_413_REQUEST_ENTITY_TOO_LARGE),
    # everything else on the release side is a bad upload or a bad reference in it
    (manifest_errors.ManifestError, status.HTTP_400_BAD_REQUEST),
    # campaign side
    (campaign_errors.SpecError, status.HTTP_400_BAD_REQUEST),
    (campaign_errors.UnknownReleaseError, status.HTTP_400_BAD_REQUEST),
    (campaign_errors.UnknownTargetError, status.HTTP_400_BAD_REQUEST),
    (campaign_errors.UnknownTrustPolicyError, status.HTTP_400_BAD_REQUEST),
    (campaign_errors.GateError, status.HTTP_403_FORBIDDEN),
    (campaign_errors.CampaignError, status.HTTP_409_CONFLICT),
    # fleet management: tags, groups, import (a bad import lists its rows)
    (fleet.UnknownGroupError, status.HTTP_404_NOT_FOUND),
    (fleet.GroupExistsError, status.HTTP_409_CONFLICT),
    (fleet.FleetError, status.HTTP_400_BAD_REQUEST),
    # device registry, codec, policy documents, audit
    (UnknownDeviceError, status.HTTP_404_NOT_FOUND),
    (DeviceRegistryError, status.HTTP_409_CONFLICT),
    (SUITError, status.HTTP_400_BAD_REQUEST),
    (PolicyError, status.HTTP_400_BAD_REQUEST),
    (AuditImmutableError, status.HTTP_409_CONFLICT),
    # outbound webhooks
    (WebhookTargetError, status.HTTP_400_BAD_REQUEST),
    (WebhookResendError, status.HTTP_409_CONFLICT),
)

DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.NotAuthenticated: "auth.not_authenticated",
    exceptions.AuthenticationFailed: "auth.failed",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "parse_error",
    exceptions.Throttled: "throttled",
    exceptions.ValidationError: "invalid",
}


class RoleForbidden(exceptions.PermissionDenied):
    """The role matrix (api/permissions.py) refused the request before any service ran."""

    default_code = "api.forbidden"


def status_for(exc: Exception) -> int | None:
    for cls, code in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return code
    return None


def _flatten(detail: Any, path: str = "") -> list[dict[str, str]]:
    """DRF's nested error detail as the same ``[{path, reason}]`` list spec errors use."""
    if isinstance(detail, dict):
        out: list[dict[str, str]] = []
        for key, value in detail.items():
            sub = path if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            out += _flatten(value, sub)
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return [
                {"path": path, "reason": str(item), "code": getattr(item, "code", "invalid")}
                for item in detail
            ]
        out = []
        for index, item in enumerate(detail):
            out += _flatten(item, f"{path}[{index}]")
        return out
    return [{"path": path, "reason": str(detail), "code": getattr(detail, "code", "invalid")}]


def error_body(exc: Exception) -> dict[str, Any]:
    body: dict[str, Any] = {"code": getattr(exc, "code", "error"), "message": str(exc)}
    if isinstance(exc, campaign_errors.SpecError):
        body["message"] = (
            str(exc) if len(exc.errors) == 1 else f"{exc.source}: {len(exc.errors)} problems"
        )
        body["errors"] = [{"path": e.path, "reason": e.reason} for e in exc.errors]
    if isinstance(exc, fleet.ImportRejectedError):
        body["errors"] = exc.as_list()
    if isinstance(exc, manifest_errors.InvalidManifestError):
        body["suit_code"] = exc.suit_code
    if isinstance(exc, SUITError) and exc.path:
        body["path"] = exc.path
    return body


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    code = status_for(exc)
    if code is not None:
        return Response(error_body(exc), status=code)
    if isinstance(exc, Http404 | ObjectDoesNotExist):
        return Response({"code": "not_found", "message": "not found"}, status=404)
    if isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: let Django log it and answer 500
    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        message = "; ".join(f"{e['path'] or '<body>'}: {e['reason']}" for e in errors)
        body: dict[str, Any] = {"code": "invalid", "message": message, "errors": errors}
    elif isinstance(exc, exceptions.PermissionDenied):
        code_name = exc.default_code if isinstance(exc, RoleForbidden) else "forbidden"
        body = {"code": code_name, "message": str(exc.detail)}
    else:
        code_name = next((c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), "error")
        body = {"code": code_name, "message": str(exc.detail)}
    return Response(body, status=exc.status_code, headers=headers)


# --- errors Django answers itself ------------------------------------------------------------
# A URL no route matches, or a bug (an exception no handler above turned into a response),
# never reaches DRF's handler: Django answers with its own pages. These handlers (installed as
# handler400/403/404/500 in config/urls.py) keep the API's promise that every error under
# /api/ is the JSON error body, and leave the console's HTML pages alone.
API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def _json_error(code: str, message: str, status_code: int) -> JsonResponse:
    return JsonResponse({"code": code, "message": message}, status=status_code)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _json_error("bad_request", "bad request", 400)
    return django_defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _json_error("forbidden", str(exception) or "forbidden", 403)
    return django_defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _json_error("not_found", f"no API endpoint at {request.path}", 404)
    return django_defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    # Django has logged the exception with its traceback (django.request) before calling this.
    if _is_api(request):
        return _json_error("server_error", "internal error; it has been logged", 500)
    return django_defaults.server_error(request)
