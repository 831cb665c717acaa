"""Fleet management services: tags on one device or many (by list or filter), saved groups and
the all-or-nothing CSV import; role-checked, one audit event per operation, a refusal writes
nothing, no query per device."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from campaigns import fleet_services as fs
from campaigns.device_services import device_psk_lookup
from campaigns.fleet import (
    DeviceFilter,
    FleetError,
    GroupExistsError,
    ImportRejectedError,
    TagChange,
    TagError,
    UnknownDevicesError,
    UnknownGroupError,
)
from campaigns.fleet_selectors import group_member_endpoints, groups_with_counts
from campaigns.models import Device, DeviceGroup, DevicePSK
from manifests.errors import PermissionDeniedError
from manifests.suit import keys as suit_keys
from tests.campaigns.support import Catalog, make_devices

pytestmark = pytest.mark.django_db

KEY = bytes(range(16))


def tags_of(endpoint: str) -> list[str]:
    return Device.objects.get(endpoint=endpoint).tags


def test_tags_are_added_and_removed_on_one_device(catalog: Catalog) -> None:
    make_devices(catalog, 2, tags=["eu"])
    result = fs.device_tags_change(
        actor=catalog.ops,
        change=TagChange.build(add=["beta", "lab"], remove=["eu"]),
        endpoints=["dev-00000"],
    )
    assert result.matched == 1 and result.changed == 1
    assert tags_of("dev-00000") == ["beta", "lab"]
    assert tags_of("dev-00001") == ["eu"]
    event = AuditEvent.objects.get(action="device.tags")
    assert event.object_id == "dev-00000"
    assert event.details == {
        "endpoints": ["dev-00000"],
        "add": ["beta", "lab"],
        "remove": ["eu"],
        "count": 1,
        "changed": 1,
    }


def test_a_bulk_change_by_filter_is_one_audit_event_naming_count_and_filter(
    catalog: Catalog, django_assert_max_num_queries: object
) -> None:
    make_devices(catalog, 150, firmware_version="1.0.0")
    make_devices(catalog, 5, prefix="v1", device_class=catalog.thermo_v1)
    make_devices(catalog, 7, prefix="new", firmware_version="1.1.0")
    selection = DeviceFilter.parse({"device_class": "acme.example/thermo-v2", "version": "1.0.0"})
    with django_assert_max_num_queries(12):  # type: ignore[operator]
        result = fs.device_tags_change(
            actor=catalog.ops, change=TagChange.build(add=["wave-1"]), device_filter=selection
        )
    assert result.matched == 150 and result.changed == 150
    assert Device.objects.filter(tags__contains=["wave-1"]).count() == 150
    event = AuditEvent.objects.get(action="device.tags")
    assert event.details["count"] == 150
    assert event.details["filter"] == {"device_class": "acme.example/thermo-v2", "version": "1.0.0"}
    # Again: the same selection, nothing left to change.
    again = fs.device_tags_change(
        actor=catalog.ops, change=TagChange.build(add=["wave-1"]), device_filter=selection
    )
    assert again.changed == 0


def test_set_replaces_every_tag_and_filters_by_tag_state_and_online(catalog: Catalog) -> None:
    make_devices(catalog, 3, tags=["eu", "lab"], fw_state=1)
    make_devices(catalog, 2, prefix="off", tags=["eu"], online=False)
    fs.device_tags_change(
        actor=catalog.ops,
        change=TagChange.build(replace=["retired"]),
        device_filter=DeviceFilter.parse({"tag": "eu", "online": False}),
    )
    assert tags_of("off-00000") == ["retired"]
    assert tags_of("dev-00000") == ["eu", "lab"]
    result = fs.device_tags_change(
        actor=catalog.ops,
        change=TagChange.build(remove=["lab"]),
        device_filter=DeviceFilter.parse({"state": "downloading"}),
    )
    assert result.changed == 3 and tags_of("dev-00002") == ["eu"]


def test_a_list_naming_an_unknown_device_changes_nothing(catalog: Catalog) -> None:
    make_devices(catalog, 2)
    with pytest.raises(UnknownDevicesError, match="1 unknown device"):
        fs.device_tags_change(
            actor=catalog.ops,
            change=TagChange.build(add=["eu"]),
            endpoints=["dev-00000", "ghost"],
        )
    assert tags_of("dev-00000") == []
    assert not AuditEvent.objects.filter(action="device.tags").exists()


@pytest.mark.parametrize("user", ["author", "qa", "sec"])
def test_tagging_needs_the_provisioning_role(catalog: Catalog, user: str) -> None:
    make_devices(catalog, 1)
    with pytest.raises(PermissionDeniedError):
        fs.device_tags_change(
            actor=catalog.users[user],
            change=TagChange.build(add=["eu"]),
            endpoints=["dev-00000"],
        )
    assert tags_of("dev-00000") == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"add": ["e u"]}, TagError),
        ({"add": ["-eu"]}, TagError),
        ({"add": ["x" * 65]}, TagError),
        ({}, TagError),
        ({"add": ["eu"], "remove": ["eu"]}, TagError),
        ({"add": ["eu"], "replace": ["lab"]}, TagError),
    ],
    ids=["space", "leading-dash", "too-long", "nothing", "add-and-remove", "add-and-set"],
)
def test_bad_tag_changes_are_refused(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        TagChange.build(**kwargs)


@pytest.mark.parametrize(
    "data",
    [{}, {"colour": "red"}, {"state": "sleeping"}, {"online": "yes"}, {"device_class": "nope"}],
    ids=["empty-selects-everything", "unknown-key", "bad-state", "online-not-bool", "bad-class"],
)
def test_bad_filters_are_refused(data: dict) -> None:
    with pytest.raises(FleetError):
        DeviceFilter.parse(data)


def test_static_and_filter_groups_and_their_members(catalog: Catalog) -> None:
    make_devices(catalog, 4, tags=["eu"])
    make_devices(catalog, 2, prefix="us", tags=["us"])
    fs.device_group_create(
        actor=catalog.ops, name="pilot", endpoints=["dev-00001", "us-00000"], description="p"
    )
    fs.device_group_create(
        actor=catalog.ops, name="europe", device_filter=DeviceFilter.parse({"tag": "eu"})
    )
    assert group_member_endpoints("pilot") == ["dev-00001", "us-00000"]
    assert group_member_endpoints("europe") == [f"dev-{i:05d}" for i in range(4)]
    make_devices(catalog, 1, prefix="late", tags=["eu"])
    assert "late-00000" in group_member_endpoints("europe")  # a filter is evaluated when used
    assert [(g.name, n) for g, n in groups_with_counts()] == [("europe", 5), ("pilot", 2)]
    assert [e.details for e in AuditEvent.objects.filter(action="device_group.create")] == [
        {"kind": "static", "count": 2},
        {"kind": "filter", "filter": {"tag": "eu"}},
    ]
    with pytest.raises(GroupExistsError):
        fs.device_group_create(actor=catalog.ops, name="pilot", endpoints=["dev-00000"])
    fs.device_group_delete(actor=catalog.ops, name="pilot")
    assert not DeviceGroup.objects.filter(name="pilot").exists()
    assert Device.objects.filter(endpoint="dev-00001").exists()
    with pytest.raises(UnknownGroupError):
        fs.device_group_delete(actor=catalog.ops, name="pilot")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "Pilot", "endpoints": ["dev-00000"]}, "not a group name"),
        ({"name": "pilot", "endpoints": ["ghost"]}, "unknown device"),
        ({"name": "pilot", "endpoints": []}, "at least one endpoint"),
        ({"name": "pilot"}, "one of them"),
    ],
    ids=["bad-name", "unknown-endpoint", "empty-list", "neither-list-nor-filter"],
)
def test_a_refused_group_writes_nothing(catalog: Catalog, kwargs: dict, match: str) -> None:
    make_devices(catalog, 1)
    with pytest.raises(FleetError, match=match):
        fs.device_group_create(actor=catalog.ops, **kwargs)
    assert not DeviceGroup.objects.exists()
    assert not AuditEvent.objects.filter(action="device_group.create").exists()


# --------------------------------------------------------------------------- import

GOOD_CSV = (
    "endpoint,class,tags,psk_identity,psk_key\n"
    f"imp-1,acme.example/thermo-v2,eu;beta,imp-1,{KEY.hex()}\n"
    "imp-2,acme.example/thermo-v1,eu,,\n"
    "imp-3,,,,\n"
)


def test_an_import_provisions_devices_classes_tags_and_keys(catalog: Catalog) -> None:
    result = fs.devices_import(actor=catalog.ops, data=GOOD_CSV.encode(), source="fleet.csv")
    assert (result.created, result.with_psk) == (3, 1)
    one = Device.objects.select_related("device_class__vendor").get(endpoint="imp-1")
    assert str(one.device_class) == "acme.example/thermo-v2" and one.vendor == catalog.vendor
    assert one.tags == ["beta", "eu"]
    assert device_psk_lookup(identity="imp-1") == KEY
    assert Device.objects.get(endpoint="imp-3").device_class is None
    event = AuditEvent.objects.get(action="device.import")
    assert event.details == {
        "source": "fleet.csv",
        "count": 3,
        "psk": 1,
        "report_key": 0,
        "endpoints": ["imp-1", "imp-2", "imp-3"],
    }
    assert KEY.hex() not in str(event.details)


def test_an_import_registers_each_devices_suit_report_key(catalog: Catalog) -> None:
    key = suit_keys.generate_private_key("Ed25519")
    pem = suit_keys.public_key_pem(key).decode()
    data = f'endpoint,class,report_key\nsuit-1,acme.example/thermo-v2,"{pem}"\nsuit-2,,\n'
    fs.devices_import(actor=catalog.ops, data=data.encode(), source="suit.csv")
    assert Device.objects.get(endpoint="suit-1").report_key == pem
    assert Device.objects.get(endpoint="suit-2").report_key == ""
    assert AuditEvent.objects.get(action="device.import").details["report_key"] == 1


def test_an_import_with_a_bad_report_key_is_refused_whole(catalog: Catalog) -> None:
    data = (
        'endpoint,report_key\nsuit-1,"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"\n'
    )
    with pytest.raises(fs.ImportRejectedError) as refused:
        fs.devices_import(actor=catalog.ops, data=data.encode())
    assert [e.column for e in refused.value.errors] == ["report_key"]
    assert not Device.objects.exists()


def test_a_thousand_row_import_takes_a_fixed_number_of_queries(
    catalog: Catalog, django_assert_max_num_queries: object
) -> None:
    lines = ["endpoint,class,tags,psk_key"]
    lines += [f"bulk-{i:04d},acme.example/thermo-v2,eu,{KEY.hex()}" for i in range(1000)]
    with django_assert_max_num_queries(12):  # type: ignore[operator]
        result = fs.devices_import(actor=catalog.ops, data="\n".join(lines))
    assert result.created == 1000 and Device.objects.count() == 1000
    assert DevicePSK.objects.count() == 1000


BAD_ROWS = [
    ("bad endpoint", "endpoint,tags\nbell\x07,eu\n", 2, "endpoint"),
    ("bad tag", "endpoint,tags\nok-1,e/u\n", 2, "tags"),
    ("unknown class", "endpoint,class\nok-1,acme.example/nope\n", 2, "class"),
    ("malformed class", "endpoint,class\nok-1,thermo\n", 2, "class"),
    (
        "identity not endpoint",
        f"endpoint,psk_identity,psk_key\nok-1,other,{KEY.hex()}\n",
        2,
        "psk_identity",
    ),
    ("identity without key", "endpoint,psk_identity\nok-1,ok-1\n", 2, "psk_key"),
    ("key not hex", "endpoint,psk_key\nok-1,zz\n", 2, "psk_key"),
    ("key too long", f"endpoint,psk_key\nok-1,{(KEY + b'!').hex()}\n", 2, "psk_key"),
    ("identity too long", f"endpoint,psk_key\n{'e' * 33},{KEY.hex()}\n", 2, "endpoint"),
    ("duplicate in file", "endpoint\nok-1\nok-2\nok-1\n", 4, "endpoint"),
    ("already registered", "endpoint\nok-1\ndev-00000\n", 3, "endpoint"),
    ("field count", "endpoint,tags\nok-1,eu,extra\n", 2, ""),
    ("unknown column", "endpoint,colour\nok-1,red\n", 1, ""),
    ("no endpoint column", "class\nacme.example/thermo-v2\n", 1, ""),
    ("no rows", "endpoint\n", 0, ""),
    ("not utf-8", b"endpoint\n\xff\xfe\n", 0, ""),
]


@pytest.mark.parametrize(
    ("data", "row", "column"),
    [(d, r, c) for _, d, r, c in BAD_ROWS],
    ids=[name for name, *_ in BAD_ROWS],
)
def test_one_bad_row_refuses_the_whole_import_with_its_row_and_column(
    catalog: Catalog, data: str | bytes, row: int, column: str
) -> None:
    make_devices(catalog, 1)
    with pytest.raises(ImportRejectedError) as caught:
        fs.devices_import(actor=catalog.ops, data=data)
    assert [(e.row, e.column) for e in caught.value.errors] == [(row, column)]
    assert Device.objects.count() == 1
    assert not DevicePSK.objects.exists()
    assert not AuditEvent.objects.filter(action="device.import").exists()


def test_every_bad_row_is_reported_at_once(catalog: Catalog) -> None:
    data = "endpoint,tags,psk_key\nok-1,eu,\nbad\t1,eu,\nok-2,e/u,zz\nok-1,,\n"
    with pytest.raises(ImportRejectedError) as caught:
        fs.devices_import(actor=catalog.ops, data=data)
    assert [(e["path"], e["row"], e["column"]) for e in caught.value.as_list()] == [
        ("rows[3].endpoint", 3, "endpoint"),
        ("rows[4].tags", 4, "tags"),
        ("rows[4].psk_key", 4, "psk_key"),
        ("rows[5].endpoint", 5, "endpoint"),
    ]
    assert caught.value.errors[3].reason == "duplicate of row 2"
    assert not Device.objects.exists()


def test_importing_needs_the_provisioning_role(catalog: Catalog) -> None:
    with pytest.raises(PermissionDeniedError):
        fs.devices_import(actor=catalog.users["author"], data=GOOD_CSV)
    assert not Device.objects.exists()
