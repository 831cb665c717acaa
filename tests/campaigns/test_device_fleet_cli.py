"""``manage.py device import|tag|group``: the fleet management commands print what they did, and
a refusal (bad row, unknown device, wrong role) is an error exit that wrote nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from campaigns.models import Device, DeviceGroup
from tests.campaigns.support import Catalog, make_devices

pytestmark = pytest.mark.django_db

KEY = bytes(range(16))


def device(*args: str) -> str:
    out = io.StringIO()
    call_command("device", *args, stdout=out, stderr=out)
    return out.getvalue()


def test_import_from_a_file_prints_the_count(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    path.write_text(
        "endpoint,class,tags,psk_key\n"
        f"cli-1,acme.example/thermo-v2,eu beta,{KEY.hex()}\n"
        "cli-2,acme.example/thermo-v2,eu,\n"
    )
    out = device("import", str(path), "--user", "ops")
    assert "imported 2 device(s)" in out and "1 with a DTLS PSK" in out
    assert Device.objects.get(endpoint="cli-1").tags == ["beta", "eu"]


def test_a_bad_import_prints_every_row_error_and_writes_nothing(
    catalog: Catalog, tmp_path: Path
) -> None:
    path = tmp_path / "fleet.csv"
    path.write_text("endpoint,tags,psk_key\ncli-1,eu,\ncli-2,e/u,\ncli-1,,zz\n")
    err = io.StringIO()
    with pytest.raises(CommandError, match=r"import refused, nothing written.*fleet.import"):
        call_command("device", "import", str(path), "--user", "ops", stdout=err, stderr=err)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("row 3: tags:")
    assert lines[1] == "row 4: endpoint: duplicate of row 2"
    assert lines[2] == "row 4: psk_key: not hexadecimal"
    assert not Device.objects.exists()


def test_tag_devices_by_name_and_by_filter(catalog: Catalog) -> None:
    make_devices(catalog, 3, tags=["eu"])
    make_devices(catalog, 2, prefix="off", online=False)
    out = device("tag", "dev-00000", "dev-00001", "--user", "ops", "--add", "beta;lab")
    assert "2 device(s) selected, 2 changed" in out
    assert Device.objects.get(endpoint="dev-00001").tags == ["beta", "eu", "lab"]
    out = device("tag", "--offline", "--user", "ops", "--set", "dormant")
    assert "2 device(s) selected, 2 changed" in out
    out = device("tag", "--tag", "lab", "--user", "ops", "--remove", "lab")
    assert "2 device(s) selected, 2 changed" in out
    out = device("tag", "dev-00002", "--user", "ops", "--clear")
    assert Device.objects.get(endpoint="dev-00002").tags == []
    event = AuditEvent.objects.filter(action="device.tags").order_by("id")[1]
    assert event.details["filter"] == {"online": False} and event.details["count"] == 2


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["dev-00000", "--user", "ops"], "nothing to change"),
        (["--user", "ops", "--add", "x"], "name devices, or select them"),
        (["dev-00000", "--tag", "eu", "--user", "ops", "--add", "x"], "not both"),
        (["ghost", "--user", "ops", "--add", "x"], "unknown device"),
        (["dev-00000", "--user", "ops", "--add", "e/u"], "not a tag"),
        (["dev-00000", "--user", "qa", "--add", "x"], "needs one of the roles"),
    ],
    ids=["no-change", "no-selection", "list-and-filter", "unknown", "bad-tag", "wrong-role"],
)
def test_a_refused_tag_command_changes_nothing(
    catalog: Catalog, args: list[str], match: str
) -> None:
    make_devices(catalog, 1, tags=["eu"])
    with pytest.raises(CommandError, match=match):
        device("tag", *args)
    assert Device.objects.get(endpoint="dev-00000").tags == ["eu"]
    assert not AuditEvent.objects.filter(action="device.tags").exists()


def test_groups_are_created_listed_shown_and_deleted(catalog: Catalog) -> None:
    make_devices(catalog, 3, tags=["eu"])
    assert "created (static list)" in device(
        "group", "create", "pilot", "--user", "ops", "--endpoints", "dev-00000,dev-00002"
    )
    assert "created (saved filter)" in device(
        "group", "create", "europe", "--user", "ops", "--tag", "eu", "--class",
        "acme.example/thermo-v2",
    )  # fmt: skip
    listing = device("group", "list")
    assert "europe: 3 device(s), filter device_class=acme.example/thermo-v2 tag=eu" in listing
    assert "pilot: 2 device(s), static" in listing
    shown = device("group", "show", "pilot")
    assert "2 device(s) now" in shown and "  dev-00002" in shown
    assert "deleted" in device("group", "delete", "pilot", "--user", "ops")
    assert list(DeviceGroup.objects.values_list("name", flat=True)) == ["europe"]
    with pytest.raises(CommandError, match="no device group named 'pilot'"):
        device("group", "show", "pilot")
    with pytest.raises(CommandError, match=r"empty filter|one of them"):
        device("group", "create", "all", "--user", "ops")


def test_apply_of_a_group_campaign_says_its_members_are_frozen(
    catalog: Catalog, tmp_path: Path
) -> None:
    from tests.campaigns.support import spec_text

    make_devices(catalog, 4)
    device("group", "create", "pilot", "--user", "ops", "--endpoints", "dev-00001,dev-00003")
    path = tmp_path / "pilot.yaml"
    path.write_text(spec_text("pilot-rollout", target_extra="  group: pilot\n"))
    out = io.StringIO()
    call_command("campaign", "apply", str(path), "--user", "ops", stdout=out)
    assert "group pilot: 2 device(s), frozen when the campaign was created" in out.getvalue()
