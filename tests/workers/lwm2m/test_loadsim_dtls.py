"""The load simulator over DTLS (``LoadFleetSpec.psk_seed``, ``--dtls``) against the real
gateway's DTLS listener: keys derived from the seed and provisioned through ``device_psk_set``,
the gateway's identity binding, and the handshake's flight timers (RFC 6347 4.2.4)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from campaigns import device_services
from tests.campaigns.support import Catalog, build_catalog, wait_for
from tests.workers.lwm2m.test_loadsim import LoopThread
from workers.lwm2m import loaddtls, loadsim
from workers.lwm2m.bus import bus_for_url
from workers.lwm2m.dtls import dtls_missing
from workers.lwm2m.gateway import (
    CeleryEventSink,
    DjangoFirmwareSource,
    Gateway,
    GatewayConfig,
    GatewayThread,
)

pytestmark = pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))

SEED = "d71500" * 8
OTHER_SEED = "0badc0de" * 4


@pytest.fixture
def catalog(db: None, django_user_model: Any) -> Catalog:
    return build_catalog(django_user_model)


@pytest.fixture
def start_gateway(transactional_db: None, eager_celery: None) -> Iterator[Any]:
    """Start the gateway (after the test provisioned its keys: the key cache loads them at
    start; a key provisioned later is found on the first miss, after a refused handshake)."""
    threads: list[GatewayThread] = []

    def start() -> Gateway:
        gw = _gateway()
        threads.append(GatewayThread(gw).start())
        return gw

    yield start
    for thread in threads:
        thread.stop()


def _gateway() -> Gateway:
    return Gateway(
        GatewayConfig(
            gateway_id="gw-loadsim-dtls",
            port=0,
            dtls_host="127.0.0.1",
            dtls_port=0,
            accept_nosec=False,
            fw_poll_seconds=0.3,
            request_timeout=5,
            dtls_handshake_timeout=10,
            psk_miss_refresh_seconds=0.1,
            admission="provisioned",
        ),
        bus=bus_for_url("memory://"),
        sink=CeleryEventSink(),
        firmware=DjangoFirmwareSource(),
    )


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


def _spec(catalog: Catalog, server: str, count: int, prefix: str) -> loadsim.LoadFleetSpec:
    return loadsim.LoadFleetSpec(
        server=server,
        count=count,
        vendor_id=str(catalog.vendor.uuid),
        class_id=str(catalog.thermo.uuid),
        trust_anchors_pem=[],
        prefix=prefix,
        psk_seed=SEED,
    )


def _provision(spec: loadsim.LoadFleetSpec, seed: str) -> None:
    for index in range(spec.first, spec.first + spec.count):
        endpoint = f"{spec.prefix}-{index:06d}"
        device_services.device_psk_set(endpoint=endpoint, key=loaddtls.psk_for(seed, endpoint))


def test_psk_is_derived_per_endpoint_and_fits_tinydtls() -> None:
    a, b = loaddtls.psk_for(SEED, "load-000000"), loaddtls.psk_for(SEED, "load-000001")
    assert len(a) == loaddtls.PSK_BYTES == 16 and a != b
    assert loaddtls.psk_for(OTHER_SEED, "load-000000") != a
    assert loaddtls.psk_for(SEED, "load-000000") == a  # the provisioning side computes the same


def test_dtls_spec_needs_a_coaps_server_and_a_hex_seed() -> None:
    fields: dict[str, Any] = {
        "count": 1,
        "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
        "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
        "trust_anchors_pem": [],
    }
    with pytest.raises(ValueError, match="coaps://"):
        loadsim.LoadFleetSpec(server="coap://127.0.0.1:5683", psk_seed=SEED, **fields)
    with pytest.raises(ValueError, match="coap://"):
        loadsim.LoadFleetSpec(server="coaps://127.0.0.1:5684", **fields)
    with pytest.raises(ValueError):
        loadsim.LoadFleetSpec(server="coaps://127.0.0.1:5684", psk_seed="not hex", **fields)


def test_load_fleet_registers_over_dtls_under_its_own_identities(
    catalog: Catalog, start_gateway: Any, loop: LoopThread
) -> None:
    _provision(_spec(catalog, "coaps://127.0.0.1", 20, "ldtls"), SEED)
    gateway = start_gateway()
    spec = _spec(catalog, gateway.config.dtls_base_uri, 20, "ldtls")
    fleet = loadsim.LoadFleet(spec)
    try:
        loop.call(fleet.start())
        loop.call(fleet.wait_registered(30), timeout=40)
        figures = fleet.dtls_figures()
        assert figures["handshakes"] == figures["connected"] == 20
        assert figures["restarts"] == 0
        # Each registration arrived on a session authenticated as that endpoint.
        wait_for(lambda: len(gateway.by_endpoint) == 20)
        assert all(
            gateway.by_endpoint[f"ldtls-{i:06d}"].identity == f"ldtls-{i:06d}" for i in range(20)
        )
        assert gateway.dtls is not None and gateway.dtls.handshakes.get("completed") == 20
    finally:
        loop.call(fleet.stop())


def test_load_device_with_a_wrong_psk_does_not_get_in(
    catalog: Catalog, start_gateway: Any, loop: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    # The gateway holds keys the devices do not have.
    _provision(_spec(catalog, "coaps://127.0.0.1", 2, "lwrong"), OTHER_SEED)
    gateway = start_gateway()
    spec = _spec(catalog, gateway.config.dtls_base_uri, 2, "lwrong")
    fleet = loadsim.LoadFleet(spec)
    try:
        with caplog.at_level(logging.WARNING, logger="workers.lwm2m"):
            loop.call(fleet.start())
            wait_for(
                lambda: (
                    "its Finished does not authenticate under the key stored for "
                    "'lwrong-000001'" in caplog.text
                ),
                20,
            )
        assert fleet.registered() == 0
        assert not gateway.by_endpoint
        assert fleet.dtls_figures()["handshakes"] == 0
    finally:
        loop.call(fleet.stop())


def test_lost_client_hello_is_sent_again_after_one_second_not_after_a_restart(
    catalog: Catalog, start_gateway: Any, loop: LoopThread
) -> None:
    """Each device's first datagram (its ClientHello) is lost: the flight timer (1 s) sends it
    again on the same handshake; nothing waits for a CoAP timeout or starts over."""
    _provision(_spec(catalog, "coaps://127.0.0.1", 5, "llost"), SEED)
    gateway = start_gateway()
    spec = _spec(catalog, gateway.config.dtls_base_uri, 5, "llost")
    fleet = loadsim.LoadFleet(spec)
    lost: list[bytes] = []
    for device in fleet.devices:
        assert device.link is not None
        send = device.link.send_raw
        first = [True]

        def lossy(data: bytes, send: Any = send, first: list[bool] = first) -> None:
            if first[0]:
                first[0] = False
                lost.append(data)
                return
            send(data)

        device.link.send_raw = lossy
    try:
        began = time.monotonic()
        loop.call(fleet.start())
        loop.call(fleet.wait_registered(30), timeout=40)
        took = time.monotonic() - began
        figures = fleet.dtls_figures()
        assert len(lost) == 5 and all(d[0] == 22 for d in lost)  # handshake records
        assert figures["retransmissions"] >= 5
        assert figures["restarts"] == 0 and figures["handshakes"] == 5
        print(f"5 devices in {took:.2f} s with their first ClientHello lost")
    finally:
        loop.call(fleet.stop())
