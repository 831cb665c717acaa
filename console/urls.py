"""Console routes (mounted at the site root by config/urls.py)."""

from django.urls import path

from console import fleet_views, trust_views, views, views_devices, webhooks

app_name = "console"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("partials/campaigns/", views.dashboard_campaigns, name="dashboard-campaigns"),
    path("campaigns/", views.campaign_list, name="campaigns"),
    # "+new" is outside the campaign-name grammar (^[a-z0-9][a-z0-9-]{0,62}$), so no campaign
    # can shadow the form, whatever it is called (docs/console.md).
    path("campaigns/+new/", views.campaign_new, name="campaign-new"),
    path("campaigns/<str:name>/", views.campaign_detail, name="campaign"),
    path("campaigns/<str:name>/live/", views.campaign_live, name="campaign-live"),
    path("campaigns/<str:name>/devices/", views.campaign_devices, name="campaign-devices"),
    path("campaigns/<str:name>/<str:action>/", views.campaign_action, name="campaign-action"),
    path("releases/", views.release_list, name="releases"),
    path("releases/<str:name>/", views.release_detail, name="release"),
    path("releases/<str:name>/approve/", views.release_approve, name="release-approve"),
    path("releases/<str:name>/revoke/", views.release_revoke, name="release-revoke"),
    path("incident/", views.incident, name="incident"),
    path("incident/stop/", views.emergency_stop, name="emergency-stop"),
    path("incident/revoke/", views.incident_revoke, name="incident-revoke"),
    path("incident/rollback/", views.rollback_launch, name="rollback-launch"),
    path("incident/stops/<int:pk>/lift/", views.emergency_lift, name="emergency-lift"),
    path("audit/", views.audit_log, name="audit"),
    path("device-classes/", views.device_class_list, name="device-classes"),
    path(
        "device-classes/<int:pk>/delivery/",
        views.device_class_delivery,
        name="device-class-delivery",
    ),
    # Device trust policies (console/trust_views.py).
    path("device-classes/<int:pk>/trust/", trust_views.class_trust, name="class-trust"),
    path(
        "device-classes/<int:pk>/trust/draft/",
        trust_views.class_trust_draft,
        name="class-trust-draft",
    ),
    path("trust-policies/<int:pk>/", trust_views.policy_detail, name="trust-policy"),
    path("trust-policies/<int:pk>/body/", trust_views.policy_body, name="trust-policy-body"),
    path(
        "trust-policies/<int:pk>/document/",
        trust_views.policy_document,
        name="trust-policy-document",
    ),
    path("trust-policies/<int:pk>/sign/", trust_views.policy_sign, name="trust-policy-sign"),
    path(
        "trust-policies/<int:pk>/release/",
        trust_views.policy_release,
        name="trust-policy-release",
    ),
    path("devices/", views_devices.device_list, name="devices"),
    path("devices/<str:endpoint>/", views_devices.device_detail, name="device"),
    # Fleet management. A device's tags hang below it (an endpoint holds no "/"); the rest is
    # not under devices/, where any name could be a device's endpoint.
    path("devices/<str:endpoint>/tags/", fleet_views.device_tags, name="device-tags"),
    path("fleet/tags/", fleet_views.bulk_tags, name="device-bulk-tags"),
    path("fleet/import/", fleet_views.device_import, name="device-import"),
    path("fleet/groups/", fleet_views.device_groups, name="device-groups"),
    path(
        "fleet/groups/<str:name>/delete/",
        fleet_views.device_group_delete,
        name="device-group-delete",
    ),
    # Outbound webhooks (console/webhooks.py).
    path("webhooks/", webhooks.webhook_list, name="webhooks"),
    path("webhooks/<int:pk>/", webhooks.webhook_detail, name="webhook"),
    path("webhooks/<int:pk>/<str:action>/", webhooks.webhook_action, name="webhook-action"),
    path(
        "webhooks/deliveries/<uuid:delivery_id>/resend/",
        webhooks.webhook_delivery_resend,
        name="webhook-resend",
    ),
]
