"""Signed SUIT reports end to end: simulated SUIT devices sign a report of their update with
the key they were provisioned with; the gateway reads it from /26241/0/1 and carries it to the
server, which verifies it before it counts the update as a success."""

from __future__ import annotations

from campaigns import engine, services
from campaigns.models import Campaign, CampaignStatus, Device, Rollout, RolloutState
from campaigns.spec import parse_spec
from manifests.suit import keys as suit_keys
from manifests.suit import report as suit_report
from tests.campaigns.support import spec_text, wait_for
from workers.lwm2m.simulator import Faults


def test_suit_devices_report_their_update_and_forged_or_missing_reports_are_refused(
    fleet_factory, catalog
):
    embedded = fleet_factory(catalog, count=4, wrong_class=0)
    # sim-00003 installs and reports Update Result 1 but signs no report.
    embedded.set_faults(["sim-00003"], Faults(no_report=True))
    # The server holds another key for sim-00002 than the one the device signs with: its
    # reports read as forged (as would a device whose key was swapped by an attacker).
    impostor = suit_keys.generate_private_key("Ed25519")
    Device.objects.filter(endpoint="sim-00002").update(
        report_key=suit_keys.public_key_pem(impostor).decode()
    )
    campaign, _ = services.campaign_apply(
        spec=parse_spec(spec_text("reports", extra="timeouts:\n  device: 2m\n")),
        actor=catalog.ops,
    )

    def finished() -> bool:
        return Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.COMPLETED or not (
            Rollout.objects.filter(campaign=campaign)
            .exclude(state__in=[RolloutState.SUCCEEDED, RolloutState.FAILED])
            .exists()
        )

    wait_for(finished, timeout=120, tick=lambda: engine.campaign_reconcile(campaign.pk))
    by_endpoint = {
        r.device.endpoint: r
        for r in Rollout.objects.filter(campaign=campaign).select_related("device", "manifest")
    }
    for endpoint in ("sim-00000", "sim-00001"):
        rollout = by_endpoint[endpoint]
        assert (rollout.state, rollout.report_verdict) == (RolloutState.SUCCEEDED, "verified")
        device_key = suit_keys.load_public_key_pem(rollout.device.report_key.encode())
        stored = suit_report.open_report(bytes(rollout.report), public_key=device_key)
        assert stored.success
        assert stored.manifest_digest.hex() == rollout.manifest.manifest_digest
    forged = by_endpoint["sim-00002"]
    assert (forged.state, forged.reason) == (RolloutState.FAILED, "report_forged")
    silent = by_endpoint["sim-00003"]
    assert (silent.state, silent.reason) == (RolloutState.FAILED, "report_missing")
    # Both devices did install (their own word, over /5/0/5 and /3/0/3), yet no success counts.
    for endpoint in ("sim-00002", "sim-00003"):
        assert embedded.fleet.devices[endpoint].state.version == "1.1.0"
        assert by_endpoint[endpoint].fw_result == 1
