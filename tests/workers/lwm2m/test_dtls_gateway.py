"""DTLS with per-device PSKs, against the real database: keys are provisioned with
``device_psk_set`` (encrypted at rest) and the gateway loads them from ``DevicePSK``.

Each attack test names the attack; each shows the refusal (the CoAP code or the failed handshake)
and the log line the operator sees. The gateway runs on its own thread and loop, so these tests
use ``transactional_db``; clients run on the gateway's loop through ``GatewayThread.call``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import aiocoap
import pytest
from aiocoap import resource
from aiocoap.numbers.codes import Code

from campaigns import device_services
from campaigns.models import CommandStatus, Device, DeviceCommand, DevicePSK
from tests.workers.lwm2m.conftest import (
    DictFirmware,
    ListSink,
    fleet_spec,
    make_release,
    wait_for,
)
from workers.lwm2m import content
from workers.lwm2m.bus import bus_for_url
from workers.lwm2m.dtls import dtls_missing
from workers.lwm2m.errors import UnsupportedProtocolError
from workers.lwm2m.gateway import CeleryEventSink, Gateway, GatewayConfig, GatewayThread
from workers.lwm2m.simulator import Fleet

pytestmark = pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))

KEY_A = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
KEY_B = bytes.fromhex("f0e0d0c0b0a090807060504030201000")
LINKS = b"</1/0>,</3/0>,</5/0>"


@pytest.fixture
def start_gateway(transactional_db: None) -> Iterator[Callable[..., GatewayThread]]:
    """Start a gateway with a DTLS listener on a free port; PSKs come from the database."""
    threads: list[GatewayThread] = []

    def start(*, sink: Any = None, firmware: Any = None, **config: Any) -> GatewayThread:
        gateway = Gateway(
            GatewayConfig(
                **{
                    "gateway_id": "gw-dtls",
                    "port": 0,
                    "dtls_host": "127.0.0.1",
                    "dtls_port": 0,
                    "request_timeout": 3,
                    "fw_poll_seconds": 0.3,
                    "fw_update_timeout": 20,
                    "dtls_handshake_timeout": 1,
                    "psk_miss_refresh_seconds": 0.1,
                    "admission": "open",
                    **config,
                }
            ),
            bus=bus_for_url("memory://"),
            sink=sink or ListSink(),
            firmware=firmware or DictFirmware(),
        )
        thread = GatewayThread(gateway).start()
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.stop()


async def dtls_context(base: str, identity: str, key: bytes, site: Any = None) -> aiocoap.Context:
    """A CoAP endpoint that speaks DTLS-PSK to ``base`` as ``identity``."""
    context = await aiocoap.Context.create_server_context(site, transports=["tinydtls"])
    context.client_credentials.load_from_dict(
        {f"{base}/*": {"dtls": {"psk": key, "client-identity": identity.encode()}}}
    )
    return context


async def send(
    context: aiocoap.Context, code: Code, uri: str, payload: bytes = b"", timeout: float = 3
) -> aiocoap.Message:
    message = aiocoap.Message(code=code, uri=uri, payload=payload)
    if payload:
        message.opt.content_format = content.CT_LINK_FORMAT
    return await asyncio.wait_for(context.request(message).response, timeout)


def register_uri(base: str, endpoint: str) -> str:
    return f"{base}/rd?ep={endpoint}&lt=60&lwm2m=1.1&b=U"


def refusal(response: aiocoap.Message) -> str:
    return response.payload.decode().partition(":")[0]


# --- end to end -----------------------------------------------------------------------------------


@pytest.fixture
def acme_class(transactional_db: None) -> Any:
    from manifests.models import DeviceClass, Vendor
    from tests.workers.lwm2m.conftest import CLASS_ID, CLASS_NAME, VENDOR_DOMAIN, VENDOR_ID

    vendor = Vendor.objects.create(name="Acme Sensors", domain=VENDOR_DOMAIN, uuid=VENDOR_ID)
    return DeviceClass.objects.create(vendor=vendor, name=CLASS_NAME, uuid=CLASS_ID)


def test_dtls_device_registers_and_completes_a_firmware_update(
    start_gateway: Callable[..., GatewayThread],
    eager_celery: None,
    acme_class: Any,
    signing_key: Any,
) -> None:
    release = make_release(signing_key)
    firmware = DictFirmware(
        envelopes={release.digest: release.envelope},
        images={hashlib.sha256(release.payload).hexdigest(): release.payload},
    )
    thread = start_gateway(sink=CeleryEventSink(), firmware=firmware)
    gateway = thread.gateway
    fleet = Fleet(server_uri=gateway.config.dtls_base_uri, trust_anchors=[signing_key.public_key()])
    fleet.load_or_create(fleet_spec(1, prefix="dtls", dtls=True))
    for endpoint, key in fleet.psks().items():
        device_services.device_psk_set(endpoint=endpoint, key=key)
    # Encrypted at rest: the stored bytes are a token, not the key.
    stored = bytes(DevicePSK.objects.get(identity="dtls-00000").key_encrypted)
    assert fleet.psks()["dtls-00000"] not in stored
    try:
        thread.call(fleet.start())
        thread.call(fleet.wait_registered(10))
        wait_for(lambda: Device.objects.filter(endpoint="dtls-00000", online=True).exists())
        wait_for(lambda: Device.objects.get(endpoint="dtls-00000").fw_protocols == [0, 1])
        assert gateway.by_endpoint["dtls-00000"].identity == "dtls-00000"
        command = device_services.device_command_create(
            endpoint="dtls-00000", operation="fw_update", args={"manifest_digest": release.digest}
        )
        wait_for(
            lambda: DeviceCommand.objects.get(pk=command.pk).status == CommandStatus.SUCCEEDED, 20
        )
        wait_for(lambda: Device.objects.get(endpoint="dtls-00000").firmware_version == "1.1.0")
        device = fleet.devices["dtls-00000"]
        assert device.state.version == "1.1.0"
        # The Package URI was the gateway's coaps address, although the device also lists coap.
        written = [e for e in device.events if e.startswith("write_uri")]
        assert written == [f"write_uri '{gateway.config.dtls_base_uri}/fw/m/{release.digest}'"]
        assert gateway.config.dtls_base_uri.startswith("coaps://127.0.0.1:")
        # Nothing of it went over plain CoAP: the device has no plain CoAP socket at all.
        assert device.port is None
    finally:
        thread.call(fleet.stop(deregister=False))


def test_fw_update_is_refused_for_dtls_device_without_coaps_support(
    start_gateway: Callable[..., GatewayThread], signing_key: Any
) -> None:
    release = make_release(signing_key)
    thread = start_gateway()
    fleet = Fleet(
        server_uri=thread.gateway.config.dtls_base_uri, trust_anchors=[signing_key.public_key()]
    )
    fleet.load_or_create(fleet_spec(2, prefix="dtls", dtls=True))
    fleet.devices["dtls-00001"].state.protocols = [0]  # plain CoAP downloads only
    for endpoint, key in fleet.psks().items():
        device_services.device_psk_set(endpoint=endpoint, key=key)
    sink = thread.gateway.sink
    try:
        thread.call(fleet.start())
        thread.call(fleet.wait_registered(10))
        wait_for(lambda: len(sink.of("device_info")) == 2)
        with pytest.raises(UnsupportedProtocolError, match="not 'coaps'"):
            thread.call(
                thread.gateway.run_operation(
                    "dtls-00001", "fw_update", {"manifest_digest": release.digest}
                )
            )
        # A DTLS device that supports both is still never sent to a plaintext URI.
        with pytest.raises(UnsupportedProtocolError, match="registered over DTLS"):
            thread.call(
                thread.gateway.run_operation(
                    "dtls-00000", "write_uri", {"uri": f"{thread.gateway.config.base_uri}/x"}
                )
            )
        assert fleet.devices["dtls-00000"].fw.package_uri == ""
    finally:
        thread.call(fleet.stop(deregister=False))


# --- handshake refusals ---------------------------------------------------------------------------


def test_wrong_key_handshake_is_refused_and_logged(
    start_gateway: Callable[..., GatewayThread], caplog: pytest.LogCaptureFixture
) -> None:
    device_services.device_psk_set(endpoint="dev-w", key=KEY_A)
    thread = start_gateway()
    base = thread.gateway.config.dtls_base_uri

    async def attempt() -> None:
        context = await dtls_context(base, "dev-w", KEY_B)
        try:
            with pytest.raises((TimeoutError, aiocoap.error.Error)):
                await send(context, Code.POST, register_uri(base, "dev-w"), LINKS, timeout=2.5)
        finally:
            await context.shutdown()

    with caplog.at_level(logging.INFO, logger="workers.lwm2m"):
        thread.call(attempt())
        wait_for(lambda: "dropped after 1 s" in caplog.text, 5)
    assert "dev-w" not in thread.gateway.by_endpoint
    # What the wire showed, not a guess: the client's Finished failed authentication.
    assert (
        "DTLS handshake from 127.0.0.1:" in caplog.text
        and "for identity 'dev-w' failed, bad_record_mac (no alert sent" in caplog.text
        and "its Finished does not authenticate under the key stored for 'dev-w'" in caplog.text
    )
    assert "wrong key?" not in caplog.text


def test_unknown_identity_is_refused_then_admitted_once_provisioned(
    start_gateway: Callable[..., GatewayThread], caplog: pytest.LogCaptureFixture
) -> None:
    thread = start_gateway()
    base = thread.gateway.config.dtls_base_uri

    async def register() -> aiocoap.Message:
        context = await dtls_context(base, "ghost", KEY_A)
        try:
            return await send(context, Code.POST, register_uri(base, "ghost"), LINKS)
        finally:
            await context.shutdown()

    with (
        caplog.at_level(logging.WARNING, logger="workers.lwm2m.dtls"),
        pytest.raises(aiocoap.error.Error),
    ):
        thread.call(register())
    assert "failed, sent fatal alert internal_error (80): unknown PSK identity 'ghost'" in (
        caplog.text
    )
    assert "ghost" not in thread.gateway.by_endpoint
    # Provisioned after the gateway started: the miss brought the cache refresh forward.
    device_services.device_psk_set(endpoint="ghost", key=KEY_A)
    wait_for(lambda: thread.gateway.psk_cache is not None and thread.gateway.psk_cache.has("ghost"))
    assert thread.call(register()).code == Code.CREATED
    assert thread.gateway.by_endpoint["ghost"].identity == "ghost"


# --- identity binding -----------------------------------------------------------------------------


def test_identity_registering_another_endpoint_is_forbidden(
    start_gateway: Callable[..., GatewayThread], caplog: pytest.LogCaptureFixture
) -> None:
    device_services.device_psk_set(endpoint="dev-a", key=KEY_A)
    device_services.device_psk_set(endpoint="dev-b", key=KEY_B)
    thread = start_gateway()
    base = thread.gateway.config.dtls_base_uri

    async def attack() -> aiocoap.Message:
        context = await dtls_context(base, "dev-a", KEY_A)
        try:
            return await send(context, Code.POST, register_uri(base, "dev-b"), LINKS)
        finally:
            await context.shutdown()

    with caplog.at_level(logging.WARNING, logger="workers.lwm2m.gateway"):
        response = thread.call(attack())
    assert response.code == Code.FORBIDDEN
    assert refusal(response) == "lwm2m.identity_mismatch"
    assert "dev-b" not in thread.gateway.by_endpoint
    assert "DTLS identity 'dev-a' may not register endpoint 'dev-b'" in caplog.text


def test_identity_updating_or_deleting_another_registration_is_forbidden(
    start_gateway: Callable[..., GatewayThread], caplog: pytest.LogCaptureFixture
) -> None:
    device_services.device_psk_set(endpoint="dev-a", key=KEY_A)
    device_services.device_psk_set(endpoint="dev-b", key=KEY_B)
    thread = start_gateway()
    gateway = thread.gateway
    base = gateway.config.dtls_base_uri

    async def scenario() -> dict[str, Code]:
        victim = await dtls_context(base, "dev-b", KEY_B)
        attacker = await dtls_context(base, "dev-a", KEY_A)
        plain = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            created = await send(victim, Code.POST, register_uri(base, "dev-b"), LINKS)
            location = "/".join(created.opt.location_path)
            await send(attacker, Code.POST, register_uri(base, "dev-a"), LINKS)
            codes = {
                "update by A": (await send(attacker, Code.POST, f"{base}/{location}")).code,
                "delete by A": (await send(attacker, Code.DELETE, f"{base}/{location}")).code,
                "update by NoSec": (
                    await send(plain, Code.POST, f"{gateway.config.base_uri}/{location}")
                ).code,
                "delete by NoSec": (
                    await send(plain, Code.DELETE, f"{gateway.config.base_uri}/{location}")
                ).code,
                "update by B": (await send(victim, Code.POST, f"{base}/{location}")).code,
            }
            codes["B still registered"] = (
                Code.CONTENT if gateway.by_id.get(created.opt.location_path[1]) else Code.NOT_FOUND
            )
            return codes
        finally:
            for context in (victim, attacker, plain):
                await context.shutdown()

    with caplog.at_level(logging.WARNING, logger="workers.lwm2m.gateway"):
        codes = thread.call(scenario())
    assert codes == {
        "update by A": Code.FORBIDDEN,
        "delete by A": Code.FORBIDDEN,
        "update by NoSec": Code.FORBIDDEN,
        "delete by NoSec": Code.FORBIDDEN,
        "update by B": Code.CHANGED,
        "B still registered": Code.CONTENT,
    }
    assert "update of 'dev-b''s registration from DTLS identity 'dev-a' refused" in caplog.text
    assert "de-registration of 'dev-b''s registration from a NoSec peer refused" in caplog.text


class _HeldResource(resource.Resource):
    """/3/0/0 of a device: answers at once until armed, then holds the answer until released."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.seen: asyncio.Future[tuple[bytes, int]] | None = None
        self.release = asyncio.Event()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        if self.armed and self.seen is not None and not self.seen.done():
            self.seen.set_result((request.token, request.mid))
            await self.release.wait()
        return aiocoap.Message(code=Code.CONTENT, payload=b"genuine", content_format=0)


