"""The pure fleet rules (``campaigns.fleet``): tag changes, filters' canonical form, and how an
import file is read — hostile and awkward files included — without a database."""

from __future__ import annotations

import pytest

from campaigns import fleet
from campaigns.fleet import DeviceFilter, TagChange, parse_import

LIMITS = {"max_psk_bytes": 16, "max_identity_bytes": 32}


def test_a_tag_change_keeps_tags_sorted_and_unique() -> None:
    change = TagChange.build(add=["b", "a"], remove=["z"])
    assert change.apply(["z", "b", "c"]) == ["a", "b", "c"]
    assert TagChange.build(replace=[]).apply(["x"]) == []
    assert TagChange.build(replace=["y", "x"]).as_dict() == {"set": ["x", "y"]}


def test_a_device_may_not_end_up_with_more_than_a_hundred_tags() -> None:
    change = TagChange.build(add=[f"t{i}" for i in range(50)])
    with pytest.raises(fleet.TagError, match="at most 100"):
        change.apply([f"old{i}" for i in range(51)])


def test_a_filter_s_canonical_form_lists_only_what_constrains() -> None:
    parsed = DeviceFilter.parse({"tag": "eu", "version": "", "online": False, "state": None})
    assert parsed.as_dict() == {"tag": "eu", "online": False}
    assert str(parsed) == "tag=eu online=False"
    assert DeviceFilter.parse(parsed.as_dict()) == parsed


def test_bom_crlf_quoting_blank_lines_and_header_case_are_read() -> None:
    data = (
        "\ufeffEndpoint, TAGS ,class\r\n"
        '"dev,1","eu; beta",acme.example/thermo-v2\r\n'
        "\r\n"
        "dev-2,,\r\n"
    ).encode()
    parsed = parse_import(data, **LIMITS)
    assert parsed.errors == []
    assert [(r.row, r.endpoint, r.tags, r.device_class) for r in parsed.rows] == [
        (2, "dev,1", ["beta", "eu"], "acme.example/thermo-v2"),
        (4, "dev-2", [], None),
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"endpoint\nok\x00\n", "NUL"),
        (b"", "empty file"),
        (b"endpoint,endpoint\nx,y\n", "given twice"),
        (b"endpoint\n" + b"x" * (fleet.MAX_IMPORT_BYTES), "larger than"),
        (b'endpoint\n"unterminated\n', "not CSV"),
    ],
    ids=["nul", "empty", "column-twice", "too-large", "broken-quote"],
)
def test_a_hostile_file_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    parsed = parse_import(data, **LIMITS)
    assert parsed.rows == [] or parsed.errors
    assert any(reason in e.reason for e in parsed.errors), parsed.errors


def test_rows_beyond_the_limit_refuse_the_file() -> None:
    data = "endpoint\n" + "".join(f"d{i}\n" for i in range(6))
    parsed = parse_import(data, max_rows=5, **LIMITS)
    assert [(e.row, e.reason) for e in parsed.errors] == [(7, "more than 5 devices in one file")]


def test_an_error_names_its_row_and_column_as_a_path() -> None:
    error = fleet.RowError(4, "psk_key", "not hexadecimal")
    assert (str(error), error.path) == ("row 4: psk_key: not hexadecimal", "rows[4].psk_key")
    assert fleet.RowError(0, "", "empty").path == ""
