"""Fleet management rules, pure (no Django): tags, device filters, group names and the CSV format
of a bulk import.

Invariants this module enforces, so that the services and every entry point (CLI, API, console)
agree on them:

* A tag is 1..64 of ``A-Z a-z 0-9 _ . : -`` starting with a letter or digit (the campaign
  spec's tag rule, so a tag set here can be targeted by ``tags_any``); a device's tags are kept
  sorted and without duplicates.
* A device filter has only known keys (``FILTER_KEYS``), each validated; the empty filter is
  refused (a bulk change of the whole fleet must be asked for by listing what it selects, e.g.
  its class).
* An import is parsed completely before anything is written: every bad cell is reported as a
  ``RowError`` (row number as a spreadsheet shows it, the header being row 1; column; reason),
  and one bad row refuses the whole file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from manifests.suit import keys as suit_keys
from manifests.suit.errors import SUITError

TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
GROUP_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEVICE_CLASS_PATTERN = re.compile(r"^[a-z0-9.-]+/[^/\x00-\x1f\x7f]{1,200}$")
VERSION_PATTERN = re.compile(r"^[!-~]{1,64}$")
MAX_TAGS_PER_DEVICE = 100
# The longest endpoint the registry holds (Device.endpoint).
MAX_ENDPOINT_CHARS = 255

# LwM2M /5/0/3 State by name (what the filter's ``state`` means).
FW_STATES = {"idle": 0, "downloading": 1, "downloaded": 2, "updating": 3}
FILTER_KEYS = ("device_class", "version", "tag", "state", "online")

# Import limits: a file beyond them is refused before any row is looked at. 100,000 rows is a
# large provisioning batch and still one transaction of a few seconds.
MAX_IMPORT_BYTES = 16 * 1024 * 1024
MAX_IMPORT_ROWS = 100_000
IMPORT_COLUMNS = ("endpoint", "class", "tags", "psk_identity", "psk_key", "report_key")
REQUIRED_COLUMNS = ("endpoint",)
# Tags in one cell: separated by spaces or semicolons ("eu;beta", "eu beta").
_TAG_SEPARATORS = re.compile(r"[;\s]+")


class FleetError(Exception):
    """A fleet management operation was refused; nothing was written."""

    code = "fleet.error"


class TagError(FleetError):
    """A tag is not of the allowed form, or a device would carry too many."""

    code = "fleet.tag_invalid"


class FilterError(FleetError):
    """A device filter has an unknown key or an invalid value, or selects everything."""

    code = "fleet.filter_invalid"


class GroupError(FleetError):
    """A device group definition is invalid (name, members or filter)."""

    code = "fleet.group_invalid"


class UnknownGroupError(GroupError):
    """No device group has that name."""

    code = "fleet.group_unknown"


class GroupExistsError(GroupError):
    """A device group with that name exists already."""

    code = "fleet.group_exists"


class UnknownDevicesError(FleetError):
    """An explicit list of endpoints names devices the registry does not hold."""

    code = "fleet.unknown_devices"


class ImportRejectedError(FleetError):
    """An import file was refused as a whole: ``errors`` lists every problem found by row."""

    code = "fleet.import_rejected"

    def __init__(self, errors: list[RowError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.row, IMPORT_COLUMNS_ORDER.get(e.column, 99)))
        first = self.errors[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"import refused, nothing written: {first}{more}")

    def as_list(self) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self.errors]


IMPORT_COLUMNS_ORDER = {name: i for i, name in enumerate(IMPORT_COLUMNS)}


@dataclass(frozen=True)
class RowError:
    """One problem of an import file. ``row`` 0 means the file itself (size, header)."""

    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row else "file"
        return (
            f"{where}: {self.column or '-'}: {self.reason}"
            if self.column
            else f"{where}: {self.reason}"
        )

    @property
    def path(self) -> str:
        """The API error body's ``path``: ``rows[4].endpoint``, ``rows[1]`` (header), ``""``."""
        if not self.row:
            return ""
        return f"rows[{self.row}]" + (f".{self.column}" if self.column else "")

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "row": self.row, "column": self.column, "reason": self.reason}


# --------------------------------------------------------------------------- tags


def check_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
        raise TagError(
            f"{tag!r} is not a tag: 1 to 64 letters, digits, '_', '.', ':' or '-', starting "
            "with a letter or digit"
        )
    return tag


def check_tags(tags: Iterable[Any]) -> frozenset[str]:
    checked = frozenset(check_tag(t) for t in tags)
    if len(checked) > MAX_TAGS_PER_DEVICE:
        raise TagError(f"a device carries at most {MAX_TAGS_PER_DEVICE} tags")
    return checked


def split_tags(text: str) -> list[str]:
    """Tags written in one field (CLI option, form input, CSV cell): spaces or semicolons."""
    return [t for t in _TAG_SEPARATORS.split(text.strip()) if t]


