"""``manage.py demo``: the story ends on its own without ``--serve`` (``make demo
DEMO_SERVE=0``), and with ``--serve`` leaves a campaign that keeps moving while the console is
served, stopped with everything else when serving ends."""

from __future__ import annotations

import threading
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from campaigns.models import Campaign, CampaignStatus, Rollout, RolloutState
from campaigns.spec import parse_spec
from tests.campaigns.support import wait_for
from workers.management.commands import demo


def test_the_live_campaign_spec_is_slow_and_valid() -> None:
    spec = parse_spec(demo.LIVE_SPEC)
    assert spec.release == "thermo-1.2.0" and [s.name for s in spec.stages] == [
        "canary",
        "wave",
        "all",
    ]
    assert spec.rate is not None and spec.rate.base_per_minute == 2
    assert all(s.soak.total_seconds() >= 60 for s in spec.stages[:-1])


@pytest.fixture
def demo_dirs(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    settings.FIRMWARE_STORAGE_ROOT = tmp_path / "images"


@pytest.mark.slow
def test_without_serve_the_story_ends(
    transactional_db: None, eager_celery: None, demo_dirs: None
) -> None:
    out = StringIO()
    call_command("demo", "--devices", "20", stdout=out)
    assert "hash chain OK" in out.getvalue()
    assert dict(Campaign.objects.values_list("name", "status")) == {
        "thermo-1-1-rollout": CampaignStatus.COMPLETED,
        "thermo-v3-1-1-rollout": CampaignStatus.COMPLETED,
    }


@pytest.mark.slow
def test_serving_leaves_a_campaign_moving_until_serving_ends(
    transactional_db: None, eager_celery: None, demo_dirs: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[Any] = []

    def console_open_a_while(self: Any, address: str) -> None:
        """While "serving": the beat moves the live campaign with nobody calling the engine."""
        live = Campaign.objects.get(name="thermo-1-2-rollout")
        wait_for(
            lambda: (
                Rollout.objects.filter(campaign=live, state=RolloutState.SUCCEEDED).count() >= 2
            ),
            timeout=120,
            what="the live campaign's canary updated",
        )
        served.append(address)

    monkeypatch.setattr(demo.Command, "_runserver", console_open_a_while)
    out = StringIO()
    call_command("demo", "--devices", "20", "--serve", "127.0.0.1:8999", stdout=out)
    assert served == ["127.0.0.1:8999"]
    text = out.getvalue()
    assert "campaign thermo-1-2-rollout: 3 stages" in text
    assert "Console: http://127.0.0.1:8999/" in text
    live = Campaign.objects.get(name="thermo-1-2-rollout")
    assert live.status == CampaignStatus.RUNNING  # slow: far from done when serving ended
    assert live.release.name == "thermo-1.2.0"
    # Serving ended: the beat stopped with it (and the fleet, or the test database could not
    # be dropped).
    assert not [t for t in threading.enumerate() if t.name == "embedded-beat" and t.is_alive()]
