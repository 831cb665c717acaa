"""Provisioning a device before it first connects (``device provision``): its registry row,
which provisioned admission lets register, and its DTLS key; role-checked, audited without
the key, and a refusal writes nothing."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from campaigns.device_services import device_psk_lookup
from campaigns.models import Device, DevicePSK
from manifests.suit import keys as suit_keys
from tests.campaigns.support import Catalog

pytestmark = pytest.mark.django_db

KEY = bytes(range(16))


def _provision(*args: str, stdin: str | None = None, monkeypatch: Any = None) -> str:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    out = io.StringIO()
    call_command("device", "provision", *args, stdout=out)
    return out.getvalue()


def _nothing_written() -> bool:
    return not (
        Device.objects.exists()
        or DevicePSK.objects.exists()
        or AuditEvent.objects.filter(action="device.provision").exists()
    )


def test_an_operator_provisions_a_device_with_its_dtls_key(catalog: Catalog) -> None:
    out = _provision("acme.example-dtls01", "--user", "ops", "--psk-hex", KEY.hex())
    assert "provisioned; DTLS PSK set" in out
    assert Device.objects.filter(endpoint="acme.example-dtls01").exists()
    assert device_psk_lookup(identity="acme.example-dtls01") == KEY
    event = AuditEvent.objects.get(action="device.provision")
    assert event.actor == "ops"
    assert event.details == {"created": True, "psk": True, "report_key": False}
    assert KEY.hex() not in str(event.details)


def test_the_key_can_come_from_standard_input_and_a_second_call_rotates_it(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provision(
        "dev-1", "--user", "ops", "--psk-stdin", stdin=KEY.hex() + "\n", monkeypatch=monkeypatch
    )
    other = bytes(reversed(KEY))
    _provision("dev-1", "--user", "ops", "--psk-hex", other.hex())
    assert device_psk_lookup(identity="dev-1") == other
    assert [e.details["created"] for e in AuditEvent.objects.filter(action="device.provision")] == [
        True,
        False,
    ]


def test_a_device_without_a_key_is_provisioned_for_nosec(catalog: Catalog) -> None:
    assert "no DTLS key" in _provision("dev-plain", "--user", "ops")
    assert Device.objects.filter(endpoint="dev-plain").exists()
    assert not DevicePSK.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "author", "--psk-hex", KEY.hex()], "needs one of the roles"),
        (["--user", "qa", "--psk-hex", KEY.hex()], "needs one of the roles"),
        (["--user", "ops", "--psk-hex", "zz"], "hexadecimal"),
        (["--user", "ops", "--psk-hex", (KEY + b"!").hex()], "1..16 bytes"),
        (["--user", "nobody"], "no user named"),
    ],
    ids=["author", "qa", "not-hex", "key-too-long", "unknown-user"],
)
def test_a_refused_provisioning_writes_nothing(
    catalog: Catalog, args: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        _provision("dev-x", *args)
    assert _nothing_written()


def test_an_operator_registers_the_devices_suit_report_key(catalog: Catalog, tmp_path: Any) -> None:
    key = suit_keys.generate_private_key("Ed25519")
    pem = tmp_path / "dev.pem"
    pem.write_bytes(suit_keys.public_key_pem(key))
    out = _provision("suit-01", "--user", "ops", "--report-key", str(pem))
    assert "SUIT report key set" in out
    device = Device.objects.get(endpoint="suit-01")
    assert device.report_key == suit_keys.public_key_pem(key).decode()
    kid = suit_keys.kid_for_public_key(key).hex()
    assert AuditEvent.objects.get(action="device.report_key").details == {"kid": kid}


def test_a_report_key_that_is_not_a_public_key_is_refused_and_nothing_written(
    catalog: Catalog, tmp_path: Any
) -> None:
    pem = tmp_path / "private.pem"
    pem.write_bytes(suit_keys.private_key_pem(suit_keys.generate_private_key("Ed25519")))
    with pytest.raises(CommandError, match=r"device\.bad_report_key"):
        _provision("suit-02", "--user", "ops", "--report-key", str(pem))
    assert _nothing_written()
