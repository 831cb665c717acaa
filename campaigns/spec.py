"""Campaign spec: parse, validate and normalise a YAML/JSON campaign document. Pure (no Django).

Invariants this module enforces (tests in ``tests/campaigns/test_spec.py``):

* A spec is accepted only if it passes the published JSON Schema
  (``campaigns/schema/campaign.schema.json``, draft 2020-12, no unknown keys anywhere) **and** the
  cross-field rules below; every problem is reported as a :class:`SpecError` naming the source,
  the field path (``stages[1].size``) and the reason, all problems at once, sorted by path.
* Nothing is resolved against the database here: release and device-class existence are the
  service's job (it raises ``SpecError`` with path ``release`` / ``target.device_class``).
* Percentages are exact :class:`fractions.Fraction` values (``"12.5%"`` is ``1/8``), never floats;
  durations are :class:`datetime.timedelta` of whole seconds.
* YAML is read with a strict loader: YAML 1.2 scalars only (``on``/``yes``/``no`` stay strings, no
  octal or sexagesimal numbers, no timestamps), duplicate keys, anchors/aliases and merge keys are
  refused, one document only, input at most :data:`MAX_INPUT_BYTES`.
* ``CampaignSpec.to_document()`` is canonical (defaults filled in, sets sorted, durations and
  percents in one spelling) and parses back to an equal spec, so ``digest()`` is the same for the
  same spec however the file is formatted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from cronsim import CronSim, CronSimError

from campaigns.errors import SpecError
from manifests.versions import VersionError, format_version, parse_version

API_VERSION = "fwupd/v1"
KIND = "Campaign"
# A spec is a page of YAML; anything near this size is a mistake or an attack.
MAX_INPUT_BYTES = 256 * 1024
# Window durations are bounded so "is a window open now?" needs only a bounded look back.
MAX_WINDOW_DURATION = timedelta(days=7)
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "campaign.schema.json"

# Failure reasons a device rollout can end with. The first ten map LwM2M Object 5 Update Result
# (/5/0/5) codes 2..11 as defined for Object 5 in LwM2M 1.1 (11 "deferred" arrived with the 1.1
# object; a 1.0 client reports 0..9); the rest are the server's own.
FAILURE_REASON_BY_UPDATE_RESULT: dict[int, str] = {
    2: "no_space",  # not enough flash memory for the new package
    3: "out_of_memory",  # out of RAM during download
    4: "connection_lost",  # connection lost during download
    5: "integrity_check_failed",  # integrity check failure for the downloaded package
    6: "unsupported_package",  # unsupported package type
    7: "invalid_uri",
    8: "update_failed",  # firmware update failed (install/boot/confirm)
    9: "unsupported_protocol",
    10: "cancelled",  # firmware update cancelled
    11: "deferred",  # firmware update deferred by the device
}
FAILURE_REASONS: tuple[str, ...] = (
    *FAILURE_REASON_BY_UPDATE_RESULT.values(),
    "timed_out",  # timeouts.device elapsed between dispatch and confirmed success
    "dispatch_failed",  # the server could not hand the update to the device
    "device_busy",  # the device was in another update and did not take this one
    "update_never_started",  # the device took the package and its State never moved
    "no_supported_delivery",  # neither a pull the device can make nor a push it takes
    "push_refused",  # the device refused the pushed package without an Update Result
    # A SUIT device's signed report (``campaigns.rollouts``): none, unreadable, not signed by
    # the device's key, about another manifest, of another attempt, or saying it failed.
    "report_missing",
    "report_malformed",
    "report_forged",
    "report_wrong_manifest",
    "report_replayed",
    "report_failure",
    # A delta refused by the device because its base is not the device's running image (the
    # signed SUIT report says so, or an image device's Package Name with Update Result 6).
    "wrong_precursor",
)

GATE_ROLES = ("qa", "security", "fleet_operator", "admin")
FAILURE_ACTIONS = ("pause", "abort")

DEFAULT_SOAK = timedelta(0)
DEFAULT_SUCCESS_THRESHOLD = Fraction(1)
DEFAULT_FAILURE_THRESHOLD = Fraction(1)  # failure trips when the share *exceeds* it: never
DEFAULT_MIN_FINISHED = 1
DEFAULT_RATE_STEP = timedelta(minutes=5)
DEFAULT_DEVICE_TIMEOUT = timedelta(hours=1)
DEFAULT_UNREACHABLE_AFTER = timedelta(hours=24)
DEFAULT_RETRY_BACKOFF = timedelta(minutes=1)
DEFAULT_RETRY_FACTOR = Fraction(2)
DEFAULT_RETRY_ON: tuple[str, ...] = ("connection_lost", "dispatch_failed", "device_busy")
DEFAULT_MAX_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_TIMEZONE = "UTC"


# --------------------------------------------------------------------------- scalars

# The schema's ``$defs/name``: campaign and stage names.
NAME_MAX_LENGTH = 63
_NOT_NAME = re.compile(r"[^a-z0-9]+")


def derive_name(text: str, *, suffix: str = "") -> str:
    """A valid campaign name made from ``text`` (a release name such as ``thermo-1.2.0-r2``):
    lower case, each run of other characters one dash, cut so that ``-<suffix>`` still fits.
    Release names allow dots and capitals; campaign names do not, and a derived name must
    never be the reason a launch fails."""
    tail = f"-{suffix}" if suffix else ""
    base = _NOT_NAME.sub("-", text.lower()).strip("-")
    base = base[: NAME_MAX_LENGTH - len(tail)].rstrip("-") or "campaign"
    return f"{base}{tail}"


_DURATION = re.compile(r"^(?=\d)(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_MAX_DURATION_SECONDS = 366 * 86400
_PERCENT = re.compile(r"^(\d{1,3})(?:\.(\d{1,2}))?%$")


def parse_duration(value: str | int) -> timedelta:
    """``"1h30m"``, ``"30s"``, ``"7d"`` or an integer of seconds -> a timedelta (0 .. 366 days).

    Units must appear in the order d, h, m, s, each at most once, so every duration has one
    obvious spelling; :func:`format_duration` produces the canonical one.
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a string such as 10m or an integer of seconds")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration such as 30s, 10m, 2h, 7d or 1h30m")
        d, h, m, s = (int(g) if g else 0 for g in match.groups())
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    else:
        raise ValueError("a duration is a string such as 10m or an integer of seconds")
    if not 0 <= seconds <= _MAX_DURATION_SECONDS:
        raise ValueError(f"duration {value!r} is outside 0s .. 366d")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The canonical spelling: largest units first, zero parts left out, ``"0s"`` for zero."""
    total = int(value.total_seconds())
    if total < 0 or timedelta(seconds=total) != value:
        raise ValueError("only non-negative whole seconds have a duration spelling")
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_percent(value: str) -> Fraction:
    """``"95%"`` -> ``Fraction(19, 20)``; at most two decimal places, 0% .. 100%."""
    if not isinstance(value, str):
        raise ValueError("a percentage is a string such as 95% or 12.5%")
    match = _PERCENT.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a percentage such as 95% or 12.5%")
    whole, decimals = match.group(1), match.group(2) or ""
    share = Fraction(int(whole + decimals), 100 * 10 ** len(decimals))
    if share > 1:
        raise ValueError(f"{value} is over 100%")
    return share


def format_percent(share: Fraction) -> str:
    """Inverse of :func:`parse_percent`: ``Fraction(1, 8)`` -> ``"12.5%"``."""
    hundredths = share * 10000
    if hundredths.denominator != 1 or not 0 <= share <= 1:
        raise ValueError(f"{share} is not a percentage with at most 2 decimal places")
    whole, frac = divmod(int(hundredths), 100)
    return f"{whole}%" if frac == 0 else f"{whole}.{frac:02d}".rstrip("0") + "%"


def _parse_factor(value: int | float) -> Fraction:
    # YAML gives floats; the shortest decimal repr is what the author wrote (1.5, 1.25).
    factor = Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
    if (factor * 100).denominator != 1:
        raise ValueError(f"{value} has more than 2 decimal places")
    return factor


def _format_factor(value: Fraction) -> int | float:
    return value.numerator if value.denominator == 1 else float(value)


_CLAUSE = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(\d+\.\d+\.\d+(?:\+\d+)?)\s*$")
_COMPARE = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}
Version = tuple[int, int, int, int]


@dataclass(frozen=True)
class VersionConstraint:
    """All clauses must hold; versions compare as (major, minor, revision, build) like MCUboot."""

    clauses: tuple[tuple[str, Version], ...]

    @classmethod
    def parse(cls, text: str) -> VersionConstraint:
        """``">=1.0.0,<2.0.0"``: comma-separated ``(==|!=|>=|<=|>|<) major.minor.revision[+build]``.

        Raises ValueError for bad syntax, out-of-range numbers and contradictions that no version
        can satisfy (an empty range, two different ``==``).
        """
        if not text.strip():
            raise ValueError("the version constraint is empty")
        clauses: list[tuple[str, Version]] = []
        for raw in text.split(","):
            match = _CLAUSE.match(raw)
            if not match:
                raise ValueError(
                    f"clause {raw.strip()!r} is not (==|!=|>=|<=|>|<) major.minor.revision[+build]"
                )
            try:
                version = parse_version(match.group(2))
            except VersionError as exc:
                raise ValueError(str(exc)) from None
            clauses.append((match.group(1), version))
        constraint = cls(tuple(clauses))
        constraint._check_satisfiable()
        return constraint

    def _check_satisfiable(self) -> None:
        lower: tuple[Version, bool] | None = None  # (bound, inclusive)
        upper: tuple[Version, bool] | None = None
        for op, v in self.clauses:
            if op in (">=", ">", "=="):
                cand = (v, op != ">")
                if lower is None or cand[0] > lower[0] or (cand[0] == lower[0] and not cand[1]):
                    lower = cand
            if op in ("<=", "<", "=="):
                cand = (v, op != "<")
                if upper is None or cand[0] < upper[0] or (cand[0] == upper[0] and not cand[1]):
                    upper = cand
        if lower and upper:
            (lo, lo_inc), (hi, hi_inc) = lower, upper
            if (
                lo > hi
                or (lo == hi and not (lo_inc and hi_inc))
                or (lo == hi and not self.matches(lo))
            ):
                raise ValueError(f"no version satisfies {self}")

    def matches(self, version: Sequence[int]) -> bool:
        """True if ``version`` (3 or 4 integers; a missing build is 0) satisfies every clause."""
        parts = tuple(version)
        if len(parts) == 3:
            parts = (*parts, 0)
        if len(parts) != 4:
            raise ValueError("a version is (major, minor, revision[, build])")
        return all(_COMPARE[op](parts, v) for op, v in self.clauses)

    def __str__(self) -> str:
        return ",".join(f"{op}{format_version(v)}" for op, v in self.clauses)


# --------------------------------------------------------------------------- the spec

SizeKind = Literal["percent", "count", "rest"]


@dataclass(frozen=True)
class TargetSpec:
    """Which devices: a class, then tag/version/endpoint filters (all must hold)."""

    device_class: str  # "vendor-domain/class-name"
    tags_any: frozenset[str] = frozenset()  # empty: no constraint
    tags_all: frozenset[str] = frozenset()
    exclude_tags: frozenset[str] = frozenset()
    version: VersionConstraint | None = None
    include: frozenset[str] | None = None  # None: every endpoint of the class
    exclude: frozenset[str] = frozenset()
    offline_max: timedelta | None = None
    # A saved device group (``campaigns.models.DeviceGroup``): only its members. Resolved by the
    # service and frozen at creation (``Campaign.target_members``), then applied as an include
    # list (``CampaignSpec.narrowed``); the spec itself names the group only.
    group: str | None = None

    @property
    def vendor_domain(self) -> str:
        return self.device_class.split("/", 1)[0]

    @property
    def class_name(self) -> str:
        return self.device_class.split("/", 1)[1]

    def tags_match(self, tags: frozenset[str]) -> bool:
        """The tag part of the selector, for the planner and for devices that join later."""
        if self.tags_any and not (tags & self.tags_any):
            return False
        return self.tags_all <= tags and not (tags & self.exclude_tags)

    def endpoint_match(self, endpoint: str) -> bool:
        if self.include is not None and endpoint not in self.include:
            return False
        return endpoint not in self.exclude


@dataclass(frozen=True)
class StageSpec:
    """One stage; thresholds are exact fractions in [0, 1]. Evaluated by campaigns/stages.py."""

    name: str
    size: tuple[SizeKind, Fraction | int | None]
    soak: timedelta = DEFAULT_SOAK
    success_threshold: Fraction = DEFAULT_SUCCESS_THRESHOLD
    failure_threshold: Fraction = DEFAULT_FAILURE_THRESHOLD
    min_finished: int = DEFAULT_MIN_FINISHED
    failure_action: str = "pause"
    gate: str | None = None
    max_in_flight: int | None = None


@dataclass(frozen=True)
class RateSpec:
    """Exponential ramp; see :mod:`campaigns.ramp` for the exact rule."""

    base_per_minute: int
    factor: Fraction = Fraction(1)
    step: timedelta = DEFAULT_RATE_STEP
    max_per_minute: int = 0  # filled in: base_per_minute when factor is 1
    increase_if_failure_rate_below: Fraction = Fraction(1)


@dataclass(frozen=True)
class WindowSpec:
    """A maintenance window: opens at each cron time (local to ``timezone``) for ``duration``."""

    cron: str
    duration: timedelta
    timezone: str = DEFAULT_TIMEZONE
    tags: frozenset[str] = frozenset()  # empty: an untagged window

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


@dataclass(frozen=True)
class TimeoutSpec:
    device: timedelta = DEFAULT_DEVICE_TIMEOUT
    unreachable_after: timedelta = DEFAULT_UNREACHABLE_AFTER


@dataclass(frozen=True)
class RetrySpec:
    max: int = 0
    backoff: timedelta = DEFAULT_RETRY_BACKOFF
    factor: Fraction = DEFAULT_RETRY_FACTOR
    on: frozenset[str] = frozenset(DEFAULT_RETRY_ON)

    def delay(self, attempt: int) -> timedelta:
        """Wait before retry ``attempt`` (from 1): backoff * factor**(attempt-1), whole seconds."""
        if attempt < 1:
            raise ValueError("attempts are numbered from 1")
        seconds = self.backoff.total_seconds() * self.factor ** (attempt - 1)
        return timedelta(seconds=math.floor(seconds))

    def retryable(self, reason: str, *, attempt: int) -> bool:
        """May a device that failed ``attempt`` times (1-based) with ``reason`` be tried again?"""
        return reason in self.on and attempt <= self.max


@dataclass(frozen=True)
class FreshnessSpec:
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    # The target: a release by name, or (``trust_policy``, a version) a released device trust
    # policy of ``target.device_class``; exactly one is given ("" / None for the other).
    release: str
    description: str
    target: TargetSpec
    stages: tuple[StageSpec, ...]
    rate: RateSpec | None = None
    windows: tuple[WindowSpec, ...] = ()
    timeouts: TimeoutSpec = field(default_factory=TimeoutSpec)
    retries: RetrySpec = field(default_factory=RetrySpec)
    freshness: FreshnessSpec = field(default_factory=FreshnessSpec)
    # Nothing is dispatched before this instant (aware, UTC, whole seconds); None: at once.
    start_at: datetime | None = None
    trust_policy: int | None = None

    @property
    def target_label(self) -> str:
        """The release's name, or "trust policy vN"."""
        return self.release if self.trust_policy is None else f"trust policy v{self.trust_policy}"

    def to_document(self) -> dict[str, Any]:
        """Canonical, JSON-serialisable form with every default filled in; parses back equal.
        ``start_at`` appears only when set, so the digest of a spec written before it existed
        is unchanged (re-applying such a file is still "unchanged")."""
        t = self.target
        document: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            # A release campaign's document is what it was before trust-policy campaigns
            # existed (its digest unchanged); a trust-policy campaign's names the version.
            **(
                {"release": self.release}
                if self.trust_policy is None
                else {"trust_policy": self.trust_policy}
            ),
            "description": self.description,
            "target": {
                "device_class": t.device_class,
                "tags_any": sorted(t.tags_any),
                "tags_all": sorted(t.tags_all),
                "exclude_tags": sorted(t.exclude_tags),
                "version": None if t.version is None else str(t.version),
                "include": None if t.include is None else sorted(t.include),
                "exclude": sorted(t.exclude),
                "offline_max": None if t.offline_max is None else format_duration(t.offline_max),
                # Written only when set, so that the digest of every spec without a group
                # stays what it was before groups existed (re-applying it is still a no-op).
                **({"group": t.group} if t.group is not None else {}),
            },
            "stages": [_stage_document(s) for s in self.stages],
            "rate": None if self.rate is None else _rate_document(self.rate),
            "windows": [
                {
                    "cron": w.cron,
                    "duration": format_duration(w.duration),
                    "timezone": w.timezone,
                    "tags": sorted(w.tags),
                }
                for w in self.windows
            ],
            "timeouts": {
                "device": format_duration(self.timeouts.device),
                "unreachable_after": format_duration(self.timeouts.unreachable_after),
            },
            "retries": {
                "max": self.retries.max,
                "backoff": format_duration(self.retries.backoff),
                "factor": _format_factor(self.retries.factor),
                "on": sorted(self.retries.on),
            },
            "freshness": {"max_clock_skew": format_duration(self.freshness.max_clock_skew)},
        }
        if self.start_at is not None:
            document["start_at"] = format_timestamp(self.start_at)
        return document

    def canonical_json(self) -> bytes:
        return json.dumps(
            self.to_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON: equal for equal specs, whatever the formatting."""
        return hashlib.sha256(self.canonical_json()).hexdigest()

    def narrowed(self, members: frozenset[str]) -> CampaignSpec:
        """The spec a ``target.group`` campaign runs: its include list cut to the group's members
        (as frozen at creation). Not a document of its own: never stored, digested or diffed."""
        include = members if self.target.include is None else self.target.include & members
        return replace(self, target=replace(self.target, include=include))


def parse_timestamp(value: str) -> datetime:
    """An ISO-8601 timestamp with a UTC offset (``2026-12-08T09:00:00+01:00``, ``...Z``) as an
    aware UTC datetime; a time without an offset is refused (whose 09:00 would it be?)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from exc
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"needs a UTC offset (Z or +01:00): {value!r}")
    if moment.microsecond:
        raise ValueError(f"whole seconds only: {value!r}")
    return moment.astimezone(UTC)