@dataclass(frozen=True)
class TagChange:
    """What a tag operation does to each device: replace all (``set``), or add and remove."""

    add: frozenset[str] = frozenset()
    remove: frozenset[str] = frozenset()
    replace: frozenset[str] | None = None

    @classmethod
    def build(
        cls,
        *,
        add: Iterable[Any] = (),
        remove: Iterable[Any] = (),
        replace: Iterable[Any] | None = None,
    ) -> TagChange:
        change = cls(
            add=check_tags(add),
            remove=check_tags(remove),
            replace=None if replace is None else check_tags(replace),
        )
        if change.replace is not None and (change.add or change.remove):
            raise TagError("replace the tags (set) or add/remove them, not both at once")
        if change.replace is None and not (change.add or change.remove):
            raise TagError("nothing to change: give tags to add, remove or set")
        if change.add & change.remove:
            both = ", ".join(sorted(change.add & change.remove))
            raise TagError(f"a tag cannot be added and removed at once: {both}")
        return change

    def apply(self, tags: Iterable[str]) -> list[str]:
        """The device's tags after the change, sorted and without duplicates."""
        if self.replace is not None:
            result = set(self.replace)
        else:
            result = (set(tags) | self.add) - self.remove
        if len(result) > MAX_TAGS_PER_DEVICE:
            raise TagError(f"a device carries at most {MAX_TAGS_PER_DEVICE} tags")
        return sorted(result)

    def as_dict(self) -> dict[str, Any]:
        if self.replace is not None:
            return {"set": sorted(self.replace)}
        return {"add": sorted(self.add), "remove": sorted(self.remove)}


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class DeviceFilter:
    """Devices matching every given field: class ("vendor-domain/class-name"), installed
    firmware version (exact), a tag, an Object 5 state, online or not."""

    device_class: str | None = None
    version: str | None = None
    tag: str | None = None
    state: str | None = None
    online: bool | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> DeviceFilter:
        if not isinstance(data, Mapping):
            raise FilterError("a filter is a mapping of " + ", ".join(FILTER_KEYS))
        unknown = sorted(set(data) - set(FILTER_KEYS))
        if unknown:
            raise FilterError(
                f"unknown filter key(s) {', '.join(map(str, unknown))}; "
                f"allowed: {', '.join(FILTER_KEYS)}"
            )
        values = {k: v for k, v in data.items() if v is not None and v != ""}
        if not values:
            raise FilterError(
                "an empty filter would select every device; name at least one of "
                + ", ".join(FILTER_KEYS)
            )
        device_class = values.get("device_class")
        if device_class is not None and (
            not isinstance(device_class, str) or not DEVICE_CLASS_PATTERN.match(device_class)
        ):
            raise FilterError(f"device_class {device_class!r} is not vendor-domain/class-name")
        version = values.get("version")
        if version is not None and (
            not isinstance(version, str) or not VERSION_PATTERN.match(version)
        ):
            raise FilterError(f"version {version!r} is not a firmware version")
        tag = values.get("tag")
        if tag is not None:
            try:
                check_tag(tag)
            except TagError as exc:
                raise FilterError(f"tag: {exc}") from None
        state = values.get("state")
        if state is not None and state not in FW_STATES:
            raise FilterError(f"state {state!r} is not one of {', '.join(FW_STATES)}")
        online = values.get("online")
        if online is not None and not isinstance(online, bool):
            raise FilterError("online is true or false")
        return cls(device_class=device_class, version=version, tag=tag, state=state, online=online)

    def as_dict(self) -> dict[str, Any]:
        """Canonical form: only the keys that constrain, in ``FILTER_KEYS`` order."""
        return {k: getattr(self, k) for k in FILTER_KEYS if getattr(self, k) is not None}

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items())


def check_group_name(name: Any) -> str:
    if not isinstance(name, str) or not GROUP_NAME_PATTERN.match(name):
        raise GroupError(
            f"{name!r} is not a group name: 1 to 63 lowercase letters, digits and dashes, "
            "starting with a letter or digit"
        )
    return name


def check_endpoint(endpoint: Any) -> str:
    if (
        not isinstance(endpoint, str)
        or not endpoint
        or endpoint != endpoint.strip()
        or not endpoint.isprintable()
        or len(endpoint) > MAX_ENDPOINT_CHARS
    ):
        raise FleetError(
            f"{endpoint!r} is not an endpoint name (1 to {MAX_ENDPOINT_CHARS} printable "
            "characters, no surrounding spaces)"
        )
    return endpoint


# --------------------------------------------------------------------------- CSV import


@dataclass
class ImportRow:
    """One valid row of an import file (row number as a spreadsheet shows it)."""

    row: int
    endpoint: str
    device_class: str | None
    tags: list[str]
    psk: bytes | None
    report_key: str = ""  # the device's SUIT report public key, PEM as stored


