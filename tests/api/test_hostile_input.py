"""Input that once crashed the API (500) or was silently misread: out-of-range and fractional
ids, a key rotation overlap past the calendar, bad pagination, empty and misspelt filters. Each
is refused with 400 and the JSON error body naming the parameter; and an error Django answers
itself under /api/ (an unknown URL, a bug) is the same JSON body, not an HTML page."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import MINIMAL_SPEC

pytestmark = pytest.mark.django_db

BIGINT_MAX = 2**63 - 1

# (list endpoint, id filter): every foreign-key filter of the API.
ID_FILTERS = [
    ("device-classes", "vendor"),
    ("manifests", "vendor"),
    ("manifests", "device_class"),
    ("releases", "device_class"),
    ("policies", "device_class"),
    ("devices", "vendor"),
    ("devices", "device_class"),
    ("campaigns", "device_class"),
    ("webhook-deliveries", "webhook"),
]


def _refused(response: Any, field: str) -> dict[str, Any]:
    assert response.status_code == 400, (response.status_code, response.content[:300])
    body = response.json()
    assert body["code"] == "invalid"
    assert field in [e["path"] for e in body["errors"]], body
    return body


@pytest.mark.parametrize(("endpoint", "field"), ID_FILTERS)
def test_id_filter_above_bigint_is_refused_not_a_server_error(
    people: dict[str, Any], endpoint: str, field: str
) -> None:
    client = people["admin"].client
    _refused(client.get(f"/api/{endpoint}/?{field}={BIGINT_MAX + 1}"), field)
    _refused(client.get(f"/api/{endpoint}/?{field}={'9' * 40}"), field)
    assert client.get(f"/api/{endpoint}/?{field}={BIGINT_MAX}").json()["count"] == 0


@pytest.mark.parametrize(("endpoint", "field"), ID_FILTERS)
@pytest.mark.parametrize(
    "value", ["1.9", "1.0", "1e0", "-1", "0", " 1", "0x1", "\uff11"]
)  # the last: a fullwidth digit one
def test_id_filter_that_is_not_a_positive_whole_number_is_refused_not_truncated(
    people: dict[str, Any], endpoint: str, field: str, value: str
) -> None:
    _refused(people["admin"].client.get(f"/api/{endpoint}/", {field: value}), field)


def test_fractional_vendor_id_no_longer_matches_the_truncated_id(
    people: dict[str, Any], world: dict[str, Any], device_class: Any
) -> None:
    client = people["auditor"].client
    vendor = device_class.vendor_id
    assert client.get(f"/api/devices/?vendor={vendor}").json()["count"] == 6
    _refused(client.get(f"/api/devices/?vendor={vendor}.9"), "vendor")


@pytest.mark.parametrize(
    "overlap",
    [
        pytest.param(10**30, id="timedelta-overflow-before-the-key-lookup"),
        pytest.param(10**11, id="date-out-of-range-in-the-service"),
        pytest.param(10 * 366 * 86400 + 1, id="just-past-the-ten-year-cap"),
    ],
)
def test_key_rotation_with_an_overlap_past_the_calendar_is_refused(
    people: dict[str, Any], world: dict[str, Any], overlap: int
) -> None:
    qa = people["qa"]
    kid = qa.client.get("/api/keys/?owner=qa").json()["results"][0]["kid"]
    response = qa.client.post(
        f"/api/keys/{kid}/rotate/",
        {"new_public_key_pem": people["security"].public_pem, "overlap_seconds": overlap},
        format="json",
    )
    _refused(response, "overlap_seconds")


def test_key_rotation_of_an_unknown_key_is_404_whatever_the_overlap(
    people: dict[str, Any],
) -> None:
    response = people["qa"].client.post(
        "/api/keys/ab12/rotate/", {"overlap_seconds": 10**30}, format="json"
    )
    assert response.status_code == 404 and response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=501", "limit"),
        ("limit=", "limit"),
        ("limit=2.5", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
        (f"offset={2**53}", "offset"),
        (f"offset={'9' * 30}", "offset"),
    ],
)
def test_bad_limit_or_offset_is_refused_not_replaced_by_the_default(
    people: dict[str, Any], world: dict[str, Any], query: str, field: str
) -> None:
    _refused(people["auditor"].client.get(f"/api/devices/?{query}"), field)


def test_good_limit_and_offset_still_page(people: dict[str, Any], world: dict[str, Any]) -> None:
    page = people["auditor"].client.get("/api/devices/?limit=500&offset=4").json()
    assert page["count"] == 6 and len(page["results"]) == 2


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/audit-events/?until=", "until"),
        ("/api/audit-events/?since=", "since"),
        ("/api/campaigns/?status=", "status"),
        ("/api/releases/?kind=", "kind"),
        ("/api/devices/?online=", "online"),
        ("/api/devices/?fw_state=", "fw_state"),
        ("/api/devices/?firmware_version=", "firmware_version"),
        ("/api/rollouts/?state=", "state"),
    ],
)
def test_empty_filter_value_is_refused_not_ignored(
    people: dict[str, Any], world: dict[str, Any], path: str, field: str
) -> None:
    body = _refused(people["auditor"].client.get(path), field)
    assert "leave the parameter out" in body["message"]


@pytest.mark.parametrize("value", ["maybe", "yes please", "2"])
def test_misspelt_boolean_filter_is_refused_not_ignored(
    people: dict[str, Any], world: dict[str, Any], value: str
) -> None:
    _refused(people["auditor"].client.get("/api/devices/", {"online": value}), "online")


def test_boolean_filter_reads_true_false_and_digits(
    people: dict[str, Any], world: dict[str, Any]
) -> None:
    client = people["auditor"].client
    counts = {v: client.get(f"/api/devices/?online={v}").json()["count"] for v in ("true", "1")}
    assert counts == {"true": 5, "1": 5}
    assert client.get("/api/devices/?online=FALSE").json()["count"] == 1


# --- errors Django answers itself ----------------------------------------------------------
# (/api/ itself answers with the index of entry points: tests/api/test_api_root.py)
@pytest.mark.parametrize("path", ["/api/no-such-thing/", "/api/devices/x/y/z/", "/api/v2/"])
def test_unmatched_api_url_answers_the_json_error_body(people: dict[str, Any], path: str) -> None:
    response = people["admin"].client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"


def test_unmatched_console_url_keeps_the_html_page(people: dict[str, Any]) -> None:
    response = people["admin"].client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_server_error_under_api_answers_the_json_error_body(
    people: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.views

    def broken(request: Any) -> frozenset[str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api.views, "request_roles", broken)
    client = people["admin"].client
    client.raise_request_exception = False
    response = client.get("/api/me/")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "code": "server_error",
        "message": "internal error; it has been logged",
    }
    assert "a bug" not in response.content.decode()  # no internals leak


def test_campaign_state_changes_refuse_a_yaml_body(
    people: dict[str, Any], world: dict[str, Any]
) -> None:
    """pause / resume / abort read a JSON reason; a YAML body was accepted and its reason
    dropped."""
    ops = people["fleet_operator"].client
    assert ops.post("/api/campaigns/", {"document": MINIMAL_SPEC}).status_code == 201
    for action in ("pause", "resume", "abort"):
        response = ops.generic(
            "POST",
            f"/api/campaigns/thermo-rollout/{action}/",
            "reason: lunch\n",
            content_type="application/yaml",
        )
        assert response.status_code == 415, (action, response.json())
        assert response.json()["code"] == "unsupported_media_type"
    paused = ops.post(
        "/api/campaigns/thermo-rollout/pause/", {"reason": "lunch"}, format="json"
    ).json()
    assert paused["status"] == "paused" and paused["pause_reason"] == "lunch"


# --- NUL characters (PostgreSQL refuses them in text and jsonb: a query would fail) -----------
def test_nul_in_a_filter_value_is_refused(people: dict[str, Any], world: dict[str, Any]) -> None:
    _refused(
        people["auditor"].client.get("/api/devices/?firmware_version=1%00"), "firmware_version"
    )
    _refused(people["auditor"].client.get("/api/audit-events/?actor=%00"), "actor")


def test_nul_in_a_name_in_the_path_names_nothing(people: dict[str, Any]) -> None:
    for path in ("/api/releases/a%00b/", "/api/campaigns/%00/status/", "/api/devices/%00/"):
        response = people["auditor"].client.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"


def test_nul_anywhere_in_a_json_body_is_refused(people: dict[str, Any]) -> None:
    response = people["admin"].client.post(
        "/api/policies/", '{"rules": {"q\\u0000a": 1}}', content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    assert "NUL" in response.json()["message"]


def test_nul_escaped_in_a_yaml_spec_is_refused(
    people: dict[str, Any], world: dict[str, Any]
) -> None:
    document = MINIMAL_SPEC + 'description: "evil \\0 byte"\n'
    response = people["fleet_operator"].client.post("/api/campaigns/", {"document": document})
    _refused(response, "document")


@pytest.mark.parametrize(
    "query",
    ["since=9999-12-31T23:59:59-14:00", "until=0001-01-01T00:00:00%2B14:00"],
    ids=["past-the-last-utc-datetime", "before-the-first-utc-datetime"],
)
def test_datetime_filter_with_no_utc_equivalent_is_refused_not_a_server_error(
    people: dict[str, Any], query: str
) -> None:
    field = query.split("=")[0]
    body = _refused(people["auditor"].client.get(f"/api/audit-events/?{query}"), field)
    assert "out of range" in body["message"]
