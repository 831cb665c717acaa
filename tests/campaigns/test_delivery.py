"""Delivery method per device: ``campaigns.delivery.decide_method`` (pull or push from the
class's forced method and the device's /5/0/9 and /5/0/8, as one table), its refusal
``no_supported_delivery`` at plan and at dispatch, and the ``fw_update`` command's arguments."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from campaigns import engine, planning, selectors
from campaigns.delivery import decide_method
from campaigns.device_services import device_psk_set
from campaigns.models import Device, DeviceCommand, Rollout, RolloutState
from campaigns.spec import parse_spec
from manifests import services
from tests.campaigns.support import apply, make_devices, spec_text

# forced, /5/0/9, /5/0/8, DTLS, expected method (None: no_supported_delivery)
TABLE = [
    # auto: pull where the device can pull over what the gateway serves it
    ("auto", None, [], False, "pull"),  # LwM2M 1.0 client: pull over CoAP
    ("auto", None, [0], False, "pull"),
    ("auto", 0, [0], False, "pull"),
    ("auto", 2, [0, 1, 4, 5], False, "pull"),  # Anjay
    ("auto", 2, [0, 1, 4, 5], True, "pull"),
    ("auto", 1, [0, 1], False, "push"),  # Wakaama: push only
    ("auto", 1, [], True, "push"),
    ("auto", 2, [4, 5], False, "push"),  # pull only over TCP: the gateway serves UDP
    ("auto", 2, [0], True, "push"),  # DTLS device that does not list CoAPS
    ("auto", 0, [4], False, None),  # pull only, over a protocol we do not serve
    ("auto", 0, [0], True, None),  # DTLS, pull only, no CoAPS
    ("auto", None, [], True, None),  # DTLS 1.0 client: CoAP assumed, coaps needed
    ("auto", 7, [0], False, None),  # a /5/0/9 value outside the spec
    # forced pull
    ("pull", 2, [0], False, "pull"),
    ("pull", 1, [0], False, None),
    ("pull", 2, [5], False, None),
    # forced push
    ("push", 2, [0], False, "push"),
    ("push", 1, [0], False, "push"),
    ("push", None, [], False, "push"),  # unknown support: the Package resource is mandatory
    ("push", 0, [0], False, None),  # the device says pull only
    # unknown forced value
    ("sideways", 2, [0], False, None),
]


@pytest.mark.parametrize(("forced", "method", "protocols", "dtls", "expected"), TABLE)
def test_delivery_method_table(
    forced: str, method: int | None, protocols: list[int], dtls: bool, expected: str | None
):
    decision = decide_method(forced=forced, device_method=method, protocols=protocols, dtls=dtls)
    assert decision.method == expected
    assert bool(decision.reason) == (expected is None)


def test_reason_names_what_the_device_lacks():
    decision = decide_method(forced="auto", device_method=0, protocols=[4], dtls=False)
    assert decision.reason == (
        "the device supports pull only; pull needs CoAP, the device lists CoAP/TCP"
    )
    forced = decide_method(forced="push", device_method=0, protocols=[0], dtls=False)
    assert forced.reason == "the class forces push but the device supports pull only"
    dtls = decide_method(forced="pull", device_method=None, protocols=None, dtls=True)
    assert "CoAPS (it registered over DTLS)" in dtls.reason


# --- plan and dispatch ----------------------------------------------------------------------


def _fleet(catalog: Any) -> None:
    """10 devices: 6 pull (LwM2M 1.0, Anjay-like), 2 push only (Wakaama-like), 2 pull only over
    CoAP/TCP (nothing the gateway serves them)."""
    make_devices(catalog, 4, prefix="legacy")  # /5/0/9 and /5/0/8 never reported
    make_devices(catalog, 2, prefix="anjay", fw_delivery_method=2, fw_protocols=[0, 1, 4, 5])
    make_devices(catalog, 2, prefix="waka", fw_delivery_method=1, fw_protocols=[0, 1])
    make_devices(catalog, 2, prefix="tcp", fw_delivery_method=0, fw_protocols=[4])


@pytest.mark.django_db
def test_plan_refuses_devices_without_a_usable_delivery_and_counts_methods_per_stage(
    catalog: Any,
) -> None:
    _fleet(catalog)
    plan = planning.campaign_plan(spec=parse_spec(spec_text("d")))
    assert plan.excluded == {"no_supported_delivery": 2}
    assert (plan.delivery, plan.delivery_method) == ("suit", "auto")
    assert plan.stage_counts == [8]
    assert plan.stage_methods(0) == {"pull": 6, "push": 2}
    assert plan.as_dict()["stages"] == [
        {
            "name": "all",
            "devices": 8,
            "methods": {"pull": 6, "push": 2},
            "delta": {"devices": 0, "bytes_saved": 0},
            "already_held": 0,
        }
    ]
    details = {
        Device.objects.get(pk=row.device_id).endpoint: row.detail
        for row in plan.rows
        if row.reason == "no_supported_delivery"
    }
    assert set(details) == {"tcp-00000", "tcp-00001"}
    assert details["tcp-00000"].startswith("tcp-00000: the device supports pull only")


@pytest.mark.django_db
def test_plan_of_a_class_forcing_push_counts_every_pusher_and_refuses_pull_only_devices(
    catalog: Any,
) -> None:
    _fleet(catalog)
    services.device_class_set_delivery(
        device_class=catalog.thermo, delivery="suit", method="push", actor=catalog.admin
    )
    plan = planning.campaign_plan(spec=parse_spec(spec_text("d")))
    # legacy (unknown /5/0/9): push allowed when forced; anjay, waka: push; tcp: pull only
    assert plan.stage_methods(0) == {"pull": 0, "push": 8}
    assert plan.excluded == {"no_supported_delivery": 2}


@pytest.mark.django_db
def test_dtls_device_that_lists_no_coaps_is_refused_at_plan(catalog: Any) -> None:
    make_devices(catalog, 1, prefix="dtls", fw_delivery_method=0, fw_protocols=[0])
    device_psk_set(endpoint="dtls-00000", key=b"k" * 16)
    plan = planning.campaign_plan(spec=parse_spec(spec_text("d")))
    assert plan.excluded == {"no_supported_delivery": 1}
    assert "CoAPS (it registered over DTLS)" in next(iter(plan.rows)).detail


@pytest.mark.django_db
def test_dispatch_writes_the_fw_update_contract_with_the_method_per_device(catalog: Any) -> None:
    now = timezone.now()
    _fleet(catalog)
    campaign = apply(catalog, spec_text("d"), now=now)
    # refused at plan: written as skipped, never dispatched
    skipped = Rollout.objects.filter(campaign=campaign, reason="no_supported_delivery")
    assert sorted(skipped.values_list("device__endpoint", "state")) == [
        ("tcp-00000", RolloutState.SKIPPED),
        ("tcp-00001", RolloutState.SKIPPED),
    ]
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 8
    manifest = catalog.release.manifest
    args = {
        c.device.endpoint: c.args
        for c in DeviceCommand.objects.filter(operation="fw_update").select_related("device")
    }
    assert args["waka-00000"] == {
        "manifest_digest": manifest.manifest_digest,
        "delivery": "suit",
        "image_sha256": manifest.image_digest,
        "image_size": manifest.image_size,
        "method": "push",
        "timeout": args["waka-00000"]["timeout"],
        "report_nonce": args["waka-00000"]["report_nonce"],
    }
    assert isinstance(args["waka-00000"]["timeout"], float)
    # Each command its own nonce for the device's signed report (16 bytes, hex).
    nonces = [a["report_nonce"] for a in args.values()]
    assert len(set(nonces)) == len(nonces) and all(len(bytes.fromhex(n)) == 16 for n in nonces)
    assert {e: a["method"] for e, a in args.items()} == {
        **{f"legacy-{i:05d}": "pull" for i in range(4)},
        **{f"anjay-{i:05d}": "pull" for i in range(2)},
        **{f"waka-{i:05d}": "push" for i in range(2)},
    }
    assert not any(e.startswith("tcp") for e in args)


@pytest.mark.django_db
def test_dispatch_refuses_a_device_whose_delivery_changed_after_plan(catalog: Any) -> None:
    """The plan said pull; the device then reported push-less TCP-only support: it is refused
    at dispatch with the same reason, and no command is written for it."""
    now = timezone.now()
    make_devices(catalog, 3)
    campaign = apply(catalog, spec_text("late"), now=now)
    Device.objects.filter(endpoint="dev-00001").update(fw_delivery_method=0, fw_protocols=[5])
    report = engine.campaign_reconcile(campaign.pk, now=now)
    assert report is not None and report.dispatched == 2
    assert report.skipped == {"no_supported_delivery": 1}
    refused = Rollout.objects.get(campaign=campaign, device__endpoint="dev-00001")
    assert (refused.state, refused.reason) == (RolloutState.SKIPPED, "no_supported_delivery")
    assert refused.detail.startswith("dev-00001: the device supports pull only")
    assert not DeviceCommand.objects.filter(device=refused.device).exists()


@pytest.mark.django_db
def test_dispatch_sends_the_class_profile_image_by_default(catalog: Any) -> None:
    now = timezone.now()
    make_devices(catalog, 1)
    services.device_class_set_delivery(
        device_class=catalog.thermo, delivery="image", actor=catalog.admin
    )
    campaign = apply(catalog, spec_text("img"), now=now)
    engine.campaign_reconcile(campaign.pk, now=now)
    command = DeviceCommand.objects.get(operation="fw_update")
    assert (command.args["delivery"], command.args["method"]) == ("image", "pull")


@pytest.mark.django_db
def test_campaign_plan_and_status_print_the_profile_and_methods_per_stage(
    catalog: Any, tmp_path: Any
) -> None:
    _fleet(catalog)
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text("printed"))
    out = io.StringIO()
    call_command("campaign", "plan", str(path), stdout=out)
    text = out.getvalue()
    assert "delivery suit (method auto)" in text
    assert "delivery suit: pull 6, push 2" in text
    assert "no_supported_delivery" in text
    now = timezone.now()
    campaign = apply(catalog, spec_text("printed"), now=now)
    engine.campaign_reconcile(campaign.pk, now=now)
    status = selectors.campaign_status(campaign)
    assert status["delivery"] == "suit"
    assert status["stages"][0]["methods"] == {"pull": 6, "push": 2}
    out = io.StringIO()
    call_command("campaign", "status", "printed", stdout=out)
    assert "delivery suit: pull 6, push 2" in out.getvalue()
