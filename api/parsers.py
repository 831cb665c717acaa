"""Request body parsers shared by the API's views."""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


def contains_nul(value: Any) -> bool:
    """Whether a NUL character is in ``value`` or any string nested in it."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


class JSONParser(parsers.JSONParser):
    """JSON, refusing a NUL character (``\\u0000``) anywhere in it. No field of the API can
    hold one: PostgreSQL refuses NUL in text and in jsonb, so it would surface as a server
    error deep in a service (a spec mapping or a policy's rules are stored as JSON) instead of
    as the client's mistake."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        if contains_nul(data):
            raise ParseError("JSON parse error - NUL characters (\\u0000) are not accepted")
        return data
