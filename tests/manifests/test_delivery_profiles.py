"""Delivery profiles on the release side: the class's profile and pull/push choice (service,
CLI, audit), which payload URI each profile can serve (``manifests.delivery``), the migration of
existing classes, and the integrated envelope of ``suit-integrated`` classes."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.models import AuditEvent
from manifests import delivery, device_rules, services, suit
from manifests.errors import (
    DeliveryConflictError,
    DeliveryProfileError,
    PayloadURIError,
    PermissionDeniedError,
)
from manifests.images import imgtool
from manifests.models import DeviceClass, Manifest

pytestmark = pytest.mark.django_db

SHA = "ab" * 32
PAYLOAD = b"\x37" * 3000


@pytest.fixture
def author(author: Any, catalog_admin: Any) -> Any:
    services.role_grant(
        user=author.user,
        role="author",
        actor=catalog_admin,
        now=timezone.now() - dt.timedelta(days=1),
    )
    services.signing_key_register(
        owner=author.user,
        public_key_pem=author.public_pem,
        valid_from=timezone.now() - dt.timedelta(days=1),
    )
    return author


@pytest.fixture
def image(author: Any) -> Any:
    data = imgtool.build_image(PAYLOAD, version="1.2.0", security_counter=1)
    return services.image_upload(data=data, actor=author.user)


def envelope_for(device_class: Any, image: Any, author: Any, *, uri: str | None, seq: int = 5):
    params = suit.ManifestParams(
        vendor_id=device_class.vendor.uuid,
        class_id=device_class.uuid,
        sequence_number=seq,
        version="1.2.0",
        security_counter=1,
        image_digest=bytes.fromhex(image.sha256),
        image_size=image.size,
        uri=uri,
        use_before=timezone.now() + dt.timedelta(days=30),
        component_id=device_class.component_id_bytes,
        payload_format="mcuboot",
    )
    return suit.create_envelope(params, keys=[author.private_key])


def cli(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# --- the pure URI rule ----------------------------------------------------------------------

ORIGINS = ["coap://fw.acme.example:5683", "coaps://fw.acme.example:5684"]


@pytest.mark.parametrize(
    ("profile", "uri"),
    [
        ("image", None),
        ("image", "coap://fw/app"),  # the device never reads it: the Package URI is the image
        ("suit", None),
        ("suit", f"/fw/i/{SHA}"),
        ("suit", f"coap://fw.acme.example:5683/fw/i/{SHA}"),
        ("suit", f"COAPS://FW.acme.example:5684/fw/i/{SHA}"),
        ("suit-integrated", "#app"),
        ("suit-integrated", "#firmware-1.2"),
    ],
)
def test_payload_uris_each_profile_can_serve(profile: str, uri: str | None):
    assert (
        delivery.payload_uri_problem(uri, profile=profile, image_sha256=SHA, served_origins=ORIGINS)
        is None
    )


@pytest.mark.parametrize(
    ("profile", "uri", "words"),
    [
        ("suit", "coap://fw/app", "not a gateway of this server"),
        ("suit", f"coap://evil.example/fw/i/{SHA}", "not a gateway of this server"),
        ("suit", f"http://fw.acme.example:5683/fw/i/{SHA}", "coap or coaps"),
        ("suit", f"coap://fw.acme.example:5683/fw/i/{'cd' * 32}", "is not"),
        ("suit", f"/fw/i/{'cd' * 32}", "not a path the gateway serves"),
        ("suit", "/fw/app.bin", "not a path the gateway serves"),
        ("suit", f"/fw/i/{SHA}?x=1", "query or fragment"),
        ("suit", "#app", "query or fragment"),
        ("suit-integrated", None, "fragment-only"),
        ("suit-integrated", f"/fw/i/{SHA}", "fragment-only"),
        ("suit-integrated", "#", "fragment-only"),
        ("suit-integrated", "#a b", "fragment-only"),
        ("bogus", None, "unknown delivery profile"),
    ],
)
def test_payload_uris_a_profile_could_not_serve_are_named(profile: str, uri: Any, words: str):
    problem = delivery.payload_uri_problem(
        uri, profile=profile, image_sha256=SHA, served_origins=ORIGINS
    )
    assert problem is not None and words in problem


def test_default_payload_uri_per_profile():
    assert delivery.default_payload_uri("image", SHA) == f"/fw/i/{SHA}"
    assert delivery.default_payload_uri("suit", SHA.upper()) == f"/fw/i/{SHA}"
    assert delivery.default_payload_uri("suit-integrated", SHA) == "#app"


# --- the class's profile ------------------------------------------------------------------


def test_new_device_class_defaults_to_image_delivery_and_auto_method(device_class: Any):
    device_class.refresh_from_db()
    assert (device_class.delivery, device_class.delivery_method) == ("image", "auto")


def test_set_delivery_changes_the_class_and_writes_one_audit_event(
    device_class: Any, catalog_admin: Any
):
    services.device_class_set_delivery(
        device_class=device_class, delivery="suit", method="push", actor=catalog_admin
    )
    row = DeviceClass.objects.get(pk=device_class.pk)
    assert (row.delivery, row.delivery_method) == ("suit", "push")
    event = AuditEvent.objects.get(action="device_class.set_delivery")
    assert event.details["before"] == {"delivery": "image", "delivery_method": "auto"}
    assert event.details["after"] == {"delivery": "suit", "delivery_method": "push"}
    # method None keeps the forced method
    services.device_class_set_delivery(
        device_class=device_class, delivery="image", actor=catalog_admin
    )
    assert DeviceClass.objects.get(pk=device_class.pk).delivery_method == "push"


def test_set_delivery_again_is_idempotent_no_second_event(device_class: Any, catalog_admin: Any):
    for _ in range(2):
        services.device_class_set_delivery(
            device_class=device_class, delivery="suit", actor=catalog_admin
        )
    assert AuditEvent.objects.filter(action="device_class.set_delivery").count() == 1


def test_set_delivery_by_a_non_admin_is_refused_and_changes_nothing(device_class: Any, author: Any):
    with pytest.raises(PermissionDeniedError):
        services.device_class_set_delivery(
            device_class=device_class, delivery="suit", actor=author.user
        )
    assert DeviceClass.objects.get(pk=device_class.pk).delivery == "image"
    assert not AuditEvent.objects.filter(action="device_class.set_delivery").exists()


@pytest.mark.parametrize(("profile", "method"), [("mcuboot", None), ("image", "sometimes")])
def test_unknown_delivery_profile_or_method_is_refused(
    device_class: Any, catalog_admin: Any, profile: str, method: str | None
):
    with pytest.raises(DeliveryProfileError):
        services.device_class_set_delivery(
            device_class=device_class, delivery=profile, method=method, actor=catalog_admin
        )
    with pytest.raises(DeliveryProfileError):
        services.device_class_create(
            vendor=device_class.vendor,
            name="x",
            delivery=profile,
            delivery_method=method or "auto",
            actor=catalog_admin,
        )
    assert DeviceClass.objects.get(pk=device_class.pk).delivery == "image"
    assert not DeviceClass.objects.filter(name="x").exists()


def test_switch_that_a_live_release_could_not_follow_is_refused(
    device_class: Any, catalog_admin: Any, author: Any, image: Any
):
    manifest = services.manifest_import(
        envelope=envelope_for(device_class, image, author, uri="coap://fw/app"),
        created_by=author.user,
    )
    services.release_create(manifest=manifest, name="r1", actor=author.user)
    with pytest.raises(DeliveryConflictError, match="r1"):
        services.device_class_set_delivery(
            device_class=device_class, delivery="suit", actor=catalog_admin
        )
    with pytest.raises(DeliveryConflictError):
        services.device_class_set_delivery(
            device_class=device_class, delivery="suit-integrated", actor=catalog_admin
        )
    assert DeviceClass.objects.get(pk=device_class.pk).delivery == "image"
    # a forced method alone can change: the URI rule is the profile's
    services.device_class_set_delivery(
        device_class=device_class, delivery="image", method="pull", actor=catalog_admin
    )
    assert DeviceClass.objects.get(pk=device_class.pk).delivery_method == "pull"


def test_cli_devclass_add_with_delivery_and_set(vendor: Any, catalog_admin: Any):
    out = cli(
        "devclass", "add", "--vendor-domain", "acme.example", "--name", "suit-dev",
        "--payload-format", "raw", "--delivery", "suit", "--user", catalog_admin.username,
    )  # fmt: skip
    assert "delivery suit (auto)" in out
    out = cli(
        "devclass", "set", "--vendor-domain", "acme.example", "--name", "suit-dev",
        "--delivery", "suit-integrated", "--user", catalog_admin.username,
    )  # fmt: skip
    assert "delivery suit-integrated (auto)" in out
    assert DeviceClass.objects.get(name="suit-dev").delivery == "suit-integrated"
    assert "suit-integrated auto" in cli("devclass", "list")


def test_cli_devclass_add_defaults_to_image(vendor: Any, catalog_admin: Any):
    cli(
        "devclass", "add", "--vendor-domain", "acme.example", "--name", "zephyr",
        "--payload-format", "mcuboot", "--user", catalog_admin.username,
    )  # fmt: skip
    assert DeviceClass.objects.get(name="zephyr").delivery == "image"


def test_cli_devclass_set_by_a_non_admin_exits_1_and_changes_nothing(
    device_class: Any, author: Any
):
    with pytest.raises(CommandError) as caught:
        cli(
            "devclass", "set", "--vendor-domain", "acme.example", "--name", "thermo-v2",
            "--delivery", "suit", "--user", author.user.username,
        )  # fmt: skip
    assert caught.value.returncode == 1
    assert "[approval.permission_denied]" in str(caught.value)
    assert DeviceClass.objects.get(pk=device_class.pk).delivery == "image"


# --- manifest import against the class's profile --------------------------------------------


def test_import_for_a_suit_class_refuses_a_uri_on_another_host_and_writes_nothing(
    device_class: Any, catalog_admin: Any, author: Any, image: Any
):
    services.device_class_set_delivery(
        device_class=device_class, delivery="suit", actor=catalog_admin
    )
    device_class.refresh_from_db()
    envelope = envelope_for(device_class, image, author, uri="coap://fw/app")
    with pytest.raises(PayloadURIError, match="not a gateway of this server"):
        services.manifest_import(envelope=envelope, created_by=author.user)
    assert not Manifest.objects.exists()
    assert not AuditEvent.objects.filter(action="manifest.import").exists()


def test_import_for_a_suit_class_takes_the_relative_image_path_or_a_gateway_uri(
    settings: Any, device_class: Any, catalog_admin: Any, author: Any, image: Any
):
    settings.LWM2M_PUBLIC_URI = "coap://fw.acme.example:5683"
    services.device_class_set_delivery(
        device_class=device_class, delivery="suit", actor=catalog_admin
    )
    device_class.refresh_from_db()
    for seq, uri in (
        (5, f"/fw/i/{image.sha256}"),
        (6, f"coap://fw.acme.example:5683/fw/i/{image.sha256}"),
    ):
        manifest = services.manifest_import(
            envelope=envelope_for(device_class, image, author, uri=uri, seq=seq),
            created_by=author.user,
        )
        assert manifest.uri == uri


def test_import_for_a_suit_integrated_class_needs_a_fragment_uri(
    device_class: Any, catalog_admin: Any, author: Any, image: Any
):
    services.device_class_set_delivery(
        device_class=device_class, delivery="suit-integrated", actor=catalog_admin
    )
    device_class.refresh_from_db()
    with pytest.raises(PayloadURIError, match="fragment-only"):
        services.manifest_import(
            envelope=envelope_for(device_class, image, author, uri=f"/fw/i/{image.sha256}"),
            created_by=author.user,
        )
    assert not Manifest.objects.exists()
    manifest = services.manifest_import(
        envelope=envelope_for(device_class, image, author, uri="#app"), created_by=author.user
    )
    assert manifest.uri == "#app"


# --- integrated payloads ---------------------------------------------------------------------


def _params(uri: str | None, payload: bytes = PAYLOAD) -> suit.ManifestParams:
    import hashlib

    return suit.ManifestParams(
        vendor_id=suit.vendor_id("acme.example"),
        class_id=suit.class_id(suit.vendor_id("acme.example"), "thermo-v2"),
        sequence_number=3,
        version="1.2.0",
        security_counter=1,
        image_digest=hashlib.sha256(payload).digest(),
        image_size=len(payload),
        uri=uri,
        component_id=(b"\x00",),
        payload_format="raw",
    )


def test_integrated_envelope_round_trip_keeps_the_signed_bytes_and_verifies():
    key = suit.generate_private_key("ES256")
    envelope = suit.create_envelope(_params("#app"), keys=[key])
    integrated = suit.integrate_payload(envelope, PAYLOAD)
    plain, env = suit.decode_envelope(envelope), suit.decode_envelope(integrated)
    assert env.manifest_bytes == plain.manifest_bytes
    assert env.manifest_digest == plain.manifest_digest
    assert [s.raw for s in env.signatures] == [s.raw for s in plain.signatures]
    assert dict(env.integrated_payloads) == {"#app": PAYLOAD}
    assert suit.verify_envelope(env, [key.public_key()]).ok
    device_rules.check_payload(
        env.integrated_payloads[env.manifest.uri], device_rules.facts_from_manifest(env.manifest)
    )
    # doing it twice changes nothing
    assert suit.integrate_payload(integrated, PAYLOAD, max_size=1 << 20) == integrated


def test_tampered_integrated_payload_fails_the_digest_check_though_signatures_verify():
    key = suit.generate_private_key("Ed25519")
    integrated = suit.integrate_payload(suit.create_envelope(_params("#app"), keys=[key]), PAYLOAD)
    at = integrated.index(PAYLOAD)
    tampered = integrated[:at] + b"\x38" + integrated[at + 1 :]
    env = suit.decode_envelope(tampered)
    assert suit.verify_envelope(env, [key.public_key()]).ok  # the payload is not signed bytes...
    with pytest.raises(device_rules.ImageDigestMismatchError):  # ...its digest in them is
        device_rules.check_payload(
            env.integrated_payloads["#app"], device_rules.facts_from_manifest(env.manifest)
        )


@pytest.mark.parametrize("uri", [None, "coap://fw/app", "/fw/i/x"])
def test_integrating_needs_a_fragment_uri(uri: str | None):
    envelope = suit.create_envelope(_params(uri), keys=[])
    with pytest.raises(suit.SUITParamsError, match="fragment-only"):
        suit.integrate_payload(envelope, PAYLOAD)


def test_integrating_another_payload_than_the_manifest_names_is_refused():
    envelope = suit.create_envelope(_params("#app"), keys=[])
    with pytest.raises(suit.SUITDigestMismatchError):
        suit.integrate_payload(envelope, PAYLOAD[:-1] + b"\x00")


def test_integrated_envelope_service_serves_a_fragment_manifest_with_its_image(
    device_class: Any, catalog_admin: Any, author: Any, image: Any
):
    services.device_class_set_delivery(
        device_class=device_class, delivery="suit-integrated", actor=catalog_admin
    )
    device_class.refresh_from_db()
    manifest = services.manifest_import(
        envelope=envelope_for(device_class, image, author, uri="#app"), created_by=author.user
    )
    data = services.integrated_envelope(manifest.manifest_digest)
    assert data is not None
    env = suit.decode_envelope(data, max_size=len(data))
    assert env.manifest_digest.hex() == manifest.manifest_digest
    assert env.integrated_payloads["#app"] == services.image_storage().read(image.sha256)
    assert services.integrated_envelope("00" * 32) is None


def test_integrated_envelope_service_has_none_for_a_manifest_without_fragment_uri(
    device_class: Any, author: Any, image: Any
):
    manifest = services.manifest_import(
        envelope=envelope_for(device_class, image, author, uri=f"/fw/i/{image.sha256}"),
        created_by=author.user,
    )
    assert services.integrated_envelope(manifest.manifest_digest) is None


@pytest.mark.django_db(transaction=True)
def test_migration_keeps_existing_classes_on_suit_delivery():
    """Deployed classes did SUIT delivery before profiles existed: the migration must not
    switch their devices to the image; only classes created afterwards default to image."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("manifests", "0001_initial")])
    old = executor.loader.project_state([("manifests", "0001_initial")]).apps
    vendor = old.get_model("manifests", "Vendor").objects.create(
        name="Acme", domain="acme.example", uuid=suit.vendor_id("acme.example")
    )
    old.get_model("manifests", "DeviceClass").objects.create(
        vendor=vendor, name="deployed", uuid=suit.class_id(vendor.uuid, "deployed")
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())  # everything, as before the test
    deployed = DeviceClass.objects.get(name="deployed")
    assert (deployed.delivery, deployed.delivery_method) == ("suit", "auto")
    fresh = DeviceClass.objects.create(
        vendor_id=vendor.pk, name="fresh", uuid=suit.class_id(vendor.uuid, "fresh")
    )
    assert fresh.delivery == "image"
