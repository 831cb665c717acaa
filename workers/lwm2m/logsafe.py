"""Device-supplied text in log lines, and log lines a hostile peer cannot multiply.

Invariants:

* :func:`shown` turns any value a peer sent (str, bytes, anything) into one line of printable
  ASCII-safe text of bounded length: control characters (CR, LF, ESC, ...), other non-printable
  code points (line and paragraph separators, bidi overrides) and backslashes are escaped, so a
  peer cannot start a new log line, colour a terminal or hide text.
* :class:`OneLineFilter`, attached to a logger, holds every record of that logger to the same
  rule after formatting (a guard for a call site that forgot :func:`shown`); tracebacks
  (``exc_info``) are the process's own and stay as they are.
* :class:`RateLimiter` lets through at most ``burst`` events per key and ``interval``; what it
  held back is counted and reported with the next line that passes, so a flood costs a line per
  interval, never one per datagram. Time is a parameter (``now``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

# Characters of a peer-supplied value shown in a log line before it is cut.
DEFAULT_LIMIT = 80


def _escape(text: str) -> str:
    out: list[str] = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(
                f"\\x{code:02x}"
                if code < 0x100
                else f"\\u{code:04x}"
                if code < 0x10000
                else f"\\U{code:08x}"
            )
    return "".join(out)


def shown(value: Any, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as a quoted, escaped, single-line string of at most ``limit`` source characters
    (longer values end in ``...`` and say how long they were)."""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return f"'{_escape(text[:limit])}'...({len(text)} chars)"
    return f"'{_escape(text)}'"


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped (no quotes, no length limit)."""
    return _escape(text) if not text.isprintable() or "\\" in text else text


class OneLineFilter(logging.Filter):
    """Escape non-printable characters in a record's formatted message (not its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        if not message.isprintable():
            record.msg = "".join(c if c.isprintable() else _escape(c) for c in message)
            record.args = None
        return True


def guard(logger: logging.Logger) -> logging.Logger:
    """Attach one :class:`OneLineFilter` to ``logger`` (idempotent) and return it."""
    if not any(isinstance(f, OneLineFilter) for f in logger.filters):
        logger.addFilter(OneLineFilter())
    return logger


@dataclass
class _Window:
    started: float
    passed: int = 0
    held: int = 0


@dataclass
class RateLimiter:
    """At most ``burst`` events per key per ``interval`` seconds pass; the rest are counted."""

    interval: float = 10.0
    burst: int = 5
    max_keys: int = 256
    _windows: dict[str, _Window] = field(default_factory=dict)

    def allow(self, key: str, *, now: float) -> tuple[bool, int]:
        """Whether this event may be logged, and how many of this key were held back since the
        last one that passed (to be reported with it)."""
        window = self._windows.get(key)
        if window is None or now - window.started >= self.interval:
            held = window.held if window is not None else 0
            if window is None and len(self._windows) >= self.max_keys:
                self._windows.pop(next(iter(self._windows)))
            self._windows[key] = _Window(started=now, passed=1)
            return True, held
        if window.passed < self.burst:
            window.passed += 1
            held, window.held = window.held, 0
            return True, held
        window.held += 1
        return False, 0
