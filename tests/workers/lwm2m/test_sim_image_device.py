"""Simulated devices of the ``image`` delivery profile (Zephyr's LwM2M client over MCUboot), and
pushed packages (Block1 writes of /5/0/0) for both profiles, on loopback.

Images come from upstream imgtool, signed with a bootloader key made by ``imgtool keygen``.
Pulls go through the gateway's current ``fw_update`` with an explicit ``uri`` (the image path
``/fw/i/<sha256>``); pushes and resets are CoAP requests straight to the device.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from manifests import suit
from manifests.images import imgtool
from tests.workers.lwm2m.conftest import (
    CLASS_ID,
    VENDOR_ID,
    DictFirmware,
    Harness,
    eventually,
    make_release,
    run_with_fleet,
)
from workers.lwm2m import content
from workers.lwm2m.errors import DeviceOperationError
from workers.lwm2m.object5 import DeliveryMethod, FwResult, FwState
from workers.lwm2m.simulator import DeviceState, Faults, FleetSpec, SimulatedDevice

EP = "sim-00000"
PAYLOAD = (b"thermo-v3 firmware\n" * 400)[:6000]


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """No Django settings needed: firmware is served from a dict."""


@dataclasses.dataclass(frozen=True)
class Images:
    public_pem: str
    by_name: dict[str, bytes]

    def __getitem__(self, name: str) -> bytes:
        return self.by_name[name]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    tmp = tmp_path_factory.mktemp("boot")
    key = imgtool.keygen(tmp / "boot.pem")
    rogue = imgtool.keygen(tmp / "rogue.pem")
    ids = {"vendor_id": str(VENDOR_ID), "class_id": str(CLASS_ID)}

    def build(version: str, counter: int | None, *, key_path: Path = key, **kw: Any) -> bytes:
        args = {**ids, **kw}
        return imgtool.build_image(
            PAYLOAD, version=version, security_counter=counter, key_path=key_path, **args
        )

    good = build("1.1.0", 2)
    body = imgtool.DEFAULT_HEADER_SIZE + 10
    by_name = {
        "good": good,
        "good_build": build("1.1.0+3", 2),
        "tampered": good[:body] + bytes([good[body] ^ 1]) + good[body + 1 :],
        "wrong_key": build("1.1.0", 2, key_path=rogue),
        "older_version": build("0.9.0", 2),
        "lower_counter": build("1.2.0", 0),
        "no_counter": build("1.2.0", None),
        "other_class": build("1.1.0", 2, class_id=str(suit.class_id(VENDOR_ID, "thermo-v1"))),
        "not_mcuboot": b"\x84\x58" + bytes(4000),
    }
    return Images(imgtool.public_key_pem(key).decode(), by_name)


def _firmware(images: Images) -> DictFirmware:
    return DictFirmware(images={hashlib.sha256(b).hexdigest(): b for b in images.by_name.values()})


def _run(
    images: Images,
    scenario: Callable[[Harness], Awaitable[None]],
    *,
    faults: Faults | None = None,
    firmware: DictFirmware | None = None,
    **spec: Any,
) -> None:
    run_with_fleet(
        scenario,
        count=1,
        anchors=[],
        firmware=firmware or _firmware(images),
        faults={EP: faults} if faults else None,
        spec_kwargs={"delivery": "image", "bootloader_key": images.public_pem, **spec},
    )


async def _rebooted(h: Harness, times: int = 1) -> None:
    """Until the gateway has read the device's information after its ``times``-th reboot."""
    await eventually(lambda: len(h.sink.of("device_info")) >= 1 + times)


