"""Outbound webhooks against real HTTP servers on loopback: signed, delivered once per event
after commit, retried with backoff on transient failures, given up on 4xx, every attempt
recorded. Celery runs eagerly (retries run at once, the countdown is not waited out)."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from api import webhooks
from api.models import DeliveryStatus, Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db
SECRET = "s3cret-s3cret-s3cret"


class Receiver:
    """A loopback HTTP server answering the scripted statuses in turn (then the last)."""

    def __init__(self, statuses: list[int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                code = (
                    receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                )
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"nope" if code >= 400 else b"ok")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _loopback_receivers_allowed(settings: Any) -> None:
    """The receivers listen on loopback, which webhooks reach only when it is allow-listed
    (refused by default: tests/api/test_webhook_targets.py)."""
    settings.WEBHOOK_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.fixture
def eager(settings: Any) -> Iterator[None]:
    from config.celery import app

    old = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    settings.WEBHOOK_BACKOFF_BASE_SECONDS = 0
    settings.WEBHOOK_TIMEOUT_SECONDS = 2
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = old


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _revoke(people: dict[str, Any], capture: Any) -> None:
    with capture(execute=True):
        response = people["security"].client.post(
            "/api/releases/thermo-2.0.0/revoke/", {"reason": "incident 42"}, format="json"
        )
    assert response.status_code == 200, response.json()


def test_delivery_is_signed_and_recorded(
    people: dict[str, Any],
    world: dict[str, Any],
    eager: None,
    receiver_factory: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver = receiver_factory([204])
    response = people["admin"].client.post(
        "/api/webhooks/",
        {"url": receiver.url, "secret": SECRET, "events": ["release.*"]},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["signing_secret"] == SECRET
    hook_id = response.json()["id"]
    assert "secret" not in people["auditor"].client.get(f"/api/webhooks/{hook_id}/").json()

    _revoke(people, django_capture_on_commit_callbacks)

    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    headers, body = got["headers"], got["body"]
    assert webhooks.verify_signature(
        SECRET,
        signature=headers["X-Fwupd-Signature"],
        timestamp=headers["X-Fwupd-Timestamp"],
        body=body,
        now=time.time(),
    )
    # a replay with a fresh timestamp but the old MAC fails; so does a stale timestamp
    assert not webhooks.verify_signature(
        SECRET,
        signature=headers["X-Fwupd-Signature"],
        timestamp=str(int(headers["X-Fwupd-Timestamp"]) + 1),
        body=body,
        now=time.time(),
    )
    assert not webhooks.verify_signature(
        SECRET,
        signature=headers["X-Fwupd-Signature"],
        timestamp=headers["X-Fwupd-Timestamp"],
        body=body,
        now=time.time() + 3600,
    )
    event = json.loads(body)
    assert event["event"] == "release.revoke" and event["object_id"] == "thermo-2.0.0"
    assert event["details"]["reason"] == "incident 42"
    assert headers["X-Fwupd-Event"] == "release.revoke"
    assert headers["X-Fwupd-Delivery"] == event["delivery"]
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (
        DeliveryStatus.SUCCEEDED,
        1,
        204,
    )
    listed = people["admin"].client.get(f"/api/webhook-deliveries/?webhook={hook_id}").json()
    assert listed["results"][0]["status"] == "succeeded"


def test_transient_errors_retry_with_backoff_until_delivered(
    people: dict[str, Any],
    world: dict[str, Any],
    eager: None,
    receiver_factory: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver = receiver_factory([503, 502, 200])
    webhooks.webhook_create(actor="test", url=receiver.url, secret=SECRET)
    _revoke(people, django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(event_action="release.revoke")
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempts == 3
    ids = {r["headers"]["X-Fwupd-Delivery"] for r in receiver.requests}
    assert ids == {str(delivery.id)}  # the same delivery id on every attempt


def test_client_error_fails_at_once(
    people: dict[str, Any],
    world: dict[str, Any],
    eager: None,
    receiver_factory: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver = receiver_factory([410])
    webhooks.webhook_create(actor="test", url=receiver.url, secret=SECRET, events=["release.*"])
    _revoke(people, django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (
        DeliveryStatus.FAILED,
        1,
        410,
    )
    assert delivery.last_error.startswith("HTTP 410")


def test_unreachable_receiver_gives_up_after_max_attempts(
    people: dict[str, Any],
    world: dict[str, Any],
    eager: None,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    closed = Receiver([200])
    url = closed.url
    closed.close()  # nothing listens there any more: connection refused
    webhooks.webhook_create(actor="test", url=url, secret=SECRET, events=["release.revoke"])
    _revoke(people, django_capture_on_commit_callbacks)  # the caller never sees the failure
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 3)
    assert "Connection" in delivery.last_error


def test_event_filter_and_inactive_hooks(
    people: dict[str, Any],
    world: dict[str, Any],
    eager: None,
    receiver_factory: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver = receiver_factory([200])
    webhooks.webhook_create(actor="test", url=receiver.url, secret=SECRET, events=["campaign.*"])
    webhooks.webhook_create(actor="test", url=receiver.url, secret=SECRET, active=False)
    _revoke(people, django_capture_on_commit_callbacks)
    assert receiver.requests == [] and not WebhookDelivery.objects.exists()


def test_nothing_is_sent_for_a_change_that_rolled_back(
    people: dict[str, Any],
    world: dict[str, Any],
    eager: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    Webhook.objects.create(url="http://127.0.0.1:9/never", secret=SECRET)
    with django_capture_on_commit_callbacks() as callbacks:
        response = people["security"].client.post(
            "/api/releases/thermo-2.0.0/revoke/", {"reason": ""}, format="json"
        )
    assert response.status_code == 400 and callbacks == []


def test_backoff_grows_exponentially_and_is_capped(settings: Any) -> None:
    settings.WEBHOOK_BACKOFF_BASE_SECONDS = 10
    settings.WEBHOOK_BACKOFF_MAX_SECONDS = 100
    assert 10 <= webhooks.backoff_seconds(0) <= 11
    assert 40 <= webhooks.backoff_seconds(2) <= 44
    assert 100 <= webhooks.backoff_seconds(9) <= 110


def test_worker_path_schedules_a_retry_with_backoff(
    world: dict[str, Any], receiver_factory: Any, settings: Any, monkeypatch: Any
) -> None:
    """Under a real worker (not eager) a transient failure becomes Celery's retry with the
    backoff countdown; the row says retrying meanwhile."""
    from api.tasks import webhook_deliver_task

    settings.WEBHOOK_BACKOFF_BASE_SECONDS = 10
    receiver = receiver_factory([503])
    hook = webhooks.webhook_create(actor="test", url=receiver.url, secret=SECRET)
    delivery = WebhookDelivery.objects.create(
        webhook=hook, event_seq=1, event_action="release.revoke", payload={"event": "x"}
    )
    scheduled: dict[str, Any] = {}

    class Scheduled(Exception):
        pass

    def fake_retry(**kwargs: Any) -> Exception:
        scheduled.update(kwargs)
        return Scheduled()

    monkeypatch.setattr(webhook_deliver_task, "retry", fake_retry)
    webhook_deliver_task.push_request(is_eager=False, retries=2)
    try:
        with pytest.raises(Scheduled):
            webhook_deliver_task.run(str(delivery.id))
    finally:
        webhook_deliver_task.pop_request()
    assert 40 <= scheduled["countdown"] <= 44
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.RETRYING, 1)
