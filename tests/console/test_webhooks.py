"""Webhooks in the console: list, create, edit, disable, delete and re-send through the same
audited services as the API, with the API's permissions (admins change, auditors read)."""

from __future__ import annotations

from typing import Any

import pytest

from api.models import DeliveryStatus, Webhook, WebhookDelivery
from audit.models import AuditEvent
from tests.api.test_webhooks import (  # loopback receivers, eager Celery
    _loopback_receivers_allowed,
    eager,
    receiver_factory,
)

pytestmark = pytest.mark.django_db
__all__ = ["_loopback_receivers_allowed", "eager", "receiver_factory"]
SECRET = "console-secret-0123456789"


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def make_hook(**fields: Any) -> Webhook:
    values = {"url": "https://hooks.example.com/x", "secret": SECRET, "name": "pager"}
    return Webhook.objects.create(**{**values, **fields})


def make_delivery(hook: Webhook, *, status: str = DeliveryStatus.FAILED) -> WebhookDelivery:
    return WebhookDelivery.objects.create(
        webhook=hook,
        event_seq=11,
        event_action="campaign.aborted",
        payload={"event": "campaign.aborted", "seq": 11},
        status=status,
        attempts=1,
        response_status=400,
        last_error="HTTP 400: nope",
    )


def test_admin_creates_a_webhook_and_sees_its_generated_secret_once(login: Any) -> None:
    admin = login("admin")
    response = admin.post(
        "/webhooks/",
        {
            "name": "pager",
            "url": "https://hooks.example.com/fw",
            "events": "campaign.*, release.revoked",
            "active": "on",
        },
        follow=True,
    )
    hook = Webhook.objects.get()
    assert (hook.name, hook.url, hook.events, hook.active) == (
        "pager",
        "https://hooks.example.com/fw",
        ["campaign.*", "release.revoked"],
        True,
    )
    assert response.redirect_chain[-1][0] == f"/webhooks/{hook.pk}/"
    assert any(hook.secret in m for m in messages_of(response))
    assert AuditEvent.objects.filter(action="webhook.create", object_id=str(hook.pk)).exists()
    # Shown once: not on the page the next time.
    assert hook.secret not in admin.get(f"/webhooks/{hook.pk}/").content.decode()


def test_an_unchecked_enabled_box_creates_a_disabled_webhook(login: Any) -> None:
    login("admin").post("/webhooks/", {"url": "https://hooks.example.com/fw", "secret": SECRET})
    hook = Webhook.objects.get()
    assert (hook.active, hook.secret) == (False, SECRET)


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"url": "http://169.254.169.254/latest/"}, "link-local"),
        ({"url": "http://[::1]:8000/admin/"}, "loopback"),
        ({"url": "ftp://hooks.example.com/"}, "url"),
        ({"url": "https://hooks.example.com/", "secret": "short"}, "secret"),
        ({"url": "https://hooks.example.com/", "events": "campaign.* <script>"}, "event pattern"),
    ],
)
def test_bad_webhook_is_refused_with_its_reason_and_nothing_created(
    login: Any, form: dict[str, str], reason: str
) -> None:
    response = login("admin").post("/webhooks/", form, follow=True)
    assert not Webhook.objects.exists()
    assert any(reason in m for m in messages_of(response)), messages_of(response)


def test_admin_edits_a_webhook_and_a_blank_secret_keeps_the_old_one(login: Any) -> None:
    hook = make_hook()
    response = login("admin").post(
        f"/webhooks/{hook.pk}/",
        {
            "name": "ops",
            "url": "https://other.example.com/y",
            "events": "emergency.*",
            "secret": "",
        },
        follow=True,
    )
    hook.refresh_from_db()
    assert (hook.name, hook.url, hook.events, hook.secret) == (
        "ops",
        "https://other.example.com/y",
        ["emergency.*"],
        SECRET,
    )
    assert "Webhook" in " ".join(messages_of(response))
    event = AuditEvent.objects.get(action="webhook.update")
    assert event.details["changed"] == ["events", "name", "url"]


def test_edit_to_an_internal_address_changes_nothing(login: Any) -> None:
    hook = make_hook()
    login("admin").post(f"/webhooks/{hook.pk}/", {"url": "http://10.0.0.5/hook"})
    hook.refresh_from_db()
    assert hook.url == "https://hooks.example.com/x"
    assert not AuditEvent.objects.filter(action="webhook.update").exists()