async def _pull(h: Harness, image: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(image).hexdigest()
    return await h.gateway.run_operation(
        EP,
        "fw_update",
        {"manifest_digest": digest, "uri": f"{h.gateway.config.base_uri}/fw/i/{digest}"},
    )


# --- CoAP straight to the device ------------------------------------------------------------


def _device_uri(h: Harness, path: str) -> str:
    device = h.fleet.devices[EP]
    return f"coap://{device.host}:{device.port}/{path.lstrip('/')}"


async def _request(h: Harness, message: aiocoap.Message) -> aiocoap.Message:
    client = await aiocoap.Context.create_client_context()
    try:
        return await asyncio.wait_for(
            client.request(message, handle_blockwise=False).response, timeout=5
        )
    finally:
        await client.shutdown()


async def _read(h: Harness, path: str) -> str:
    response = await _request(h, aiocoap.Message(code=Code.GET, uri=_device_uri(h, path)))
    assert response.code == Code.CONTENT, response
    return response.payload.decode()


async def _write_uri(h: Harness, uri: str) -> aiocoap.Message:
    return await _request(
        h,
        aiocoap.Message(
            code=Code.PUT,
            uri=_device_uri(h, "5/0/1"),
            payload=uri.encode(),
            content_format=content.CT_TEXT,
        ),
    )


async def _push_block(
    h: Harness, data: bytes, *, num: int, szx: int, size1: int | None = None
) -> aiocoap.Message:
    size = 1 << (szx + 4)
    chunk = data[num * size : (num + 1) * size]
    message = aiocoap.Message(
        code=Code.PUT,
        uri=_device_uri(h, "5/0/0"),
        payload=chunk,
        content_format=content.CT_OPAQUE,
    )
    message.opt.block1 = BlockOption.BlockwiseTuple(num, (num + 1) * size < len(data), szx)
    if size1 is not None:
        message.opt.size1 = size1
    return await _request(h, message)


async def _push(h: Harness, data: bytes, *, szx: int) -> list[aiocoap.Message]:
    size = 1 << (szx + 4)
    blocks = (len(data) + size - 1) // size
    return [
        await _push_block(h, data, num=n, szx=szx, size1=len(data) if n == 0 else None)
        for n in range(blocks)
    ]


async def _execute_update(h: Harness) -> aiocoap.Message:
    return await _request(h, aiocoap.Message(code=Code.POST, uri=_device_uri(h, "5/0/2")))


# --- pull through the gateway ---------------------------------------------------------------


def test_pulled_good_image_installs_confirms_and_reports_the_header_version(
    images: Images,
) -> None:
    async def scenario(h: Harness) -> None:
        outcome = await _pull(h, images["good"])
        assert outcome["phase"] == "succeeded" and outcome["result"] == FwResult.SUCCESS
        device = h.fleet.devices[EP]
        assert device.state.version == "1.1.0"
        assert device.state.security_counter == 2  # raised once the image was confirmed
        assert device.boots == 1 and device.slot is None
        # The update ends as soon as a read shows it ended, which may come before the device's
        # own record of its new registration.
        await eventually(lambda: device.events[-2:] == ["booted 1.1.0", "registered"])
        await eventually(
            lambda: any(e["firmware_version"] == "1.1.0" for e in h.sink.of("device_info"))
        )

    _run(images, scenario)


def test_build_number_is_part_of_the_reported_version(images: Images) -> None:
    async def scenario(h: Harness) -> None:
        await _pull(h, images["good_build"])
        assert h.fleet.devices[EP].state.version == "1.1.0+3"
        await _rebooted(h)
        assert h.sink.of("device_info")[-1]["firmware_version"] == "1.1.0+3"

    _run(images, scenario)


@pytest.mark.parametrize(
    ("image", "faults", "spec", "expected", "event"),
    [
        ("tampered", None, {}, FwResult.INTEGRITY_CHECK_FAILURE, "refused image.hash_mismatch"),
        ("wrong_key", None, {}, FwResult.INTEGRITY_CHECK_FAILURE, "refused image.key_mismatch"),
        (
            "good",
            Faults(digest_mismatch=True),
            {},
            FwResult.INTEGRITY_CHECK_FAILURE,
            "refused image.hash_mismatch",
        ),
        ("older_version", None, {}, FwResult.UPDATE_FAILED, "bootloader refused: version"),
        (
            "lower_counter",
            None,
            {},
            FwResult.UPDATE_FAILED,
            "bootloader refused: security counter",
        ),
        ("no_counter", None, {}, FwResult.UPDATE_FAILED, "bootloader refused: no security"),
        ("other_class", None, {}, FwResult.UPDATE_FAILED, "bootloader refused: class UUID"),
        ("good", Faults(wrong_class=True), {}, FwResult.UPDATE_FAILED, "bootloader refused"),
        ("good", Faults(boot_fail=True), {}, FwResult.UPDATE_FAILED, "boot failed, reverted"),
        (
            "not_mcuboot",
            None,
            {},
            FwResult.UNSUPPORTED_PACKAGE_TYPE,
            "refused device.not_mcuboot",
        ),
        ("good", None, {"slot_size": 4096}, FwResult.NOT_ENOUGH_FLASH, "refused device.no_space"),
        ("good", Faults(no_space=True), {}, FwResult.NOT_ENOUGH_FLASH, "refused device.no_space"),
        ("good", Faults(download_drop=True), {}, FwResult.CONNECTION_LOST, "download failed"),
    ],
    ids=[
        "tampered-image",
        "signed-by-another-key",
        "flash-corruption",
        "downgrade-by-version",
        "downgrade-by-security-counter",
        "no-security-counter",
        "another-class-uuid",
        "device-of-another-class",
        "boot-fault-reverts",
        "not-an-mcuboot-image",
        "image-larger-than-slot",
        "no-space-fault",
        "link-drop",
    ],
)
def test_refused_image_is_reported_with_its_update_result_and_the_old_image_stays(
    images: Images,
    image: str,
    faults: Faults | None,
    spec: dict[str, Any],
    expected: FwResult,
    event: str,
) -> None:
    async def scenario(h: Harness) -> None:
        with pytest.raises(DeviceOperationError) as info:
            await _pull(h, images[image])
        assert info.value.result["result"] == expected  # type: ignore[attr-defined]
        device = h.fleet.devices[EP]
        assert device.fw.state is FwState.IDLE and device.fw.result is expected
        assert device.state.version == "1.0.0"
        assert device.state.security_counter == 1
        assert any(e.startswith(event) for e in device.events), device.events
        assert device.slot is None
        if expected is FwResult.UPDATE_FAILED:
            # It rebooted and came back on the old image: registered again, reporting 1.0.0.
            assert device.boots == 1
            await _rebooted(h)
            assert h.sink.of("device_info")[-1]["firmware_version"] == "1.0.0"

    _run(images, scenario, faults=faults, **spec)


def test_without_downgrade_prevention_an_older_image_installs(images: Images) -> None:
    async def scenario(h: Harness) -> None:
        outcome = await _pull(h, images["older_version"])
        assert outcome["result"] == FwResult.SUCCESS
        assert h.fleet.devices[EP].state.version == "0.9.0"
        await _rebooted(h)

    _run(images, scenario, downgrade_prevention=False)


def test_same_version_reinstall_is_not_a_downgrade(images: Images) -> None:
    async def scenario(h: Harness) -> None:
        await _pull(h, images["good"])
        outcome = await _pull(h, images["good"])
        assert outcome["result"] == FwResult.SUCCESS
        assert h.fleet.devices[EP].boots == 2
        await _rebooted(h, 2)

    _run(images, scenario)


# --- push (Block1 writes of /5/0/0) -----------------------------------------------------------


@pytest.mark.parametrize(("szx", "block_size"), [(5, 512), (6, 1024)])
def test_pushed_image_downloads_block_by_block_then_update_installs_it(
    images: Images, szx: int, block_size: int
) -> None:
    image = images["good"]

    async def scenario(h: Harness) -> None:
        first = await _push_block(h, image, num=0, szx=szx, size1=len(image))
        assert first.code == Code.CONTINUE
        assert first.opt.block1 == (0, True, szx)
        assert await _read(h, "5/0/3") == str(int(FwState.DOWNLOADING))
        size = block_size
        for num in range(1, (len(image) + size - 1) // size):
            response = await _push_block(h, image, num=num, szx=szx)
            more = (num + 1) * size < len(image)
            assert response.code == (Code.CONTINUE if more else Code.CHANGED)
            assert response.opt.block1 == (num, more, szx)
        assert await _read(h, "5/0/3") == str(int(FwState.DOWNLOADED))
        assert h.fleet.devices[EP].slot == image
        assert (await _execute_update(h)).code == Code.CHANGED
        device = h.fleet.devices[EP]
        await eventually(
            lambda: device.fw.result is FwResult.SUCCESS and device.registered.is_set()
        )
        assert await _read(h, "5/0/3") == str(int(FwState.IDLE))
        assert await _read(h, "5/0/5") == str(int(FwResult.SUCCESS))
        assert await _read(h, "3/0/3") == "1.1.0"
        await _rebooted(h)

    _run(images, scenario, delivery_method=DeliveryMethod.BOTH)


def test_push_larger_than_the_slot_is_refused_with_4_13_and_result_2(images: Images) -> None:
    async def scenario(h: Harness) -> None:
        image = images["good"]
        response = await _push_block(h, image, num=0, szx=6, size1=len(image))
        assert response.code == Code.REQUEST_ENTITY_TOO_LARGE
        assert response.opt.size1 == 4096
        assert h.fleet.devices[EP].fw.result is FwResult.NOT_ENOUGH_FLASH
        assert await _read(h, "5/0/3") == str(int(FwState.IDLE))

    _run(images, scenario, delivery_method=DeliveryMethod.PUSH, slot_size=4096)


def test_pushed_block_out_of_sequence_gets_4_08_and_result_4(images: Images) -> None:
    async def scenario(h: Harness) -> None:
        image = images["good"]
        assert (await _push_block(h, image, num=0, szx=6)).code == Code.CONTINUE
        response = await _push_block(h, image, num=2, szx=6)
        assert response.code == Code.REQUEST_ENTITY_INCOMPLETE
        device = h.fleet.devices[EP]
        assert (device.fw.state, device.fw.result) == (FwState.IDLE, FwResult.CONNECTION_LOST)

    _run(images, scenario, delivery_method=DeliveryMethod.PUSH)


def test_pushed_non_mcuboot_package_is_result_6(images: Images) -> None:
    async def scenario(h: Harness) -> None:
        responses = await _push(h, images["not_mcuboot"], szx=6)
        assert responses[-1].code == Code.CHANGED
        device = h.fleet.devices[EP]
        assert (device.fw.state, device.fw.result) == (
            FwState.IDLE,
            FwResult.UNSUPPORTED_PACKAGE_TYPE,
        )

    _run(images, scenario, delivery_method=DeliveryMethod.PUSH)


def test_pull_only_device_refuses_a_pushed_package_with_4_05(images: Images) -> None:
    async def scenario(h: Harness) -> None:
        response = await _push_block(h, images["good"], num=0, szx=6)
        assert response.code == Code.METHOD_NOT_ALLOWED
        assert h.fleet.devices[EP].fw.state is FwState.IDLE

    _run(images, scenario)  # /5/0/9 defaults to pull only, as before


def test_push_only_device_refuses_a_package_uri_with_4_05(images: Images) -> None:
    async def scenario(h: Harness) -> None:
        response = await _write_uri(h, f"{h.gateway.config.base_uri}/fw/i/{'0' * 64}")
        assert response.code == Code.METHOD_NOT_ALLOWED
        assert h.fleet.devices[EP].fw.state is FwState.IDLE

    _run(images, scenario, delivery_method=DeliveryMethod.PUSH)


def test_delivery_method_and_protocols_come_from_the_fleet_spec(images: Images) -> None:
    async def scenario(h: Harness) -> None:
        assert await _read(h, "5/0/9") == "2"
        response = await _request(h, aiocoap.Message(code=Code.GET, uri=_device_uri(h, "5/0/8")))
        values = content.decode(response.opt.content_format, response.payload, (5, 0, 8))
        assert sorted(values.values()) == [0, 1, 4]  # type: ignore[type-var]
        await eventually(lambda: bool(h.sink.of("device_info")))
        info = h.sink.of("device_info")[-1]
        assert info["delivery_method"] == 2 and sorted(info["protocols"]) == [0, 1, 4]

    _run(images, scenario, delivery_method=DeliveryMethod.BOTH, protocols=[0, 1, 4])


def test_pushed_suit_envelope_is_checked_and_its_payload_fetched_from_the_server() -> None:
    key = suit.generate_private_key("ES256")
    release = make_release(key)

    async def scenario(h: Harness) -> None:
        responses = await _push(h, release.envelope, szx=5)
        assert [r.code for r in responses][-1] == Code.CHANGED
        device = h.fleet.devices[EP]
        await eventually(lambda: device.fw.state is FwState.DOWNLOADED)
        assert (await _execute_update(h)).code == Code.CHANGED
        await eventually(lambda: device.fw.result is FwResult.SUCCESS)
        assert device.state.version == "1.1.0" and device.state.sequence_number == 2
        await _rebooted(h)

    run_with_fleet(
        scenario,
        count=1,
        anchors=[key.public_key()],
        firmware=DictFirmware(
            envelopes={release.digest: release.envelope},
            images={hashlib.sha256(release.payload).hexdigest(): release.payload},
        ),
        spec_kwargs={"delivery_method": DeliveryMethod.PUSH},
    )


# --- resets -----------------------------------------------------------------------------------


def test_empty_package_uri_write_resets_a_download_in_progress_to_idle(images: Images) -> None:
    image = images["good"]
    digest = hashlib.sha256(image).hexdigest()

    async def scenario(h: Harness) -> None:
        device = h.fleet.devices[EP]
        written = await _write_uri(h, f"{h.gateway.config.base_uri}/fw/i/{digest}")
        assert written.code == Code.CHANGED
        assert await _read(h, "5/0/3") == str(int(FwState.DOWNLOADING))
        assert (await _write_uri(h, "")).code == Code.CHANGED
        assert await _read(h, "5/0/3") == str(int(FwState.IDLE))
        assert await _read(h, "5/0/5") == str(int(FwResult.INITIAL))
        await asyncio.sleep(1.5)  # longer than the slowed download takes
        assert (device.fw.state, device.fw.result) == (FwState.IDLE, FwResult.INITIAL)
        assert "downloaded" not in device.events and device.slot is None

    _run(images, scenario, faults=Faults(slow_link_seconds=0.15))


@pytest.mark.parametrize("empty_package", [b"", b"\0"], ids=["empty", "null-byte"])
def test_empty_package_write_resets_a_downloaded_image_to_idle(
    images: Images, empty_package: bytes
) -> None:
    async def scenario(h: Harness) -> None:
        await _push(h, images["good"], szx=6)
        assert await _read(h, "5/0/3") == str(int(FwState.DOWNLOADED))
        empty = aiocoap.Message(
            code=Code.PUT,
            uri=_device_uri(h, "5/0/0"),
            payload=empty_package,
            content_format=content.CT_OPAQUE,
        )
        assert (await _request(h, empty)).code == Code.CHANGED
        assert await _read(h, "5/0/3") == str(int(FwState.IDLE))
        assert await _read(h, "5/0/5") == str(int(FwResult.INITIAL))
        assert h.fleet.devices[EP].slot is None
        assert (await _execute_update(h)).code == Code.METHOD_NOT_ALLOWED

    _run(images, scenario, delivery_method=DeliveryMethod.PUSH)


def test_empty_package_uri_in_updating_abandons_the_install_before_the_reboot(
    images: Images,
) -> None:
    async def scenario(h: Harness) -> None:
        device = h.fleet.devices[EP]
        device.reboot_delay = 1.0
        await _push(h, images["good"], szx=6)
        assert (await _execute_update(h)).code == Code.CHANGED
        assert await _read(h, "5/0/3") == str(int(FwState.UPDATING))
        assert (await _write_uri(h, "")).code == Code.CHANGED
        assert await _read(h, "5/0/3") == str(int(FwState.IDLE))
        await asyncio.sleep(1.3)
        assert (device.fw.state, device.fw.result) == (FwState.IDLE, FwResult.INITIAL)
        assert device.state.version == "1.0.0" and device.boots == 0

    _run(images, scenario, delivery_method=DeliveryMethod.BOTH)


# --- state and spec ---------------------------------------------------------------------------


def test_restarted_image_device_in_downloaded_comes_back_idle_with_result_4() -> None:
    """The secondary slot is held in memory, so a restarted simulator has nothing staged."""
    state = DeviceState(
        endpoint=EP,
        manufacturer="Acme Sensors",
        model="thermo-v3",
        serial="SN1",
        vendor_id=str(VENDOR_ID),
        class_id=str(CLASS_ID),
        delivery="image",
        fw_state=int(FwState.DOWNLOADED),
    )
    device = SimulatedDevice(state, server_uri="coap://127.0.0.1:1", trust_anchors=[])
    assert (device.fw.state, device.fw.result) == (FwState.IDLE, FwResult.CONNECTION_LOST)


def test_device_state_round_trips_the_new_fields_and_reads_old_state_files() -> None:
    state = DeviceState(
        endpoint=EP,
        manufacturer="m",
        model="x",
        serial="s",
        vendor_id=str(VENDOR_ID),
        class_id=str(CLASS_ID),
        delivery="image",
        bootloader_key="PEM",
        downgrade_prevention=False,
        delivery_method=2,
    )
    assert DeviceState.from_json(state.to_json()) == state
    old = state.to_json()
    for name in ("delivery", "bootloader_key", "downgrade_prevention", "delivery_method"):
        del old[name]
    restored = DeviceState.from_json(old)
    assert (restored.delivery, restored.delivery_method, restored.downgrade_prevention) == (
        "suit",
        0,
        True,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delivery": "suit-integrated"}, "delivery"),
        ({"delivery": "image"}, "bootloader_key"),
        ({"delivery": "image", "bootloader_key": "not a pem"}, "bootloader_key"),
        ({"delivery_method": 3}, "DeliveryMethod"),
        ({"protocols": [9]}, "protocols"),
        ({"slot_size": 0}, "slot_size"),
    ],
    ids=[
        "unknown-profile",
        "image-without-key",
        "image-with-bad-key",
        "method",
        "protocol",
        "slot",
    ],
)
def test_fleet_spec_refuses_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FleetSpec(
            count=1,
            manufacturer="m",
            model="x",
            vendor_id=str(VENDOR_ID),
            class_id=str(CLASS_ID),
            **kwargs,
        )


def test_fleet_spec_defaults_keep_todays_suit_pull_devices() -> None:
    spec = FleetSpec(count=1, manufacturer="m", model="x", vendor_id="v", class_id="c")
    assert (spec.delivery, spec.delivery_method, spec.protocols) == ("suit", 0, [0])
    assert spec.downgrade_prevention is True and spec.slot_size == 0x100000