def test_response_from_another_devices_session_is_not_accepted(
    start_gateway: Callable[..., GatewayThread],
) -> None:
    device_services.device_psk_set(endpoint="dev-a", key=KEY_A)
    device_services.device_psk_set(endpoint="dev-b", key=KEY_B)
    thread = start_gateway()
    gateway = thread.gateway
    base = gateway.config.dtls_base_uri

    async def scenario() -> Any:
        held = _HeldResource()
        site = resource.Site()
        site.add_resource(["3", "0", "0"], held)
        device_a = await dtls_context(base, "dev-a", KEY_A, site)
        device_b = await dtls_context(base, "dev-b", KEY_B)
        try:
            # aiocoap keeps a client's DTLS session only while something references it.
            a_session = (await send(device_a, Code.POST, register_uri(base, "dev-a"), LINKS)).remote
            b_registered = await send(device_b, Code.POST, register_uri(base, "dev-b"), LINKS)
            b_session = b_registered.remote
            held.seen = asyncio.get_running_loop().create_future()
            held.armed = True
            read = asyncio.ensure_future(gateway.read(gateway.by_endpoint["dev-a"], (3, 0, 0)))
            token, mid = await asyncio.wait_for(held.seen, 3)
            # Device B answers A's request over its own, authenticated session: piggybacked on
            # an ACK with A's message id, and as a separate response with A's token.
            for mtype, forged_mid in ((aiocoap.ACK, mid), (aiocoap.NON, mid ^ 1)):
                forged = aiocoap.Message(code=Code.CONTENT, payload=b"forged", content_format=0)
                forged.mtype, forged.mid, forged.token = mtype, forged_mid, token
                b_session.send(forged.encode())
            await asyncio.sleep(0.3)
            assert not read.done()
            held.release.set()
            result = await asyncio.wait_for(read, 5)
            assert gateway.by_endpoint["dev-a"].remote.authenticated_identity == "dev-a"
            del a_session
            return result
        finally:
            await device_a.shutdown()
            await device_b.shutdown()

    assert thread.call(scenario()) == {(3, 0, 0): "genuine"}