@dataclass
class ParsedImport:
    rows: list[ImportRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def parse_import(
    data: bytes | str,
    *,
    max_psk_bytes: int,
    max_identity_bytes: int,
    max_rows: int = MAX_IMPORT_ROWS,
) -> ParsedImport:
    """Read and check an import file: header ``endpoint[,class][,tags][,psk_identity][,psk_key]
    [,report_key]`` (any order; unknown columns refused), one device a row; ``report_key`` is the
    device's SUIT report public key in PEM (a quoted, multi-line cell). Checks everything that
    needs no database (forms, lengths, duplicates within the file, the PSK rules of the DTLS
    transport: identity = endpoint, key 1..``max_psk_bytes`` bytes in hex; a report key that
    loads); the service adds the checks against the registry and the catalog."""
    out = ParsedImport()
    if isinstance(data, bytes):
        if len(data) > MAX_IMPORT_BYTES:
            out.errors.append(RowError(0, "", f"larger than {MAX_IMPORT_BYTES} bytes"))
            return out
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            out.errors.append(RowError(0, "", f"not UTF-8 text (byte {exc.start})"))
            return out
    else:
        text = data.removeprefix("\ufeff")
    if "\x00" in text:
        out.errors.append(RowError(0, "", "contains a NUL character"))
        return out
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        out.errors.append(RowError(1, "", f"not CSV: {exc}"))
        return out
    if not header:
        out.errors.append(
            RowError(0, "", "empty file: a header row is needed (" + ",".join(IMPORT_COLUMNS) + ")")
        )
        return out
    columns = [h.strip().lower() for h in header]
    unknown = [c for c in columns if c not in IMPORT_COLUMNS]
    if unknown:
        out.errors.append(
            RowError(
                1,
                "",
                f"unknown column(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(IMPORT_COLUMNS)}",
            )
        )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        out.errors.append(RowError(1, "", f"column(s) given twice: {', '.join(duplicated)}"))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        out.errors.append(RowError(1, "", f"missing column(s): {', '.join(missing)}"))
    if out.errors:
        return out
    first_row: dict[str, int] = {}
    count = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            out.errors.append(RowError(reader.line_num, "", f"not CSV: {exc}"))
            break
        row_number = reader.line_num
        if not any(cell.strip() for cell in record):
            continue  # blank line
        count += 1
        if count > max_rows:
            out.errors.append(RowError(row_number, "", f"more than {max_rows} devices in one file"))
            break
        if len(record) != len(columns):
            out.errors.append(
                RowError(row_number, "", f"{len(record)} fields; the header has {len(columns)}")
            )
            continue
        cells = {c: v.strip() for c, v in zip(columns, record, strict=True)}
        seen = first_row.setdefault(cells["endpoint"], row_number)
        if seen != row_number:
            out.errors.append(RowError(row_number, "endpoint", f"duplicate of row {seen}"))
        row = _import_row(
            row_number,
            cells,
            out.errors,
            max_psk_bytes=max_psk_bytes,
            max_identity_bytes=max_identity_bytes,
        )
        if row is not None and seen == row_number:
            out.rows.append(row)
    if not out.rows and not out.errors:
        out.errors.append(RowError(0, "", "no devices in the file"))
    return out


def _import_row(
    row: int,
    cells: dict[str, str],
    errors: list[RowError],
    *,
    max_psk_bytes: int,
    max_identity_bytes: int,
) -> ImportRow | None:
    before = len(errors)
    endpoint = cells["endpoint"]
    try:
        check_endpoint(endpoint)
    except FleetError as exc:
        errors.append(RowError(row, "endpoint", str(exc)))
    device_class = cells.get("class") or None
    if device_class is not None and not DEVICE_CLASS_PATTERN.match(device_class):
        errors.append(RowError(row, "class", f"{device_class!r} is not vendor-domain/class-name"))
    tags: list[str] = []
    try:
        tags = sorted(check_tags(split_tags(cells.get("tags", ""))))
    except TagError as exc:
        errors.append(RowError(row, "tags", str(exc)))
    identity = cells.get("psk_identity", "")
    key_hex = cells.get("psk_key", "")
    psk = None
    if identity and identity != endpoint:
        errors.append(
            RowError(row, "psk_identity", "the DTLS PSK identity of a device is its endpoint name")
        )
    if identity and not key_hex:
        errors.append(RowError(row, "psk_key", "a PSK identity without a key"))
    if key_hex:
        try:
            psk = bytes.fromhex(key_hex)
        except ValueError:
            errors.append(RowError(row, "psk_key", "not hexadecimal"))
        else:
            if not 1 <= len(psk) <= max_psk_bytes:
                errors.append(
                    RowError(
                        row,
                        "psk_key",
                        f"a PSK is 1..{max_psk_bytes} bytes (the DTLS transport's limit)",
                    )
                )
        if len(endpoint.encode("utf-8")) > max_identity_bytes:
            errors.append(
                RowError(
                    row,
                    "endpoint",
                    f"longer than {max_identity_bytes} bytes, the longest DTLS PSK identity the "
                    "transport sends",
                )
            )
    report_key = ""
    if cells.get("report_key"):
        try:
            public = suit_keys.load_public_key_pem(cells["report_key"].encode())
            report_key = suit_keys.public_key_pem(public).decode()
        except (SUITError, UnicodeEncodeError) as exc:
            errors.append(RowError(row, "report_key", f"not a usable report key: {exc}"))
    if len(errors) > before:
        return None
    return ImportRow(
        row=row,
        endpoint=endpoint,
        device_class=device_class,
        tags=tags,
        psk=psk,
        report_key=report_key,
    )
