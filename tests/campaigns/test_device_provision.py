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
    assert event.actor == "ops" and event.details == {"created": True, "psk": True}
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
