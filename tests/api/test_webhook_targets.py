"""Webhooks cannot be aimed at the server itself or its network: loopback, private,
link-local, reserved, multicast and unspecified addresses are refused when a webhook is saved
(an address in the URL, ``localhost``) and again at delivery, on every address its host name
resolves to, with the connection made to the address that was checked. A deployment opens
a network with ``WEBHOOK_ALLOWED_NETWORKS``. Receivers here listen on loopback; host names
resolve through a stand-in for DNS (no network)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from api import webhooks
from api.models import DeliveryStatus, WebhookDelivery
from config.env import EnvError, envnetworks
from tests.api.test_webhooks import SECRET, Receiver

pytestmark = pytest.mark.django_db

INTERNAL_URLS = [
    pytest.param("http://127.0.0.1:8000/api/", id="loopback"),
    pytest.param("http://127.3.4.5/hook", id="loopback-range"),
    pytest.param("http://localhost:8000/admin/", id="localhost"),
    pytest.param("https://api.localhost/hook", id="localhost-subdomain"),
    pytest.param("http://LOCALHOST./hook", id="localhost-fqdn-uppercase"),
    pytest.param("http://[::1]:8000/hook", id="ipv6-loopback"),
    pytest.param("http://[::ffff:127.0.0.1]/hook", id="ipv4-mapped-loopback"),
    pytest.param("http://2130706433/hook", id="loopback-as-one-number"),
    pytest.param("http://127.1/hook", id="loopback-short-form"),
    pytest.param("http://0x7f.0.0.1/hook", id="loopback-hex"),
    pytest.param("http://0.0.0.0:8000/hook", id="unspecified"),
    pytest.param("http://169.254.169.254/latest/meta-data/", id="link-local-metadata"),
    pytest.param("http://[fe80::1]/hook", id="ipv6-link-local"),
    pytest.param("http://10.1.2.3/hook", id="private-10"),
    pytest.param("http://172.16.0.9/hook", id="private-172"),
    pytest.param("http://192.168.1.1/hook", id="private-192"),
    pytest.param("http://[fd00::5]/hook", id="ipv6-unique-local"),
    pytest.param("http://100.64.0.1/hook", id="shared-cgnat"),
    pytest.param("http://224.0.0.251/hook", id="multicast"),
    pytest.param("http://240.0.0.1/hook", id="reserved"),
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_webhook_to_an_internal_address_is_refused_on_create(
    people: dict[str, Any], url: str
) -> None:
    response = people["admin"].client.post(
        "/api/webhooks/", {"url": url, "secret": SECRET}, format="json"
    )
    assert response.status_code == 400, response.json()
    errors = response.json()["errors"]
    assert errors[0]["path"] == "url"
    # Spellings Django's URL validator already rejects are "invalid"; the rest are refused as
    # targets. The service refuses all of them (it has no URL validator in front of it).
    assert errors[0]["code"] in {"target_refused", "invalid"}
    if errors[0]["code"] == "target_refused":
        assert "WEBHOOK_ALLOWED_NETWORKS" in errors[0]["reason"]
    with pytest.raises(webhooks.WebhookTargetError):
        webhooks.webhook_create(actor="test", url=url, secret=SECRET)


def test_webhook_moved_to_an_internal_address_is_refused_on_update(
    people: dict[str, Any],
) -> None:
    admin = people["admin"].client
    created = admin.post(
        "/api/webhooks/", {"url": "https://hooks.example.com/x", "secret": SECRET}, format="json"
    )
    assert created.status_code == 201
    hook_id = created.json()["id"]
    for method in (admin.patch, admin.put):
        response = method(
            f"/api/webhooks/{hook_id}/",
            {"url": "http://169.254.169.254/", "secret": SECRET},
            format="json",
        )
        assert response.status_code == 400, response.json()
        assert response.json()["errors"][0]["path"] == "url"
    hook = webhooks.Webhook.objects.get(pk=hook_id)
    assert hook.url == "https://hooks.example.com/x"
    with pytest.raises(webhooks.WebhookTargetError):
        webhooks.webhook_update(webhook=hook, actor="test", url="http://[::1]/")


def test_public_addresses_and_host_names_are_accepted(people: dict[str, Any]) -> None:
    """A host name is checked when it resolves, at delivery; a public address at once."""
    admin = people["admin"].client
    for url in ("https://hooks.example.com/x", "http://93.184.215.14:8080/x"):
        response = admin.post("/api/webhooks/", {"url": url, "secret": SECRET}, format="json")
        assert response.status_code == 201, (url, response.json())


def test_allow_listed_network_is_accepted(people: dict[str, Any], settings: Any) -> None:
    settings.WEBHOOK_ALLOWED_NETWORKS = [ipaddress.ip_network("10.20.0.0/16")]
    admin = people["admin"].client
    ok = admin.post("/api/webhooks/", {"url": "http://10.20.1.2/h", "secret": SECRET})
    assert ok.status_code == 201, ok.json()
    refused = admin.post("/api/webhooks/", {"url": "http://10.21.1.2/h", "secret": SECRET})
    assert refused.status_code == 400


def test_allowed_networks_setting_fails_loudly_on_a_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_NETS", "10.0.0.0/8, 127.0.0.1,fd00::/8")
    assert [str(n) for n in envnetworks("X_NETS", [])] == [
        "10.0.0.0/8",
        "127.0.0.1/32",
        "fd00::/8",
    ]
    monkeypatch.setenv("X_NETS", "10.0.0.0/33")
    with pytest.raises(EnvError, match="X_NETS"):
        envnetworks("X_NETS", [])


# --- at delivery -----------------------------------------------------------------------------
@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A stand-in resolver: ``dns[name]`` is the list of answers, one popped per lookup (the
    last one stays), as a name re-pointed between two lookups would answer."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            queue = answers[host]
            address = queue.pop(0) if len(queue) > 1 else queue[0]
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def _deliver_once(url: str) -> WebhookDelivery:
    hook = webhooks.webhook_create(actor="test", url=url, secret=SECRET)
    delivery = WebhookDelivery.objects.create(
        webhook=hook, event_seq=1, event_action="release.revoke", payload={"event": "x"}
    )
    webhooks.deliver_once(str(delivery.id), attempt=0)
    delivery.refresh_from_db()
    return delivery


def test_host_name_resolving_to_loopback_is_refused_at_delivery(
    dns: dict[str, list[str]], receivers: list[Receiver]
) -> None:
    receiver = Receiver([204])
    receivers.append(receiver)
    port = receiver.server.server_address[1]
    dns["hooks.attacker.example"] = ["127.0.0.1"]
    delivery = _deliver_once(f"http://hooks.attacker.example:{port}/hook")
    assert receiver.requests == []
    assert delivery.status == DeliveryStatus.FAILED  # permanent: not retried
    assert "127.0.0.1 is a loopback address" in delivery.last_error


def test_name_re_pointed_after_the_check_still_reaches_only_the_checked_address(
    dns: dict[str, list[str]], receivers: list[Receiver], settings: Any
) -> None:
    """DNS rebinding: the first answer passes the check, a second lookup would answer an
    address that is refused. The connection goes to the checked address; no second lookup."""
    settings.WEBHOOK_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.2/32")]
    checked = Receiver([204], host="127.0.0.2")
    receivers.append(checked)
    port = checked.server.server_address[1]
    internal = Receiver([204], host="127.0.0.1", port=port)
    receivers.append(internal)
    dns["rebind.example"] = ["127.0.0.2", "127.0.0.1"]
    delivery = _deliver_once(f"http://rebind.example:{port}/hook")
    assert delivery.status == DeliveryStatus.SUCCEEDED, delivery.last_error
    assert len(checked.requests) == 1 and internal.requests == []
    assert checked.requests[0]["headers"]["Host"] == f"rebind.example:{port}"


def test_allow_listed_loopback_receiver_is_delivered_to(
    dns: dict[str, list[str]], receivers: list[Receiver], settings: Any
) -> None:
    settings.WEBHOOK_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]
    receiver = Receiver([200])
    receivers.append(receiver)
    dns["hooks.internal"] = ["127.0.0.1"]
    delivery = _deliver_once(f"http://hooks.internal:{receiver.server.server_address[1]}/h")
    assert delivery.status == DeliveryStatus.SUCCEEDED and len(receiver.requests) == 1
