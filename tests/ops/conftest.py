"""Every test here counts under a Redis key prefix of its own, so tests running at once (xdist,
or other suites on the same Redis database) never see or reset each other's tallies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ops import tallies


@pytest.fixture(autouse=True)
def _own_tally_prefix(settings: Any) -> Iterator[str]:
    prefix = f"fwupd:metrics:test-{uuid.uuid4().hex[:12]}:"
    broker = settings.CELERY_BROKER_URL
    settings.METRICS_TALLY_PREFIX = prefix
    yield prefix
    settings.CELERY_BROKER_URL = broker  # a test may have pointed it at nothing
    settings.METRICS_TALLY_PREFIX = prefix
    tallies.reset()
