"""Shared registrations (issue "Real LwM2M devices take an update end to end"): a gateway that
does not hold a registration - restarted, or another gateway of the deployment - adopts it at
the device's Update or De-register when the request comes from the registration's own peer,
instead of answering 4.04; nothing an unauthenticated peer sends makes it look up the registry
without bound (docs/lwm2m.md, "Shared registrations").

The first part runs a gateway against a fake registry (:class:`FakeRegistry`) and raw UDP peers;
the second runs gateways and simulated devices against the database."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import aiocoap
import pytest

from campaigns import device_services
from campaigns.models import CommandStatus, Device, DeviceCommand
from tests.workers.lwm2m.conftest import ListSink, fleet_spec, wait_for
from tests.workers.lwm2m.hostile import DELETE, POST, Peer, code_of, gateway_thread, request
from workers.lwm2m import admission, selectors
from workers.lwm2m.bus import bus_for_url
from workers.lwm2m.gateway import CeleryEventSink, Gateway, GatewayConfig, GatewayThread
from workers.lwm2m.simulator import Fleet

# --- against a fake registry -------------------------------------------------------------------


class FakeRegistry:
    """A registry of stored registrations that counts its lookups (called on I/O threads)."""

    def __init__(self, *stored: admission.StoredRegistration) -> None:
        self.stored = {s.registration_id: s for s in stored}
        self.lookups: list[str] = []
        self._lock = threading.Lock()

    def lookup(self, registration_id: str) -> admission.StoredRegistration | None:
        with self._lock:
            self.lookups.append(registration_id)
        return self.stored.get(registration_id)


def stored(peer: Peer, *, endpoint: str = "dev-1", **kwargs: Any) -> admission.StoredRegistration:
    """A live registration made by ``peer`` (NoSec) at another gateway."""
    host, port = peer.sock.getsockname()[:2]
    fields: dict[str, Any] = {
        "registration_id": secrets.token_hex(8),
        "endpoint": endpoint,
        "gateway_id": "gw-elsewhere",
        "expires_at": time.time() + 300,
        "lifetime": 300,
        "binding": "U",
        "queue_mode": False,
        "lwm2m_version": "1.1",
        "objects": ("/1/0", "/3/0", "/5/0"),
        "root_path": "/",
        "address": admission.format_address((host, port)),
        "identity": "",
        "info_complete": True,
        "protocols": (0,),
    }
    fields.update(kwargs)
    return admission.StoredRegistration(**fields)


def update(peer: Peer, reg_id: str) -> str | None:
    return code_of(peer.exchange(request(POST, path=[b"rd", reg_id.encode()], mid=peer.next_mid())))


def with_registry(thread: GatewayThread, registry: FakeRegistry) -> FakeRegistry:
    thread.gateway.registration_source = registry
    return thread.gateway.registration_source  # type: ignore[return-value]


def test_update_for_a_registration_made_elsewhere_is_adopted_from_its_own_peer() -> None:
    sink = ListSink()
    with gateway_thread(sink=sink) as thread:
        device = Peer(thread.gateway.config.port)
        reg = stored(device, objects=("/3/0", "/5/0"), root_path="/lwm2m/", lifetime=120)
        with_registry(thread, FakeRegistry(reg))
        assert update(device, reg.registration_id) == "2.04"
        held = thread.gateway.by_id[reg.registration_id]
        assert thread.gateway.by_endpoint["dev-1"] is held
        assert (held.lifetime, held.version, held.protocols) == (120, "1.1", [0])
        assert held.objects.root_path == "/lwm2m/" and held.objects.has_object(5)
        assert 0 < held.deadline - time.monotonic() <= 120
        wait_for(lambda: bool(sink.of("updated")))
        (event,) = sink.of("updated")
        assert event["registration_id"] == reg.registration_id
        assert event["gateway_id"] == "gw-hostile"
        assert event["address"] == reg.address and event["identity"] == ""
        assert thread.gateway.stats["adoptions"] == 1


def test_deregister_of_a_registration_made_elsewhere_is_accepted_from_its_own_peer() -> None:
    sink = ListSink()
    with gateway_thread(sink=sink) as thread:
        device = Peer(thread.gateway.config.port)
        reg = stored(device)
        with_registry(thread, FakeRegistry(reg))
        reply = device.exchange(
            request(DELETE, path=[b"rd", reg.registration_id.encode()], mid=device.next_mid())
        )
        assert code_of(reply) == "2.02"
        assert thread.gateway.by_id == {}
        wait_for(lambda: bool(sink.of("deregistered")))
        assert sink.of("deregistered")[0]["registration_id"] == reg.registration_id


def test_update_from_another_address_is_refused_before_and_after_adoption() -> None:
    with gateway_thread() as thread:
        device, impostor = Peer(thread.gateway.config.port), Peer(thread.gateway.config.port)
        reg = stored(device)
        with_registry(thread, FakeRegistry(reg))
        # Knowing the id is not enough: the registry's copy names the device's address.
        assert update(impostor, reg.registration_id) == "4.03"
        assert thread.gateway.by_id == {}
        assert update(device, reg.registration_id) == "2.04"
        # A NoSec device whose NAT mapping changed is refused too; it registers again.
        assert update(impostor, reg.registration_id) == "4.03"
        assert thread.gateway.guard.counts["lwm2m.not_same_peer"] == 2
        assert thread.gateway.by_id[reg.registration_id].endpoint == "dev-1"


def test_nosec_update_for_a_dtls_registration_made_elsewhere_is_refused() -> None:
    with gateway_thread() as thread:
        device = Peer(thread.gateway.config.port)
        reg = stored(device, identity="dev-1")
        with_registry(thread, FakeRegistry(reg))
        assert update(device, reg.registration_id) == "4.03"
        assert thread.gateway.guard.counts["lwm2m.identity_mismatch"] == 1
        assert thread.gateway.by_id == {}


def test_unprovisioned_endpoint_is_not_adopted_under_provisioned_admission() -> None:
    with gateway_thread(provisioned={"someone-else"}) as thread:
        device = Peer(thread.gateway.config.port)
        reg = stored(device, endpoint="not-provisioned")
        with_registry(thread, FakeRegistry(reg))
        assert update(device, reg.registration_id) == "4.03"
        assert thread.gateway.guard.counts["lwm2m.not_provisioned"] == 1
        assert thread.gateway.by_id == {}


def test_a_registration_replaced_here_is_not_adopted_again() -> None:
    with gateway_thread() as thread:
        device = Peer(thread.gateway.config.port)
        created = device.exchange(
            request(
                POST, path=[b"rd"], query=[b"ep=dev-1", b"lt=60"], payload=b"</3/0>",
                mid=device.next_mid(),
            )
        )  # fmt: skip
        assert code_of(created) == "2.01"
        old = stored(device)  # an older registration of dev-1, still in the registry
        with_registry(thread, FakeRegistry(old))
        assert update(device, old.registration_id) == "4.04"
        assert old.registration_id not in thread.gateway.by_id


def test_incomplete_device_information_is_read_after_adoption() -> None:
    with gateway_thread() as thread:
        device = Peer(thread.gateway.config.port)
        reg = stored(device, info_complete=False, protocols=None)
        with_registry(thread, FakeRegistry(reg))
        device.send(request(POST, path=[b"rd", reg.registration_id.encode()], mid=0x4242))
        asked: set[str] = set()
        deadline = time.monotonic() + 10
        while not {"3/0/0", "3/0/3", "5/0/8"} <= asked and time.monotonic() < deadline:
            data = device.recv(1)
            if data is not None and data[1] == 1:  # a GET from the gateway: answer 4.04
                asked.add("/".join(aiocoap.Message.decode(data).opt.uri_path))
                tkl = data[0] & 0x0F
                device.send(bytes([0x60 | tkl, 0x84]) + data[2:4] + data[4 : 4 + tkl])
        assert {"3/0/0", "3/0/3", "5/0/8"} <= asked


def test_unknown_registration_id_is_404_and_looked_up_once() -> None:
    with gateway_thread() as thread:
        registry = with_registry(thread, FakeRegistry())
        peer = Peer(thread.gateway.config.port)
        unknown = secrets.token_hex(8)
        assert {update(peer, unknown) for _ in range(50)} == {"4.04"}
        assert registry.lookups == [unknown]
        assert thread.gateway.stats["adoption_negative_hits"] == 49
        # Not of the form this project's gateways hand out: never looked up.
        assert update(peer, "deadbeef") == "4.04"
        assert registry.lookups == [unknown]


def test_a_flood_of_random_registration_ids_makes_a_bounded_number_of_lookups() -> None:
    rate = 20.0
    with gateway_thread() as thread:
        thread.gateway.adoption_lookup_rate = rate
        registry = with_registry(thread, FakeRegistry())
        peer = Peer(thread.gateway.config.port)
        started = time.monotonic()
        codes = [update(peer, secrets.token_hex(8)) for _ in range(600)]
        took = time.monotonic() - started
        assert set(codes) == {"4.04", "5.03"}
        assert len(registry.lookups) <= rate + rate * took + 1, (len(registry.lookups), took)
        refused = thread.gateway.guard.counts["lwm2m.lookup_busy"]
        assert refused == codes.count("5.03") and refused >= 600 - rate - rate * took - 1
        assert len(thread.gateway._adoption.pending) == 0
        assert thread.gateway.health()["stats"]["adoption_lookups"] == len(registry.lookups)


class DownRegistry(FakeRegistry):
    def lookup(self, registration_id: str) -> admission.StoredRegistration | None:
        from django.db import OperationalError

        super().lookup(registration_id)
        raise OperationalError("connection refused")


def test_unreachable_registry_gives_503_not_404_and_is_not_remembered() -> None:
    with gateway_thread() as thread:
        registry = with_registry(thread, DownRegistry())
        peer = Peer(thread.gateway.config.port)
        reg_id = secrets.token_hex(8)
        assert update(peer, reg_id) == "5.03"
        assert update(peer, reg_id) == "5.03"  # asked again: the device keeps its registration
        assert registry.lookups == [reg_id, reg_id]
        assert thread.gateway.guard.counts["lwm2m.lookup_busy"] == 2


def test_lookup_budget_and_negative_cache_are_bounded() -> None:
    budget = admission.LookupBudget(rate=2, burst=2)
    assert [budget.take(now=0.0) for _ in range(3)] == [True, True, False]
    assert budget.take(now=0.5) and not budget.take(now=0.5)
    assert [budget.take(now=100.0) for _ in range(3)] == [True, True, False]
    cache = admission.NegativeCache(size=3, seconds=10)
    for i in range(5):
        cache.add(f"id{i}", now=0.0)
    assert len(cache) == 3 and "id0" not in cache and cache.hit("id4", now=1.0)
    assert not cache.hit("id4", now=10.0) and "id4" not in cache


# --- against the database ---------------------------------------------------------------------


class LoopThread:
    """An event loop on a daemon thread for the simulated devices, which outlive a gateway."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def db_gateway(gateway_id: str, *, port: int = 0) -> GatewayThread:
    gateway = Gateway(
        GatewayConfig(
            gateway_id=gateway_id,
            port=port,
            request_timeout=2,
            admission="provisioned",
            psk_miss_refresh_seconds=0.1,
        ),
        bus=bus_for_url("memory://"),
        sink=CeleryEventSink(),
    )
    return GatewayThread(gateway).start()


