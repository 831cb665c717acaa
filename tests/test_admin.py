"""Every admin page loads for an admin, and immutable records offer no add/change/delete."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.urls import reverse


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model", list(admin.site._registry), ids=lambda m: f"{m._meta.app_label}.{m._meta.model_name}"
)
def test_admin_changelist_loads(client: Any, admin: Any, model: Any):
    client.force_login(admin)
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert client.get(url).status_code == 200


@pytest.mark.parametrize(
    "name",
    [
        "manifests.manifest",
        "manifests.firmwareimage",
        "manifests.firmwaredelta",
        "audit.auditevent",
        "manifests.approval",
        "campaigns.rollout",
        "people.externalidentity",
    ],
)
def test_immutable_records_are_read_only_in_admin(rf: Any, name: str):
    from django.apps import apps

    model = apps.get_model(name)
    model_admin = admin.site._registry[model]
    request = rf.get("/")
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