# --- NoSec policy ---------------------------------------------------------------------------------


def test_plain_registration_is_refused_when_nosec_is_disabled(
    start_gateway: Callable[..., GatewayThread], caplog: pytest.LogCaptureFixture
) -> None:
    device_services.device_psk_set(endpoint="dev-a", key=KEY_A)
    thread = start_gateway(accept_nosec=False)
    gateway = thread.gateway

    async def scenario() -> tuple[aiocoap.Message, aiocoap.Message]:
        plain = await aiocoap.Context.create_client_context(transports=["udp6"])
        secure = await dtls_context(gateway.config.dtls_base_uri, "dev-a", KEY_A)
        try:
            refused = await send(
                plain, Code.POST, register_uri(gateway.config.base_uri, "plain-1"), LINKS
            )
            accepted = await send(
                secure, Code.POST, register_uri(gateway.config.dtls_base_uri, "dev-a"), LINKS
            )
            return refused, accepted
        finally:
            await plain.shutdown()
            await secure.shutdown()

    with caplog.at_level(logging.WARNING, logger="workers.lwm2m.gateway"):
        refused, accepted = thread.call(scenario())
    assert refused.code == Code.FORBIDDEN and refusal(refused) == "lwm2m.nosec_refused"
    assert "plain-1" not in gateway.by_endpoint
    assert "accepts DTLS (coaps) registrations only" in caplog.text
    assert accepted.code == Code.CREATED


def test_plain_registration_of_an_endpoint_with_a_psk_is_refused(
    start_gateway: Callable[..., GatewayThread],
) -> None:
    device_services.device_psk_set(endpoint="dev-a", key=KEY_A)
    thread = start_gateway()  # NoSec accepted
    gateway = thread.gateway

    async def scenario() -> tuple[aiocoap.Message, aiocoap.Message]:
        plain = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            hijack = await send(
                plain, Code.POST, register_uri(gateway.config.base_uri, "dev-a"), LINKS
            )
            other = await send(
                plain, Code.POST, register_uri(gateway.config.base_uri, "plain-2"), LINKS
            )
            return hijack, other
        finally:
            await plain.shutdown()

    hijack, other = thread.call(scenario())
    assert hijack.code == Code.FORBIDDEN and refusal(hijack) == "lwm2m.identity_mismatch"
    assert "dev-a" not in gateway.by_endpoint
    assert other.code == Code.CREATED and gateway.by_endpoint["plain-2"].identity is None