@pytest.fixture
def device_loop(transactional_db: None, eager_celery: None) -> Iterator[LoopThread]:
    Device.objects.create(endpoint="sim-00000")  # provisioned
    loop = LoopThread()
    yield loop
    loop.stop()


def start_device(loop: LoopThread, server_uri: str) -> tuple[Fleet, str]:
    """One simulated device updating every second; registered, and its registration stored."""
    fleet = Fleet(server_uri=server_uri, trust_anchors=[])
    fleet.load_or_create(fleet_spec(1, lifetime=2))
    loop.call(fleet.start())
    loop.call(fleet.wait_registered(10))
    location = fleet.devices["sim-00000"].location
    assert location is not None
    reg_id = location[1]
    wait_for(
        lambda: Device.objects.filter(
            endpoint="sim-00000", registration_id=reg_id, firmware_version="1.0.0"
        ).exists()
    )
    return fleet, reg_id


def read_through_registry() -> DeviceCommand:
    """A read of /3/0/3 sent the way the fleet side sends commands: to ``Device.gateway_id``."""
    from django.db import OperationalError

    for attempt in range(20):
        try:
            command = device_services.device_command_create(
                endpoint="sim-00000", operation="read", args={"path": "/3/0/3"}
            )
            break
        except OperationalError:
            # SQLite's shared in-memory test database locks whole tables while the gateway's
            # event thread writes the device's Updates (see conftest.wait_for).
            if attempt == 19:
                raise
            time.sleep(0.1)
    wait_for(lambda: DeviceCommand.objects.get(pk=command.pk).status == CommandStatus.SUCCEEDED)
    return DeviceCommand.objects.get(pk=command.pk)


