"""The device-event contract: what a gateway reports to the fleet side, one class per event.

Gateways build these (``workers.lwm2m``), send them as JSON through Celery (``to_dict``; the
``type`` field names the class), and ``device_events_task`` turns each dict back into its class
(``event_from_dict``) before the registry (``campaigns.device_services``) and the rollouts
(``campaigns.rollouts``) apply it, each through one dispatch table keyed by class. A dict that is
not a known event, or whose fields have the wrong types, is refused here with ``EventError``,
before anything is written.

Pure: no Django import. Every event carries the gateway that saw it and when (``at``, seconds
since the epoch); applying an event again changes nothing (the services are idempotent).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar


class EventError(ValueError):
    """A gateway event that is not one of the contract's (unknown type, missing or mistyped
    field); nothing is applied."""

    code = "device.bad_event"


class UnknownEventError(EventError):
    """The event type is not one the gateway emits."""

    code = "device.unknown_event"


@dataclass(frozen=True, kw_only=True)
class DeviceEvent:
    """Fields every event has. ``type`` is the wire name of the concrete class."""

    type: ClassVar[str] = ""
    endpoint: str = ""
    gateway_id: str = ""
    at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form sent through the task queue."""
        data: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data


@dataclass(frozen=True, kw_only=True)
class Registered(DeviceEvent):
    """A Register: the device is online at this gateway under ``registration_id``."""

    type: ClassVar[str] = "registered"
    registration_id: str
    lifetime: int
    binding: str = "U"
    lwm2m_version: str = "1.0"
    queue_mode: bool = False
    objects: tuple[str, ...] = ()
    # The registering peer: NoSec "host:port" as the gateway saw it; ``identity`` the DTLS PSK
    # identity ("" for NoSec). With ``root_path`` (the payload's alternate root path) they let
    # another gateway adopt the registration (docs/lwm2m.md, "Shared registrations").
    address: str = ""
    identity: str = ""
    root_path: str = "/"


@dataclass(frozen=True, kw_only=True)
class Updated(DeviceEvent):
    """A registration Update; a field is None when the Update did not change it."""

    type: ClassVar[str] = "updated"
    registration_id: str
    lifetime: int | None = None
    binding: str | None = None
    objects: tuple[str, ...] | None = None
    # The peer the Update came from ("" from a gateway that does not say: unchanged) and the
    # payload's root path (None when the Update carried no payload).
    address: str = ""
    identity: str = ""
    root_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class Deregistered(DeviceEvent):
    """A De-register of ``registration_id``."""

    type: ClassVar[str] = "deregistered"
    registration_id: str


@dataclass(frozen=True, kw_only=True)
class Expired(DeviceEvent):
    """The registration's lifetime passed without an Update."""

    type: ClassVar[str] = "expired"
    registration_id: str


@dataclass(frozen=True, kw_only=True)
class DeviceInfo(DeviceEvent):
    """What the gateway read from /3/0 and /5/0 after a registration. A value it could not read
    is "" (or None) and leaves what the registry knows unchanged."""

    type: ClassVar[str] = "device_info"
    manufacturer: str = ""
    model: str = ""
    serial: str = ""
    firmware_version: str = ""
    device_time: float | None = None
    protocols: tuple[int, ...] | None = None
    delivery_method: int | None = None


@dataclass(frozen=True, kw_only=True)
class FwStatus(DeviceEvent):
    """An Object 5 State (/5/0/3) and Update Result (/5/0/5) the device reported."""

    type: ClassVar[str] = "fw_status"
    state: int
    result: int


@dataclass(frozen=True, kw_only=True)
class FwInstalled(DeviceEvent):
    """An update the gateway drove ended with the device reporting success."""

    type: ClassVar[str] = "fw_installed"
    manifest_digest: str


@dataclass(frozen=True, kw_only=True)
class CommandResult(DeviceEvent):
    """A command finished. On failure ``error_code`` is the gateway's stable code for it and
    ``permanent`` its verdict: True when trying the same again cannot help (the device refused,
    the operation is impossible for it), False for a passing cause (no answer in time, the
    device busy). ``result`` holds what the operation returned (for an update: its phase and
    the device's Update Result)."""

    type: ClassVar[str] = "command_result"
    command_id: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error_code: str = ""
    error: str = ""
    permanent: bool = False
    # An update of a SUIT device: the device's signed SUIT report of the attempt (hex of the
    # COSE_Sign1 read from /26241/0/1; "" when it gave none). The server verifies it
    # (``campaigns.rollouts``); the gateway only carries it.
    suit_report: str = ""

    @property
    def update_result(self) -> int | None:
        """The Object 5 Update Result the device ended the command with, if it reported one."""
        value = self.result.get("result")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


EVENT_TYPES: dict[str, type[DeviceEvent]] = {
    cls.type: cls
    for cls in (
        Registered,
        Updated,
        Deregistered,
        Expired,
        DeviceInfo,
        FwStatus,
        FwInstalled,
        CommandResult,
    )
}


def _convert(name: str, hint: Any, value: Any) -> Any:
    """``value`` as the field's type, or EventError. Integers are accepted for floats; JSON
    lists for tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(name, inner, value)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise EventError(f"event field {name!r} must be a list")
        return tuple(_convert(name, item, v) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise EventError(f"event field {name!r} must be an object")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise EventError(f"event field {name!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventError(f"event field {name!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EventError(f"event field {name!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise EventError(f"event field {name!r} must be a string")
        return value
    raise EventError(f"event field {name!r} has an unsupported type")  # pragma: no cover


def event_from_dict(data: Any) -> DeviceEvent:
    """The event a JSON dict describes; EventError for anything else. Unknown fields are
    ignored (a newer gateway may add some); missing required ones are refused."""
    if not isinstance(data, dict):
        raise EventError("a device event is a JSON object")
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise UnknownEventError(f"unknown device event type {kind!r}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise EventError(f"{kind} event without {f.name!r}")
            continue
        values[f.name] = _convert(f.name, hints[f.name], data[f.name])
    return cls(**values)
