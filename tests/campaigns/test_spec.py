"""Campaign spec parsing: every bad input refused with its exact field path; canonical form."""

from __future__ import annotations

import contextlib
import copy
import json
import re
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from campaigns import spec as S
from campaigns.errors import (
    CampaignConflictError,
    CampaignError,
    CampaignStateError,
    EmergencyStopError,
    GateError,
    SpecError,
    UnknownReleaseError,
    UnknownTargetError,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "campaigns"
FULL = EXAMPLES / "thermo-2-0-rollout.yaml"
MINIMAL = EXAMPLES / "minimal.yaml"


def base() -> dict[str, Any]:
    # Not yaml.safe_load: YAML 1.1 would read the retries key "on" as the boolean True.
    loaded: dict[str, Any] = S.read_document(FULL.read_text())
    return loaded


def setpath(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or, with value=DELETE, remove) ``a.b[1].c`` in a deep copy of doc."""
    doc = copy.deepcopy(doc)
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(int(index) if index else name)
    node: Any = doc
    for part in parts[:-1]:
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return doc


DELETE = object()


def refused(document: Any, *, source: str = "<api>") -> SpecError:
    with pytest.raises(SpecError) as info:
        S.parse_spec(document, source=source)
    return info.value


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_files_parse_and_round_trip(path: Path) -> None:
    spec = S.load_spec_file(path)
    assert S.parse_spec(spec.to_document()) == spec
    jsonschema.validate(spec.to_document(), S.schema())


def test_full_example_values() -> None:
    spec = S.load_spec_file(FULL)
    assert [s.name for s in spec.stages] == ["canary", "wave", "all"]
    canary = spec.stages[0]
    assert canary.size == ("percent", Fraction(1, 20))
    assert canary.success_threshold == Fraction(95, 100)
    assert canary.soak == timedelta(minutes=10)
    assert canary.gate == "qa"
    assert spec.stages[2].size == ("rest", None)
    assert spec.target.version is not None and spec.target.version.matches((1, 5, 0))
    assert spec.rate is not None and spec.rate.factor == 2
    assert spec.retries.on == {"connection_lost", "out_of_memory", "timed_out", "dispatch_failed"}
    assert spec.windows[0].timezone == "Europe/Berlin"


def test_minimal_example_gets_documented_defaults() -> None:
    spec = S.load_spec_file(MINIMAL)
    stage = spec.stages[0]
    assert stage.soak == timedelta(0)
    assert stage.success_threshold == 1 and stage.failure_threshold == 1
    assert stage.min_finished == 1 and stage.failure_action == "pause"
    assert stage.gate is None and stage.max_in_flight is None
    assert spec.rate is None and spec.windows == ()
    assert spec.timeouts == S.TimeoutSpec(timedelta(hours=1), timedelta(hours=24))
    assert spec.retries == S.RetrySpec(
        0, timedelta(minutes=1), Fraction(2), frozenset(S.DEFAULT_RETRY_ON)
    )
    assert spec.freshness.max_clock_skew == timedelta(minutes=5)
    assert spec.description == ""


def test_json_text_and_dict_give_the_same_spec() -> None:
    doc = base()
    assert S.parse_spec(json.dumps(doc)) == S.parse_spec(doc) == S.load_spec_file(FULL)


# --------------------------------------------------------------------------- digest / diff


def test_digest_ignores_key_order_whitespace_comments_and_spelling() -> None:
    original = S.load_spec_file(FULL)
    reordered = dict(reversed(list(base().items())))
    reordered["target"]["tags_any"] = ["eu"]
    reformatted = yaml.safe_dump(reordered, default_flow_style=True, width=40)
    respelled = (
        FULL.read_text()
        .replace("soak: 1h", "soak: 3600")
        .replace("# Three stages", "# a different comment")
        .replace("step: 5m", "step: 300s")
    )
    assert S.parse_spec(reformatted).digest() == original.digest()
    assert S.parse_spec(respelled).digest() == original.digest()
    assert S.load_spec_file(FULL).digest() == original.digest()
    assert len(original.digest()) == 64


def test_digest_changes_when_meaning_changes() -> None:
    changed = setpath(base(), "stages[0].size", "6%")
    assert S.parse_spec(changed).digest() != S.load_spec_file(FULL).digest()


def test_spec_diff_lists_changed_paths_only() -> None:
    old = S.load_spec_file(FULL).to_document()
    new_doc = setpath(base(), "stages[1].size", "30%")
    new_doc = setpath(new_doc, "target.tags_any", ["eu", "beta"])
    new_doc["stages"].append({"name": "late", "size": 1})
    new_doc = setpath(new_doc, "stages[2].size", "50%")
    new = S.parse_spec(new_doc).to_document()
    diff = S.spec_diff(old, new)
    paths = [d["path"] for d in diff]
    assert paths == ["target.tags_any", "stages[1].size", "stages[2].size", "stages[3]"]
    assert diff[1] == {"path": "stages[1].size", "before": "25%", "after": "30%"}
    assert diff[0]["after"] == ["beta", "eu"]
    assert diff[3]["before"] is None and diff[3]["after"]["name"] == "late"
    assert S.spec_diff(old, old) == []


def test_spec_diff_rate_added_and_removed() -> None:
    with_rate = S.load_spec_file(FULL).to_document()
    without = S.parse_spec(setpath(base(), "rate", DELETE)).to_document()
    assert S.spec_diff(with_rate, without) == [
        {"path": "rate", "before": with_rate["rate"], "after": None}
    ]


# --------------------------------------------------------------------------- bad documents

BAD_DOCUMENTS: list[tuple[str, str, Any, str]] = [
    # (id, path to change, new value, expected error path)
    ("unknown-root-key", "color", "blue", "color"),
    ("unknown-target-key", "target.tag", ["eu"], "target.tag"),
    ("unknown-stage-key", "stages[1].soakk", "1m", "stages[1].soakk"),
    ("unknown-window-key", "windows[0].tz", "UTC", "windows[0].tz"),
    ("unknown-rate-key", "rate.burst", 3, "rate.burst"),
    ("unknown-retries-key", "retries.jitter", "1s", "retries.jitter"),
    ("wrong-api-version", "apiVersion", "fwupd/v2", "apiVersion"),
    ("wrong-kind", "kind", "Release", "kind"),
    ("missing-release", "release", DELETE, "release"),
    ("missing-target", "target", DELETE, "target"),
    ("missing-device-class", "target.device_class", DELETE, "target.device_class"),
    ("missing-stage-size", "stages[0].size", DELETE, "stages[0].size"),
    ("bad-name", "name", "Thermo_Rollout", "name"),
    ("empty-release", "release", "", "release"),
    ("name-wrong-type", "name", 12, "name"),
    ("stages-wrong-type", "stages", {"name": "x"}, "stages"),
    ("no-stages", "stages", [], "stages"),
    ("device-class-no-slash", "target.device_class", "thermo-v2", "target.device_class"),
    ("tags-not-list", "target.tags_any", "eu", "target.tags_any"),
    ("tag-bad-chars", "target.tags_any", ["e u"], "target.tags_any[0]"),
    ("duplicate-tags", "target.tags_any", ["eu", "eu"], "target.tags_any"),
    ("empty-include", "target.include", [], "target.include"),
    ("size-boolean", "stages[0].size", True, "stages[0].size"),
    ("size-zero-count", "stages[0].size", 0, "stages[0].size"),
    ("size-zero-percent", "stages[0].size", "0%", "stages[0].size"),
    ("size-percent-over-100", "stages[0].size", "101%", "stages[0].size"),
    ("size-three-decimals", "stages[0].size", "5.125%", "stages[0].size"),
    ("size-float", "stages[0].size", 0.5, "stages[0].size"),
    ("percent-sum-over-100", "stages[1].size", "96%", "stages[1].size"),
    ("rest-not-last", "stages[1].size", "rest", "stages[1].size"),
    ("duplicate-stage-name", "stages[2].name", "canary", "stages[2].name"),
    ("success-threshold-zero", "stages[0].success_threshold", "0%", "stages[0].success_threshold"),
    (
        "success-threshold-over",
        "stages[0].success_threshold",
        "100.01%",
        "stages[0].success_threshold",
    ),
    (
        "failure-threshold-over",
        "stages[1].failure_threshold",
        "150%",
        "stages[1].failure_threshold",
    ),
    ("threshold-as-number", "stages[0].success_threshold", 0.95, "stages[0].success_threshold"),
    ("min-finished-zero", "stages[0].min_finished", 0, "stages[0].min_finished"),
    ("failure-action-unknown", "stages[0].failure_action", "rollback", "stages[0].failure_action"),
    ("gate-unknown-role", "stages[0].gate", "author", "stages[0].gate"),
    ("max-in-flight-zero", "stages[0].max_in_flight", 0, "stages[0].max_in_flight"),
    ("bad-duration-unit", "stages[0].soak", "10x", "stages[0].soak"),
    ("bad-duration-order", "stages[0].soak", "30m1h", "stages[0].soak"),
    ("negative-duration", "stages[0].soak", -5, "stages[0].soak"),
    ("duration-too-long", "timeouts.device", "400d", "timeouts.device"),
    ("device-timeout-zero", "timeouts.device", 0, "timeouts.device"),
    ("rate-max-below-base", "rate.max_per_minute", 5, "rate.max_per_minute"),
    ("rate-factor-below-1", "rate.factor", 0.5, "rate.factor"),
    ("rate-factor-three-decimals", "rate.factor", 1.125, "rate.factor"),
    ("rate-step-under-a-minute", "rate.step", "30s", "rate.step"),
    (
        "rate-criteria-zero",
        "rate.increase_if_failure_rate_below",
        "0%",
        "rate.increase_if_failure_rate_below",
    ),
    ("bad-cron-hour", "windows[0].cron", "0 25 * * *", "windows[0].cron"),
    ("cron-six-fields", "windows[0].cron", "0 0 22 * * 1-5", "windows[0].cron"),
    ("cron-never-fires", "windows[0].cron", "0 0 30 2 *", "windows[0].cron"),
    ("bad-timezone", "windows[0].timezone", "Europe/Atlantis", "windows[0].timezone"),
    ("timezone-path-traversal", "windows[0].timezone", "../../etc/passwd", "windows[0].timezone"),
    ("window-too-long", "windows[0].duration", "8d", "windows[0].duration"),
    ("window-zero", "windows[0].duration", 0, "windows[0].duration"),
    ("bad-version-operator", "target.version", "~>1.0.0", "target.version"),
    ("bad-version-short", "target.version", ">=1.0", "target.version"),
    ("version-out-of-range", "target.version", ">=256.0.0", "target.version"),
    ("version-empty-range", "target.version", ">=2.0.0,<1.0.0", "target.version"),
    ("version-two-equals", "target.version", "==1.0.0,==1.0.1", "target.version"),
    ("tags-all-excluded", "target.tags_all", ["lab"], "target.exclude_tags"),
    ("tags-any-all-excluded", "target.tags_any", ["lab"], "target.exclude_tags"),
    ("include-and-exclude-same", "target.include", ["thermo-0042"], "target.exclude"),
    ("retry-max-over-10", "retries.max", 11, "retries.max"),
    ("retry-unknown-reason", "retries.on", ["download_failed"], "retries.on[0]"),
    ("retry-max-without-reasons", "retries.on", [], "retries.on"),
    ("clock-skew-wrong-type", "freshness.max_clock_skew", [5], "freshness.max_clock_skew"),
]


@pytest.mark.parametrize(
    ("path", "value", "error_path"),
    [case[1:] for case in BAD_DOCUMENTS],
    ids=[case[0] for case in BAD_DOCUMENTS],
)
def test_bad_document_is_refused_with_its_path(path: str, value: Any, error_path: str) -> None:
    error = refused(setpath(base(), path, value), source="campaign.yaml")
    assert [e.path for e in error.errors] == [error_path], [str(e) for e in error.errors]
    assert error.path == error_path
    assert error.source == "campaign.yaml" and error.code == "campaign.spec_invalid"
    assert str(error).startswith(f"campaign.yaml: {error_path}: ")


def test_min_finished_above_a_count_stage_is_refused() -> None:
    doc = setpath(base(), "stages[0].size", 3)
    error = refused(setpath(doc, "stages[0].min_finished", 4))
    assert error.path == "stages[0].min_finished"


def test_all_schema_errors_are_reported_at_once_sorted_by_path() -> None:
    doc = setpath(base(), "zeta", 1)
    doc = setpath(doc, "stages[2].gate", "nobody")
    doc = setpath(doc, "alpha", 1)
    doc = setpath(doc, "stages[0].size", [])
    doc = setpath(doc, "name", "BAD")
    error = refused(doc)
    assert [e.path for e in error.errors] == [
        "alpha",
        "name",
        "stages[0].size",
        "stages[2].gate",
        "zeta",
    ]
    assert "4 more" in error.reason


def test_indexes_sort_numerically() -> None:
    doc = base()
    doc["stages"] = [{"name": f"s{i}", "size": 1, "bogus": 1} for i in range(12)]
    error = refused(doc)
    assert [e.path for e in error.errors][:3] == [
        "stages[0].bogus",
        "stages[1].bogus",
        "stages[2].bogus",
    ]
    assert error.errors[-1].path == "stages[11].bogus"


def test_too_many_stages() -> None:
    doc = base()
    doc["stages"] = [{"name": f"s{i}", "size": 1} for i in range(21)]
    assert refused(doc).path == "stages"


def test_mixed_count_and_percent_sizes_are_allowed() -> None:
    doc = setpath(base(), "stages[0].size", 10)
    spec = S.parse_spec(doc)
    assert [s.size[0] for s in spec.stages] == ["count", "percent", "rest"]


def test_percent_sizes_may_sum_to_exactly_100() -> None:
    doc = setpath(base(), "stages[1].size", "95%")
    doc = setpath(doc, "stages[2]", DELETE)
    assert S.parse_spec(doc).stages[1].size == ("percent", Fraction(19, 20))


def test_factor_is_exact() -> None:
    spec = S.parse_spec(setpath(base(), "rate.factor", 1.1))
    assert spec.rate is not None and spec.rate.factor == Fraction(11, 10)
    assert spec.to_document()["rate"]["factor"] == 1.1


# --------------------------------------------------------------------------- YAML-level attacks

MINIMAL_TEXT = MINIMAL.read_text()

BAD_TEXTS: list[tuple[str, str | bytes, str]] = [
    ("duplicate-root-key", MINIMAL_TEXT + "name: other\n", "name"),
    (
        "duplicate-nested-key",
        MINIMAL_TEXT.replace("    size: 100%", "    size: 100%\n    size: 50%"),
        "stages[0].size",
    ),
    ("non-mapping-root-list", "- a\n- b\n", ""),
    ("non-mapping-root-scalar", "hello\n", ""),
    ("empty-document", "", ""),
    ("comment-only", "# nothing\n", ""),
    ("syntax-error", "a: [1,\n", ""),
    ("two-documents", MINIMAL_TEXT + "---\n" + MINIMAL_TEXT, ""),
    ("oversize", MINIMAL_TEXT + "#" * S.MAX_INPUT_BYTES, ""),
    ("not-utf8", b"name: \xff\xfe\n", ""),
    (
        "alias",
        MINIMAL_TEXT + "windows:\n  - &w {cron: '0 1 * * *', duration: 1h}\n  - *w\n",
        "windows[1]",
    ),
    ("merge-key", MINIMAL_TEXT + "timeouts:\n  <<: {device: 1h}\n", "timeouts"),
    ("non-string-key", MINIMAL_TEXT + "1: x\n", ""),
    (
        "yaml-1-1-boolean-is-a-string",
        MINIMAL_TEXT.replace("size: 100%", "size: yes"),
        "stages[0].size",
    ),
    (
        "timestamp-is-a-string",
        MINIMAL_TEXT + "description: 2024-01-01\nfreshness: {max_clock_skew: 2024-01-01}\n",
        "freshness.max_clock_skew",
    ),
    ("nan", MINIMAL_TEXT + "rate: {base_per_minute: 1, factor: .nan}\n", "rate.factor"),
]


@pytest.mark.parametrize(
    ("text", "error_path"),
    [case[1:] for case in BAD_TEXTS],
    ids=[case[0] for case in BAD_TEXTS],
)
def test_bad_yaml_is_refused_with_its_path(text: str | bytes, error_path: str) -> None:
    error = refused(text, source="f.yaml")
    assert [e.path for e in error.errors] == [error_path], [str(e) for e in error.errors]
    if not error_path:
        assert str(error).startswith("f.yaml: <root>: ")


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]
    error = refused("\n".join(lines) + "\n")
    assert "aliases" in error.reason


def test_yaml_1_1_pitfalls_read_as_written() -> None:
    text = MINIMAL_TEXT + "retries:\n  max: 010\n  on: [timed_out]\n"
    spec = S.parse_spec(text)
    assert spec.retries.max == 10  # decimal, not octal 8
    assert spec.retries.on == {"timed_out"}  # the key "on" is not the boolean True


def test_non_json_values_in_an_api_dict_are_refused() -> None:
    doc = setpath(base(), "description", b"bytes")
    assert refused(doc).path == "description"
    assert refused(setpath(base(), "stages[0].min_finished", float("inf"))).path == (
        "stages[0].min_finished"
    )


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        S.load_spec_file(tmp_path / "nope.yaml")
    assert info.value.source.endswith("nope.yaml") and info.value.path == ""


def test_oversize_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (S.MAX_INPUT_BYTES * 4))
    with pytest.raises(SpecError, match="larger than"):
        S.load_spec_file(big)


# --------------------------------------------------------------------------- scalars


@given(st.integers(min_value=0, max_value=366 * 86400))
def test_duration_round_trip(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    text = S.format_duration(value)
    assert S.parse_duration(text) == value
    assert S.parse_duration(seconds) == value
    assert S.format_duration(S.parse_duration(text)) == text


@given(st.integers(min_value=0, max_value=10000))
def test_percent_round_trip(hundredths: int) -> None:
    share = Fraction(hundredths, 10000)
    text = S.format_percent(share)
    assert S.parse_percent(text) == share
    assert S.format_percent(S.parse_percent(text)) == text


@given(st.text(max_size=12))
def test_parse_duration_only_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        S.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("1d2h3m4s", 93784)],
)
def test_duration_examples(text: str, seconds: int) -> None:
    assert S.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "10", "1.5h", "1H", "-1m", "1h 30m", "m", "1w", "30m1h", "1m1m"]
)
def test_duration_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        S.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "share"),
    [
        ("95%", Fraction(19, 20)),
        ("12.5%", Fraction(1, 8)),
        ("0.01%", Fraction(1, 10000)),
        ("100%", Fraction(1)),
    ],
)
def test_percent_examples(text: str, share: Fraction) -> None:
    assert S.parse_percent(text) == share


@pytest.mark.parametrize("text", ["95", "0.95", "101%", "1.234%", "-5%", " 5%", "5 %", "%"])
def test_percent_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        S.parse_percent(text)


# --------------------------------------------------------------------------- version constraint


@pytest.mark.parametrize(
    ("constraint", "version", "expected"),
    [
        (">=1.0.0,<2.0.0", (1, 0, 0), True),
        (">=1.0.0,<2.0.0", (1, 9, 99, 7), True),
        (">=1.0.0,<2.0.0", (2, 0, 0), False),
        (">=1.0.0,<2.0.0", (0, 9, 9), False),
        ("!=1.2.3", (1, 2, 3, 0), False),
        ("!=1.2.3", (1, 2, 3, 1), True),
        ("==1.2.3+4", (1, 2, 3, 4), True),
        (">1.2.3", (1, 2, 3, 1), True),
        ("<=1.2.3", (1, 2, 3), True),
    ],
)
def test_version_constraint(constraint: str, version: tuple[int, ...], expected: bool) -> None:
    assert S.VersionConstraint.parse(constraint).matches(version) is expected


def test_version_constraint_canonical_text() -> None:
    assert str(S.VersionConstraint.parse(" >= 1.0.0 , <2.0.0+0")) == ">=1.0.0,<2.0.0"


# --------------------------------------------------------------------------- helpers


def test_retry_delay_and_eligibility() -> None:
    retries = S.parse_spec(base()).retries  # max 2, 1m, factor 2
    assert [retries.delay(n) for n in (1, 2, 3)] == [timedelta(minutes=m) for m in (1, 2, 4)]
    assert retries.retryable("connection_lost", attempt=2)
    assert not retries.retryable("connection_lost", attempt=3)
    assert not retries.retryable("integrity_check_failed", attempt=1)


def test_failure_reasons_cover_update_results_2_to_11() -> None:
    assert sorted(S.FAILURE_REASON_BY_UPDATE_RESULT) == list(range(2, 12))
    assert S.FAILURE_REASONS[10:] == (
        "timed_out",
        "dispatch_failed",
        "device_busy",
        "update_never_started",
        "no_supported_delivery",
        "push_refused",
        "report_missing",
        "report_malformed",
        "report_forged",
        "report_wrong_manifest",
        "report_replayed",
        "report_failure",
        "wrong_precursor",
    )
    enum = S.schema()["properties"]["retries"]["properties"]["on"]["items"]["enum"]
    assert tuple(enum) == S.FAILURE_REASONS


def test_schema_is_draft_2020_12_and_closed_everywhere() -> None:
    schema = S.schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)

    def objects(node: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(node, dict):
            if "properties" in node:
                found.append(node)
            for value in node.values():
                found += objects(value)
        elif isinstance(node, list):
            for value in node:
                found += objects(value)
        return found

    assert all(o.get("additionalProperties") is False for o in objects(schema))
    schema["title"] = "mutated"
    assert S.schema()["title"] != "mutated"


def test_error_tree_codes_are_stable() -> None:
    expected = {
        SpecError: "campaign.spec_invalid",
        UnknownReleaseError: "campaign.unknown_release",
        UnknownTargetError: "campaign.unknown_target",
        CampaignStateError: "campaign.state",
        CampaignConflictError: "campaign.conflict",
        GateError: "campaign.gate",
        EmergencyStopError: "campaign.emergency_stop",
    }
    for cls, code in expected.items():
        assert issubclass(cls, CampaignError) and cls.code == code and cls.__doc__
    error = SpecError("unknown release 'x'", source="f.yaml", path="release")
    assert str(error) == "f.yaml: release: unknown release 'x'"
    assert error.errors == [error]
    assert str(SpecError("bad", source="<api>")) == "<api>: <root>: bad"


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        ("rollback-thermo-1.2.0-r2", "campaign", "rollback-thermo-1-2-0-r2-campaign"),
        ("Thermo 1.2.0+7", "", "thermo-1-2-0-7"),
        ("...", "campaign", "campaign-campaign"),
        ("a" * 80, "campaign", "a" * 54 + "-campaign"),
        ("x" * 53 + ".y", "campaign", "x" * 53 + "-campaign"),
    ],
)
def test_derived_names_from_release_names_are_valid_campaign_names(
    text: str, suffix: str, expected: str
) -> None:
    name = S.derive_name(text, suffix=suffix)
    assert name == expected
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name)