def format_timestamp(moment: datetime) -> str:
    """The canonical spelling: UTC, whole seconds, ``Z`` (``2026-12-08T08:00:00Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stage_document(s: StageSpec) -> dict[str, Any]:
    value = s.size[1]
    size: str | int = "rest"
    if isinstance(value, Fraction):
        size = format_percent(value)
    elif isinstance(value, int):
        size = value
    return {
        "name": s.name,
        "size": size,
        "soak": format_duration(s.soak),
        "success_threshold": format_percent(s.success_threshold),
        "failure_threshold": format_percent(s.failure_threshold),
        "min_finished": s.min_finished,
        "failure_action": s.failure_action,
        "gate": s.gate,
        "max_in_flight": s.max_in_flight,
    }


def _rate_document(r: RateSpec) -> dict[str, Any]:
    return {
        "base_per_minute": r.base_per_minute,
        "factor": _format_factor(r.factor),
        "step": format_duration(r.step),
        "max_per_minute": r.max_per_minute,
        "increase_if_failure_rate_below": format_percent(r.increase_if_failure_rate_below),
    }


# --------------------------------------------------------------------------- schema


@functools.cache
def _schema() -> dict[str, Any]:
    with SCHEMA_PATH.open(encoding="utf-8") as fh:
        loaded: dict[str, Any] = json.load(fh)
    return loaded


def schema() -> dict[str, Any]:
    """The published JSON Schema (a fresh copy, so callers cannot alter the cached one)."""
    copied: dict[str, Any] = json.loads(json.dumps(_schema()))
    return copied


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(_schema())
    cls.check_schema(_schema())
    validator: jsonschema.protocols.Validator = cls(_schema())
    return validator


def format_path(parts: Sequence[str | int]) -> str:
    """``["stages", 1, "size"]`` -> ``"stages[1].size"``; ``[]`` -> ``""`` (the root)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _schema_problems(document: Any) -> list[tuple[str, str]]:
    """One reason per path where a wrong type makes the other keywords' complaints noise."""
    problems: list[tuple[str, str, str]] = list(_raw_schema_problems(document))
    typed = {path for path, keyword, _ in problems if keyword == "type"}
    return [(p, r) for p, keyword, r in problems if p not in typed or keyword == "type"]


