"""The request id follows the work a request queues: a task published while a request id is set
carries it in a message header, and the worker that runs the task logs under it. So the JSON
lines of a webhook delivery or a reconcile pass that a console click caused share its id.

Eager tasks (the embedded default, tests) run in the caller's context and need nothing.
"""

from __future__ import annotations

import contextvars
from typing import Any

from celery import signals

from ops.logs import REQUEST_ID_RE, request_id_var

HEADER = "fwupd_request_id"
_tokens: dict[str, contextvars.Token[str | None]] = {}


@signals.before_task_publish.connect
def add_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = request_id_var.get()
    if request_id and headers is not None:
        headers.setdefault(HEADER, request_id)


def _header(task: Any) -> str | None:
    request = getattr(task, "request", None)
    value = getattr(request, HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(HEADER)
    return value if isinstance(value, str) and REQUEST_ID_RE.match(value) else None


@signals.task_prerun.connect
def enter_request_id(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request_id = _header(task)
    if request_id is not None and task_id is not None:
        _tokens[task_id] = request_id_var.set(request_id)


@signals.task_postrun.connect
def leave_request_id(task_id: str | None = None, **_: Any) -> None:
    token = _tokens.pop(task_id or "", None)
    if token is not None:
        request_id_var.reset(token)