def test_admin_disables_enables_and_deletes_a_webhook(login: Any) -> None:
    admin = login("admin")
    hook = make_hook()
    admin.post(f"/webhooks/{hook.pk}/disable/")
    hook.refresh_from_db()
    assert not hook.active
    assert "disabled" in admin.get(f"/webhooks/{hook.pk}/").content.decode()
    admin.post(f"/webhooks/{hook.pk}/enable/")
    hook.refresh_from_db()
    assert hook.active
    admin.post(f"/webhooks/{hook.pk}/delete/")
    assert not Webhook.objects.exists()
    actions = list(AuditEvent.objects.values_list("action", flat=True).order_by("seq"))
    assert actions[-3:] == ["webhook.update", "webhook.update", "webhook.delete"]
    assert admin.post(f"/webhooks/{hook.pk}/explode/").status_code == 404


def test_admin_resends_a_failed_delivery(
    login: Any,
    eager: None,
    receiver_factory: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    receiver = receiver_factory([200])
    delivery = make_delivery(make_hook(url=receiver.url))
    admin = login("admin")
    page = admin.get(f"/webhooks/{delivery.webhook_id}/").content.decode()
    assert "HTTP 400: nope" in page and "Re-send" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(f"/webhooks/deliveries/{delivery.pk}/resend/", follow=True)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert len(receiver.requests) == 1
    assert any("sent again" in m for m in messages_of(response))
    assert AuditEvent.objects.filter(action="webhook.resend").count() == 1


def test_resending_a_delivery_in_flight_is_refused_on_the_page(login: Any) -> None:
    delivery = make_delivery(make_hook(), status=DeliveryStatus.RETRYING)
    response = login("admin").post(f"/webhooks/deliveries/{delivery.pk}/resend/", follow=True)
    assert any("webhook.delivery_in_flight" in m for m in messages_of(response))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.RETRYING
    assert "in flight" in response.content.decode()


def test_auditor_reads_webhooks_but_cannot_change_them(login: Any) -> None:
    hook = make_hook()
    delivery = make_delivery(hook)
    auditor = login("auditor")
    listing = auditor.get("/webhooks/")
    assert listing.status_code == 200
    assert "hooks.example.com" in listing.content.decode()
    assert 'id="webhook-new"' not in listing.content.decode()
    detail = auditor.get(f"/webhooks/{hook.pk}/").content.decode()
    assert 'data-role="resend"' not in detail and 'id="webhook-edit"' not in detail
    assert SECRET not in detail
    for url in (
        "/webhooks/",
        f"/webhooks/{hook.pk}/",
        f"/webhooks/{hook.pk}/delete/",
        f"/webhooks/deliveries/{delivery.pk}/resend/",
    ):
        assert auditor.post(url, {"url": "https://evil.example.com/"}).status_code == 403, url
    assert Webhook.objects.get().url == "https://hooks.example.com/x"
    assert not AuditEvent.objects.filter(action__startswith="webhook.").exists()


@pytest.mark.parametrize("username", ["ops", "sec", "author"])
def test_other_roles_cannot_open_the_webhook_pages(login: Any, username: str) -> None:
    hook = make_hook()
    client = login(username)
    assert client.get("/webhooks/").status_code == 403
    assert client.get(f"/webhooks/{hook.pk}/").status_code == 403
    assert "/webhooks/" not in client.get("/").content.decode()  # no menu entry either


def test_signed_out_visitor_is_sent_to_the_login_page(client: Any) -> None:
    response = client.get("/webhooks/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_webhook_list_queries_do_not_grow_with_webhooks(
    login: Any, django_assert_max_num_queries: Any
) -> None:
    admin = login("admin")
    for i in range(3):
        make_delivery(make_hook(name=f"h{i}"))
    admin.get("/webhooks/")  # warm the session
    with django_assert_max_num_queries(12) as first:
        admin.get("/webhooks/")
    for i in range(3, 10):
        make_delivery(make_hook(name=f"h{i}"))
    with django_assert_max_num_queries(len(first.captured_queries)):
        page = admin.get("/webhooks/")
    assert page.content.decode().count("data-webhook=") == 10