def test_restarted_gateway_accepts_the_update_of_a_device_registered_before(
    device_loop: LoopThread,
) -> None:
    first = db_gateway("gw-a")
    fleet, reg_id = start_device(device_loop, first.gateway.config.base_uri)
    try:
        # (Read through wait_for: SQLite's test database may be locked by the event thread.)
        wait_for(
            lambda: Device.objects.filter(
                endpoint="sim-00000",
                registration_address__startswith="127.0.0.1:",
                registration_identity="",
                gateway_id="gw-a",
            ).exists()
        )
        port = first.gateway.config.port
        first.stop()
        restarted = db_gateway("gw-a", port=port)  # a new process: nothing in memory
        try:
            wait_for(lambda: reg_id in restarted.gateway.by_id, 20)
            assert restarted.gateway.stats["adoptions"] == 1
            device = fleet.devices["sim-00000"]
            assert device.events == ["registered"], "the device had to register again"
            assert device.registered.is_set()
            command = read_through_registry()
            assert command.gateway_id == "gw-a"
            assert command.result["values"]["/3/0/3"] == "1.0.0"
            wait_for(lambda: Device.objects.get(endpoint="sim-00000").registration_id == reg_id)
        finally:
            device_loop.call(fleet.stop(deregister=False))
            restarted.stop()
    finally:
        first.stop()


