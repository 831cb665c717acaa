"""Limit/offset pagination with a hard cap, so one request cannot ask for the whole fleet.

``limit`` and ``offset`` that are not whole numbers in range are refused (400 naming the
parameter) instead of DRF's default of quietly using the default page: a client asking for
``limit=1000`` or ``offset=-5`` must learn it did not get what it asked for."""

from __future__ import annotations

from typing import Any

from rest_framework import pagination
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

# The largest integer a JSON client holds exactly (2**53 - 1): far past any table here, and it
# keeps OFFSET + LIMIT inside the databases' 64-bit range.
MAX_OFFSET = 2**53 - 1


def _bounded(name: str, raw: str, low: int, high: int) -> int:
    value = raw.strip()
    if (
        not (value.isascii() and value.isdigit())
        or len(value) > 20
        or not low <= int(value) <= high
    ):
        raise ValidationError({name: [f"a whole number from {low} to {high}"]})
    return int(value)


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    max_limit = 500

    def get_limit(self, request: Request) -> int | None:
        raw = request.query_params.get(self.limit_query_param)
        if raw is None:
            return self.default_limit
        return _bounded(self.limit_query_param, raw, 1, self.max_limit)

    def get_offset(self, request: Request) -> int:
        raw = request.query_params.get(self.offset_query_param)
        if raw is None:
            return 0
        return _bounded(self.offset_query_param, raw, 0, MAX_OFFSET)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_OFFSET},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters
