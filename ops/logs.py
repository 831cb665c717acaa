"""Context carried by every log line: the request id, and the campaign and device a piece of
work is about.

The values live in context variables, set by ``RequestIdMiddleware`` for a web request and by
``log_context`` around work on a campaign or a device (Celery tasks, the engine), so code that
logs needs no change to say which request or device it was serving. The JSON formatter
(``LOG_FORMAT=json``) writes them as fields of every line (an ``extra=`` given at the call
wins). The text format is unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pythonjsonlogger.json

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fwupd_request_id", default=None
)
campaign_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fwupd_campaign", default=None
)
device_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fwupd_device", default=None
)

# An incoming X-Request-ID is kept only if it is this (a proxy's UUID or token); anything else
# (too long, spaces, control characters that would forge log lines) is replaced by a new id.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
CONTEXT_FIELDS = ("request_id", "campaign", "device")
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(header: str | None) -> str:
    """The incoming id if well-formed, else a new one."""
    if header and REQUEST_ID_RE.match(header):
        return header
    return new_request_id()


@contextlib.contextmanager
def log_context(
    *,
    request_id: str | None = None,
    campaign: str | int | None = None,
    device: str | None = None,
) -> Iterator[None]:
    """Tag every line logged inside with these ids (those given; the others are kept)."""
    tokens = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if campaign is not None:
        tokens.append((campaign_var, campaign_var.set(str(campaign))))
    if device is not None:
        tokens.append((device_var, device_var.set(device)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def context_fields(record: logging.LogRecord) -> dict[str, str | None]:
    """The record's ``request_id``, ``campaign`` and ``device``: from ``extra=`` when the call
    gave them, else from the context of the thread that logged (handlers format synchronously,
    in that thread)."""
    fields: dict[str, str | None] = {}
    for name, var in zip(CONTEXT_FIELDS, (request_id_var, campaign_var, device_var), strict=True):
        value = getattr(record, name, None)
        fields[name] = str(value) if value is not None else var.get()
    return fields


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """One JSON object per line: time, level, logger, message, the context ids (null when
    unknown), any other ``extra=`` fields, and the traceback as ``exc_info`` text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args:
            kwargs.setdefault("fmt", "%(asctime)s %(levelname)s %(name)s %(message)s")
        kwargs.setdefault("rename_fields", RENAMED)
        kwargs.setdefault("datefmt", "%Y-%m-%dT%H:%M:%S%z")
        super().__init__(*args, **kwargs)

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record.update(context_fields(record))
