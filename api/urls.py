"""Routes of the REST API under /api/. URL names are the keys of the permission matrix."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from api import views

router = SimpleRouter()
router.register("vendors", views.VendorViewSet, basename="vendor")
router.register("device-classes", views.DeviceClassViewSet, basename="deviceclass")
router.register("images", views.ImageViewSet, basename="image")
router.register("manifests", views.ManifestViewSet, basename="manifest")
router.register("releases", views.ReleaseViewSet, basename="release")
router.register("keys", views.KeyViewSet, basename="key")
router.register("payload-keys", views.PayloadKeyViewSet, basename="payloadkey")
router.register("image-keys", views.ImageKeyViewSet, basename="imagekey")
router.register("policies", views.PolicyViewSet, basename="policy")
router.register("trust-policies", views.TrustPolicyViewSet, basename="trustpolicy")
router.register("roles", views.RoleViewSet, basename="role")
router.register("delegations", views.DelegationViewSet, basename="delegation")
router.register("devices", views.DeviceViewSet, basename="device")
router.register("device-tags", views.DeviceTagViewSet, basename="devicetag")
router.register("device-groups", views.DeviceGroupViewSet, basename="devicegroup")
router.register("campaigns", views.CampaignViewSet, basename="campaign")
router.register("campaign-plans", views.CampaignPlanViewSet, basename="campaignplan")
router.register("rollouts", views.RolloutViewSet, basename="rollout")
router.register("emergency-stops", views.EmergencyStopViewSet, basename="emergencystop")
router.register("rollback", views.RollbackViewSet, basename="rollback")
router.register("audit-events", views.AuditEventViewSet, basename="auditevent")
router.register("webhooks", views.WebhookViewSet, basename="webhook")
router.register("webhook-deliveries", views.WebhookDeliveryViewSet, basename="webhookdelivery")

urlpatterns = [
    path("", views.ApiRootView.as_view(router=router), name="api-root"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("me/", views.MeView.as_view(), name="me"),
    path("", include(router.urls)),
]
