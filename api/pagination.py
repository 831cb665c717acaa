"""Limit/offset pagination with a hard cap, so one request cannot ask for the whole fleet."""

from rest_framework import pagination


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    max_limit = 500