def test_second_gateway_accepts_an_update_for_a_registration_made_at_the_first(
    device_loop: LoopThread,
) -> None:
    first, second = db_gateway("gw-a"), db_gateway("gw-b")
    try:
        fleet, reg_id = start_device(device_loop, first.gateway.config.base_uri)
        device = fleet.devices["sim-00000"]
        device.server_uri = second.gateway.config.base_uri  # a load balancer moved its traffic
        wait_for(lambda: reg_id in second.gateway.by_id, 10)
        wait_for(lambda: Device.objects.get(endpoint="sim-00000").gateway_id == "gw-b")
        assert device.events == ["registered"]
        command = read_through_registry()  # commands follow the device to the second gateway
        assert command.gateway_id == "gw-b"
        # The first gateway's copy runs out; its expiry must not take the device offline.
        wait_for(lambda: reg_id not in first.gateway.by_id, 10)
        wait_for(
            lambda: (
                Device.objects.get(endpoint="sim-00000")
                .events.filter(kind="expired_elsewhere")
                .exists()
            )
        )
        wait_for(
            lambda: Device.objects.filter(
                endpoint="sim-00000", online=True, gateway_id="gw-b", registration_id=reg_id
            ).exists()
        )
        # The adopted registration keeps the same-peer rule.
        impostor = Peer(second.gateway.config.port)
        assert update(impostor, reg_id) == "4.03"
        device_loop.call(fleet.stop(deregister=False))
    finally:
        first.stop()
        second.stop()


def test_registry_lookup_finds_only_live_registrations(transactional_db: None) -> None:
    device_services.device_register(
        endpoint="dev-live", gateway_id="gw-a", registration_id="0123456789abcdef", lifetime=60,
        lwm2m_version="1.1", objects=["/3/0", "/5/0"], address="127.0.0.1:5700",
        root_path="/lwm2m/",
    )  # fmt: skip
    device_services.device_register(
        endpoint="dev-old", gateway_id="gw-a", registration_id="fedcba9876543210", lifetime=60,
        identity="dev-old", at=device_services.timezone.now() - device_services.dt.timedelta(
            seconds=61
        ),
    )  # fmt: skip
    live = selectors.registration_lookup("0123456789abcdef")
    assert live is not None
    assert (live.endpoint, live.address, live.identity, live.root_path) == (
        "dev-live",
        "127.0.0.1:5700",
        "",
        "/lwm2m/",
    )
    assert live.objects == ("/3/0", "/5/0") and not live.info_complete
    assert selectors.registration_lookup("fedcba9876543210") is None  # expired
    device_services.device_registration_end(
        endpoint="dev-live", registration_id="0123456789abcdef", reason="deregistered"
    )
    assert selectors.registration_lookup("0123456789abcdef") is None  # offline


def test_registration_services_store_the_peer_and_move_the_device(transactional_db: None) -> None:
    device_services.device_register(
        endpoint="dev-1", gateway_id="gw-a", registration_id="0123456789abcdef", lifetime=60,
        address="[::1]:5700", identity="dev-1",
    )  # fmt: skip
    device_services.device_registration_update(
        endpoint="dev-1", registration_id="0123456789abcdef", gateway_id="gw-b",
        address="[::1]:5701",
    )  # fmt: skip
    row = Device.objects.get(endpoint="dev-1")
    assert (row.gateway_id, row.registration_address, row.registration_identity) == (
        "gw-b",
        "[::1]:5701",
        "dev-1",
    )
    device_services.device_registration_end(
        endpoint="dev-1", registration_id="0123456789abcdef", reason="expired", gateway_id="gw-a"
    )
    assert Device.objects.get(endpoint="dev-1").online  # gw-a's copy expired, not the device's
    device_services.device_registration_end(
        endpoint="dev-1", registration_id="0123456789abcdef", reason="expired", gateway_id="gw-b"
    )
    assert not Device.objects.get(endpoint="dev-1").online
