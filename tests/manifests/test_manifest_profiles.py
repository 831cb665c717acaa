"""Manifest profiles on the release side: the migration keeps deployed classes on what they did,
and the service refuses bad input with nothing written."""

from __future__ import annotations

from typing import Any

import pytest

from audit.models import AuditEvent
from manifests import services, suit
from manifests.errors import ManifestProfileError
from manifests.models import DeviceClass

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_migration_keeps_existing_classes_on_the_extended_profile():
    """Deployed classes wrote the custom security counter and payload format before profiles
    existed, and their devices expect them: the migration must leave them "extended"."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("manifests", "0002_device_class_delivery")])
    old = executor.loader.project_state([("manifests", "0002_device_class_delivery")]).apps
    vendor = old.get_model("manifests", "Vendor").objects.create(
        name="Acme", domain="acme.example", uuid=suit.vendor_id("acme.example")
    )
    old.get_model("manifests", "DeviceClass").objects.create(
        vendor=vendor, name="deployed", uuid=suit.class_id(vendor.uuid, "deployed")
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())  # everything, as before the test
    assert DeviceClass.objects.get(name="deployed").manifest_profile == "extended"


def test_unknown_profile_is_refused_at_create_and_set_and_nothing_is_written(
    vendor: Any, catalog_admin: Any, device_class: Any
):
    before = (DeviceClass.objects.count(), AuditEvent.objects.count())
    with pytest.raises(ManifestProfileError, match="'suit'"):
        services.device_class_create(
            vendor=vendor, name="x", manifest_profile="suit", actor=catalog_admin
        )
    with pytest.raises(ManifestProfileError):
        services.device_class_set_manifest_profile(
            device_class=device_class, manifest_profile="", actor=catalog_admin
        )
    assert (DeviceClass.objects.count(), AuditEvent.objects.count()) == before
    assert DeviceClass.objects.get(pk=device_class.pk).manifest_profile == "extended"


def test_created_class_records_its_profile_in_the_audit_event(vendor: Any, catalog_admin: Any):
    services.device_class_create(
        vendor=vendor, name="stock", manifest_profile="standard", actor=catalog_admin
    )
    event = AuditEvent.objects.get(action="device_class.create", details__name="stock")
    assert event.details["manifest_profile"] == "standard"
