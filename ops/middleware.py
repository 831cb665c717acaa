"""Request ids, and the probe and metrics endpoints answered before the rest of the stack.

``/healthz``, ``/readyz`` and ``/metrics`` are called by orchestrators and scrapers by the
pod's address over plain HTTP: answered here, first, they are not turned away by the
``ALLOWED_HOSTS`` check (the Host is an IP address) nor redirected to HTTPS by
``SECURE_SSL_REDIRECT``, and a probe costs no session or authentication lookup. None of them
builds a URL from the Host header, which is what that check protects. ``/metrics`` has its own
access rule (``ops.metrics.check_scraper``).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse

from ops import health, logs, metrics

REQUEST_ID_HEADER = "X-Request-ID"


class RequestIdMiddleware:
    """Gives each request an id (the caller's X-Request-ID when well-formed), tags every log
    line of the request with it, and returns it in the X-Request-ID response header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = logs.request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id  # type: ignore[attr-defined]
        with logs.log_context(request_id=request_id):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No dependency is touched, so a database outage never
    gets every web process restarted."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: database, broker and firmware store, each with status and latency; 503 when
    one fails, so the load balancer stops sending traffic here until it recovers."""
    results = health.run_checks()
    ok = all(r.ok for r in results)
    body = {"status": "ok" if ok else "fail", "checks": {r.name: r.as_dict() for r in results}}
    response = JsonResponse(body, status=200 if ok else 503)
    response["Cache-Control"] = "no-store"
    return response


def metrics_view(request: HttpRequest) -> HttpResponse:
    try:
        metrics.check_scraper(
            remote_addr=request.META.get("REMOTE_ADDR", ""),
            authorization=request.headers.get("Authorization", ""),
        )
    except metrics.Refusal as refusal:
        refused = JsonResponse({"error": refusal.reason}, status=refusal.status)
        if refusal.status == 401:
            refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refused
    from prometheus_client import CONTENT_TYPE_LATEST

    response = HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


ENDPOINTS: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics_view,
}


class OpsEndpointsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = ENDPOINTS.get(request.path_info.rstrip("/") or "/")
        if view is None:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        response = view(request)
        # What SecurityMiddleware, which these answers skip, would have added.
        response["X-Content-Type-Options"] = "nosniff"
        return response