def _raw_schema_problems(document: Any) -> Iterator[tuple[str, str, str]]:
    """(path, keyword, reason) for every schema violation, reasons in plain words."""
    for error in _validator().iter_errors(document):
        path = list(error.absolute_path)
        here = format_path(path)
        keyword = str(error.validator)
        schema_part = error.schema if isinstance(error.schema, dict) else {}
        described = schema_part.get("description")
        instance = error.instance
        if keyword == "additionalProperties":
            allowed = ", ".join(sorted(schema_part.get("properties", {})))
            for key in sorted(k for k in instance if k not in schema_part.get("properties", {})):
                yield format_path([*path, key]), keyword, f"unknown key (allowed: {allowed})"
        elif keyword == "required":
            for key in error.validator_value:
                if key not in instance:
                    yield format_path([*path, key]), keyword, "required key is missing"
        elif keyword == "const":
            yield here, keyword, f"must be {error.validator_value!r}, not {instance!r}"
        elif keyword == "enum":
            choices = ", ".join("null" if c is None else str(c) for c in error.validator_value)
            yield here, keyword, f"{instance!r} is not one of: {choices}"
        elif keyword == "type":
            expected = error.validator_value
            names = " or ".join(expected) if isinstance(expected, list) else str(expected)
            reason = f"expected {names}, got {_json_type(instance)}"
            yield here, keyword, f"{reason} ({described})" if described else reason
        elif keyword in ("pattern", "minimum", "maximum", "maxLength", "minLength") and described:
            yield here, keyword, f"{instance!r} is not {described}"
        elif keyword == "minItems":
            yield here, keyword, f"must have at least {error.validator_value} item(s)"
        elif keyword == "maxItems":
            yield here, keyword, f"must have at most {error.validator_value} item(s)"
        elif keyword == "uniqueItems":
            yield here, keyword, "items must be unique"
        else:
            yield here, keyword, error.message


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --------------------------------------------------------------------------- YAML


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars and no aliases (checked on the node tree)."""


_DROPPED_TAGS = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.2 core schema: only true/false are booleans ("on", "yes", "no" are strings: the
# retries key ``on`` must stay a key), integers are decimal, floats need digits.
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789")
)
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


def _construct_decimal_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    # PyYAML's int constructor reads "010" as octal and "1:30" as sexagesimal; here it is decimal.
    return int(str(loader.construct_scalar(node)), 10)  # type: ignore[arg-type]


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _construct_decimal_int)

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_nodes(node: yaml.Node, path: list[str | int], problems: list[tuple[str, str]]) -> None:
    """Duplicate keys, aliases and merge keys, found on the composed tree before construction.

    A node reached twice is an alias (the composer shares the anchored node); walking each node
    once keeps this linear however many aliases a "billion laughs" document stacks up.
    """
    seen: set[int] = set()

    def walk(n: yaml.Node, p: list[str | int]) -> None:
        if id(n) in seen:
            problems.append((format_path(p), "YAML anchors and aliases are not supported"))
            return
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in n.value:
                if key_node.tag == _MERGE_TAG:
                    problems.append((format_path(p), "YAML merge keys (<<) are not supported"))
                    continue
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                    problems.append(
                        (
                            format_path(p),
                            f"keys must be strings (line {key_node.start_mark.line + 1})",
                        )
                    )
                    continue
                key = str(key_node.value)
                if key in keys:
                    problems.append(
                        (
                            format_path([*p, key]),
                            f"duplicate key (line {key_node.start_mark.line + 1})",
                        )
                    )
                keys.add(key)
                walk(value_node, [*p, key])
        elif isinstance(n, yaml.SequenceNode):
            for index, item in enumerate(n.value):
                walk(item, [*p, index])

    walk(node, path)


def _load_yaml(text: str, source: str) -> Any:
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the document is empty; expected a mapping", source=source)
        problems: list[tuple[str, str]] = []
        _check_nodes(node, [], problems)
        if problems:
            raise _many(problems, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"YAML error{where}: {exc.problem or exc.context}", source=source) from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise SpecError(f"YAML error: {exc}", source=source) from None
    finally:
        loader.dispose()


def _check_json_data(value: Any, path: list[str | int], problems: list[tuple[str, str]]) -> None:
    """Only JSON's data model reaches the schema (API dicts may carry anything)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append((format_path(path), f"keys must be strings, not {key!r}"))
                continue
            _check_json_data(item, [*path, key], problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_data(item, [*path, index], problems)
    elif isinstance(value, float):
        if not math.isfinite(value):
            problems.append((format_path(path), "numbers must be finite"))
    elif value is not None and not isinstance(value, str | int | bool):
        problems.append((format_path(path), f"unsupported value of type {type(value).__name__}"))


def _many(problems: list[tuple[str, str]], source: str) -> SpecError:
    unique = sorted(set(problems), key=lambda p: (_path_sort_key(p[0]), p[1]))
    errors = [SpecError(reason, source=source, path=path) for path, reason in unique]
    if len(errors) == 1:
        return errors[0]
    first = errors[0]
    return SpecError(
        f"{first.reason} (and {len(errors) - 1} more problem(s))",
        source=source,
        path=first.path,
        errors=errors,
    )


def _path_sort_key(path: str) -> tuple[tuple[int, int | str], ...]:
    # "stages[10]" sorts after "stages[2]": indexes compare as numbers.
    parts = re.findall(r"\[(\d+)\]|([^.\[\]]+)", path)
    return tuple((0, int(i)) if i else (1, k) for i, k in parts)


# --------------------------------------------------------------------------- entry points


def load_spec_file(path: str | os.PathLike[str]) -> CampaignSpec:
    """Read and parse a spec file (YAML or JSON); errors name the file as given."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read the file: {exc.strerror or exc}", source=source) from None
    return parse_spec(data, source=source)


def read_document(document: str | bytes, *, source: str = "<api>") -> Any:
    """Decode YAML/JSON text with the strict loader (size, UTF-8, YAML rules); no validation."""
    raw = document.encode("utf-8") if isinstance(document, str) else document
    if len(raw) > MAX_INPUT_BYTES:
        raise SpecError(f"the document is larger than {MAX_INPUT_BYTES} bytes", source=source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"the document is not UTF-8 ({exc.reason})", source=source) from None
    return _load_yaml(text.removeprefix("\ufeff"), source)


def parse_spec(document: str | bytes | dict[str, Any], *, source: str = "<api>") -> CampaignSpec:
    """Validate a spec given as YAML/JSON text or as an already decoded mapping (the API)."""
    data = read_document(document, source=source) if isinstance(document, bytes | str) else document
    if not isinstance(data, dict):
        raise SpecError(f"the document must be a mapping, not {_json_type(data)}", source=source)
    problems: list[tuple[str, str]] = []
    _check_json_data(data, [], problems)
    if problems:
        raise _many(problems, source)
    problems = list(_schema_problems(data))
    if "release" not in data and "trust_policy" not in data:
        # The schema requires neither alone (a campaign names one of the two); a document with
        # neither misses its release, as it always did.
        problems.append(("release", "required key is missing"))
    if problems:
        raise _many(problems, source)
    builder = _Builder()
    spec = builder.build(data)
    if builder.problems:
        raise _many(builder.problems, source)
    return spec


class _Builder:
    """Turns a schema-valid document into the dataclasses, collecting cross-field problems."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, path: str, reason: str) -> None:
        self.problems.append((path, reason))

    def duration(self, value: Any, path: str, *, minimum: timedelta = timedelta(0)) -> timedelta:
        try:
            result = parse_duration(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return minimum
        if result < minimum:
            self.fail(path, f"must be at least {format_duration(minimum)}")
        return result

    def percent(self, value: str, path: str, *, allow_zero: bool = True) -> Fraction:
        """The share, or (after recording the problem) a placeholder of 0 when it is unusable."""
        try:
            share = parse_percent(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return Fraction(0)
        if share == 0 and not allow_zero:
            self.fail(path, "must be more than 0%")
        return share

    def factor(self, value: int | float, path: str) -> Fraction:
        try:
            return _parse_factor(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return Fraction(1)

    def build(self, doc: dict[str, Any]) -> CampaignSpec:
        stages = self.stages(doc["stages"])
        if ("release" in doc) == ("trust_policy" in doc):
            self.fail(
                "release",
                "name exactly one target: release (a release's name) or trust_policy (the "
                "version of a released device trust policy of target.device_class)",
            )
        return CampaignSpec(
            name=doc["name"],
            release=doc.get("release") or "",
            trust_policy=doc.get("trust_policy"),
            description=doc.get("description") or "",
            target=self.target(doc["target"]),
            stages=stages,
            rate=self.rate(doc.get("rate")),
            windows=tuple(self.window(w, i) for i, w in enumerate(doc.get("windows", []))),
            timeouts=self.timeouts(doc.get("timeouts", {})),
            retries=self.retries(doc.get("retries", {})),
            freshness=FreshnessSpec(
                max_clock_skew=self.duration(
                    doc.get("freshness", {}).get("max_clock_skew", "5m"),
                    "freshness.max_clock_skew",
                )
            ),
            start_at=self.start_at(doc.get("start_at")),
        )

    def start_at(self, value: str | None) -> datetime | None:
        if value is None:
            return None
        try:
            return parse_timestamp(value)
        except ValueError as exc:
            self.fail("start_at", str(exc))
            return None

    def target(self, t: dict[str, Any]) -> TargetSpec:
        version = None
        if t.get("version") is not None:
            try:
                version = VersionConstraint.parse(t["version"])
            except ValueError as exc:
                self.fail("target.version", str(exc))
        tags_all, exclude_tags = (
            frozenset(t.get("tags_all", [])),
            frozenset(t.get("exclude_tags", [])),
        )
        tags_any = frozenset(t.get("tags_any", []))
        if tags_all & exclude_tags:
            both = ", ".join(sorted(tags_all & exclude_tags))
            self.fail("target.exclude_tags", f"excludes tags that tags_all requires: {both}")
        if tags_any and tags_any <= exclude_tags:
            self.fail("target.exclude_tags", "excludes every tag of tags_any; nothing can match")
        include = None if t.get("include") is None else frozenset(t["include"])
        exclude = frozenset(t.get("exclude", []))
        if include is not None and include & exclude:
            both = ", ".join(sorted(include & exclude))
            self.fail("target.exclude", f"excludes endpoints that include lists: {both}")
        offline_max = None
        if t.get("offline_max") is not None:
            offline_max = self.duration(
                t["offline_max"], "target.offline_max", minimum=timedelta(minutes=1)
            )
        return TargetSpec(
            device_class=t["device_class"],
            tags_any=tags_any,
            tags_all=tags_all,
            exclude_tags=exclude_tags,
            version=version,
            include=include,
            exclude=exclude,
            offline_max=offline_max,
            group=t.get("group"),
        )

    def stages(self, items: list[dict[str, Any]]) -> tuple[StageSpec, ...]:
        out: list[StageSpec] = []
        names: set[str] = set()
        percent_sum = Fraction(0)
        over_reported = False
        for i, s in enumerate(items):
            p = f"stages[{i}]"
            if s["name"] in names:
                self.fail(f"{p}.name", f"duplicate stage name {s['name']!r}")
            names.add(s["name"])
            raw = s["size"]
            size: tuple[SizeKind, Fraction | int | None]
            if raw == "rest":
                size = ("rest", None)
                if i != len(items) - 1:
                    self.fail(f"{p}.size", "'rest' is allowed only in the last stage")
            elif isinstance(raw, int):
                size = ("count", raw)
            else:
                share = self.percent(raw, f"{p}.size", allow_zero=False)
                size = ("percent", share)
                percent_sum += share  # an unusable share counts 0: one problem, reported once
                if percent_sum > 1 and not over_reported:
                    over_reported = True
                    self.fail(
                        f"{p}.size",
                        f"percent sizes sum to {_loose_percent(percent_sum)} (over 100%)",
                    )
            min_finished = s.get("min_finished", DEFAULT_MIN_FINISHED)
            if size[0] == "count" and isinstance(size[1], int) and min_finished > size[1]:
                self.fail(
                    f"{p}.min_finished",
                    f"{min_finished} is more than the stage's {size[1]} devices; "
                    "the failure threshold could never apply",
                )
            out.append(
                StageSpec(
                    name=s["name"],
                    size=size,
                    soak=self.duration(s.get("soak", 0), f"{p}.soak"),
                    success_threshold=self.percent(
                        s.get("success_threshold", "100%"),
                        f"{p}.success_threshold",
                        allow_zero=False,
                    ),
                    failure_threshold=self.percent(
                        s.get("failure_threshold", "100%"), f"{p}.failure_threshold"
                    ),
                    min_finished=min_finished,
                    failure_action=s.get("failure_action", "pause"),
                    gate=s.get("gate"),
                    max_in_flight=s.get("max_in_flight"),
                )
            )
        return tuple(out)

    def rate(self, r: dict[str, Any] | None) -> RateSpec | None:
        if r is None:
            return None
        base = r["base_per_minute"]
        factor = self.factor(r.get("factor", 1), "rate.factor")
        if "max_per_minute" in r:
            maximum = r["max_per_minute"]
            if maximum < base:
                self.fail("rate.max_per_minute", f"{maximum} is below base_per_minute ({base})")
        elif factor > 1:
            self.fail("rate.max_per_minute", "is required when factor is above 1")
            maximum = base
        else:
            maximum = base
        return RateSpec(
            base_per_minute=base,
            factor=factor,
            step=self.duration(r.get("step", "5m"), "rate.step", minimum=timedelta(minutes=1)),
            max_per_minute=maximum,
            increase_if_failure_rate_below=self.percent(
                r.get("increase_if_failure_rate_below", "100%"),
                "rate.increase_if_failure_rate_below",
                allow_zero=False,
            ),
        )

    def window(self, w: dict[str, Any], i: int) -> WindowSpec:
        p = f"windows[{i}]"
        cron = " ".join(w["cron"].split())
        problem = cron_problem(cron)
        if problem:
            self.fail(f"{p}.cron", problem)
        duration = self.duration(w["duration"], f"{p}.duration", minimum=timedelta(minutes=1))
        if duration > MAX_WINDOW_DURATION:
            self.fail(f"{p}.duration", f"must be at most {format_duration(MAX_WINDOW_DURATION)}")
        tz = w.get("timezone", DEFAULT_TIMEZONE)
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            self.fail(f"{p}.timezone", f"{tz!r} is not a known IANA timezone")
        return WindowSpec(
            cron=cron, duration=duration, timezone=tz, tags=frozenset(w.get("tags", []))
        )

    def timeouts(self, t: dict[str, Any]) -> TimeoutSpec:
        return TimeoutSpec(
            device=self.duration(
                t.get("device", "1h"), "timeouts.device", minimum=timedelta(minutes=1)
            ),
            unreachable_after=self.duration(
                t.get("unreachable_after", "24h"),
                "timeouts.unreachable_after",
                minimum=timedelta(minutes=1),
            ),
        )

    def retries(self, r: dict[str, Any]) -> RetrySpec:
        on = frozenset(r.get("on", DEFAULT_RETRY_ON))
        maximum = r.get("max", 0)
        if maximum > 0 and not on:
            self.fail("retries.on", "is empty, so retries.max could never apply")
        return RetrySpec(
            max=maximum,
            backoff=self.duration(r.get("backoff", "1m"), "retries.backoff"),
            factor=self.factor(r.get("factor", 2), "retries.factor"),
            on=on,
        )


def _loose_percent(share: Fraction) -> str:
    try:
        return format_percent(share)
    except ValueError:
        return f"{float(share * 100):g}%"


_CRON_PROBE = datetime(2000, 1, 1, tzinfo=UTC)


def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not an acceptable 5-field cron expression, or None if it is."""
    if len(expr.split()) != 5:
        return f"{expr!r} must have 5 fields (minute hour day-of-month month day-of-week)"
    try:
        next(CronSim(expr, _CRON_PROBE))
    except CronSimError as exc:
        return f"{expr!r} is not a valid cron expression: {exc}"
    except StopIteration:
        return f"{expr!r} never fires"
    return None


# --------------------------------------------------------------------------- diff


def spec_diff(old_doc: dict[str, Any], new_doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Changes between two canonical documents as ``{path, before, after}``, in document order.

    Mappings are compared key by key and lists of mappings (stages, windows) index by index;
    lists of scalars (tags, endpoints) are compared whole. A missing side is ``None``.
    """
    changes: list[dict[str, Any]] = []

    def walk(before: Any, after: Any, path: list[str | int]) -> None:
        if isinstance(before, dict) and isinstance(after, dict):
            keys = list(before) + [k for k in after if k not in before]
            for key in keys:
                walk(before.get(key), after.get(key), [*path, key])
        elif (
            isinstance(before, list)
            and isinstance(after, list)
            and all(isinstance(x, dict) for x in [*before, *after])
            and (before or after)
        ):
            for index in range(max(len(before), len(after))):
                walk(
                    before[index] if index < len(before) else None,
                    after[index] if index < len(after) else None,
                    [*path, index],
                )
        elif before != after or type(before) is not type(after):
            changes.append({"path": format_path(path), "before": before, "after": after})

    walk(old_doc, new_doc, [])
    return changes
