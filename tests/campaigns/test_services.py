"""Campaign services (``campaigns.services``): apply is idempotent through the ``campaign``
command, a changed spec is a revision with its diff, and a bad spec writes nothing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from campaigns.models import (
    Campaign,
    CampaignRevision,
    Rollout,
)
from tests.campaigns.support import (
    Catalog,
    make_devices,
    row_counts,
    spec_text,
)

pytestmark = pytest.mark.django_db


def _apply_cli(path: Path, user: str = "ops") -> str:
    out = io.StringIO()
    call_command("campaign", "apply", str(path), "--user", user, stdout=out)
    return out.getvalue()


def test_apply_is_idempotent_and_a_change_is_a_revision_with_its_diff(
    catalog: Catalog, tmp_path: Path
) -> None:
    make_devices(catalog, 8)
    path = tmp_path / "rollout.yaml"
    path.write_text(spec_text("cli-rollout"))
    assert "created (revision 1)" in _apply_cli(path)
    before = row_counts()
    # The same spec, formatted differently, is the same spec.
    path.write_text(spec_text("cli-rollout").replace("size: 100%", "size: '100%'") + "\n\n")
    assert "unchanged (revision 1)" in _apply_cli(path)
    assert row_counts() == before

    path.write_text(spec_text("cli-rollout", extra="timeouts:\n  device: 7m\n"))
    assert "revised (revision 2)" in _apply_cli(path)
    campaign = Campaign.objects.get(name="cli-rollout")
    assert campaign.revision == 2
    assert Rollout.objects.filter(campaign=campaign).count() == 8  # no new rows
    revise = AuditEvent.objects.get(action="campaign.revise", object_id="cli-rollout")
    assert revise.details["revision"] == 2
    changed = {(d.get("path"), str(d.get("new", d.get("after")))) for d in revise.details["diff"]}
    assert any(p == "timeouts.device" and "7m" in new for p, new in changed), revise.details
    assert (
        CampaignRevision.objects.get(campaign=campaign, revision=2).diff == revise.details["diff"]
    )


BAD_SPECS = [
    pytest.param(
        lambda: spec_text("bad", extra="colour: blue\n"),
        ["colour"],
        id="unknown-key",
    ),
    pytest.param(
        lambda: spec_text("bad", stages="  - name: all\n    size: 150%\n"),
        ["stages[0].size"],
        id="percent-over-100",
    ),
    pytest.param(
        lambda: spec_text("bad", release="thermo-9.9.9"),
        ["release", "thermo-9.9.9"],
        id="unknown-release",
    ),
    pytest.param(
        lambda: spec_text("bad", device_class="acme.example/toaster"),
        ["target.device_class", "toaster"],
        id="unknown-class",
    ),
]


@pytest.mark.parametrize(("document", "mentions"), BAD_SPECS)
def test_bad_spec_is_refused_with_file_path_and_reason_and_writes_nothing(
    catalog: Catalog, tmp_path: Path, document: Any, mentions: list[str]
) -> None:
    make_devices(catalog, 3)
    path = tmp_path / "bad-spec.yaml"
    path.write_text(document())
    before = row_counts()
    for action in ("plan", "apply"):
        args = ["campaign", action, str(path)] + (["--user", "ops"] if action == "apply" else [])
        with pytest.raises(CommandError) as caught:
            call_command(*args, stdout=io.StringIO())
        message = str(caught.value)
        assert str(path) in message, message
        for mention in mentions:
            assert mention in message, message
        assert caught.value.returncode == 1
    assert row_counts() == before
