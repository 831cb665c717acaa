from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Fleet: devices, campaigns, rollouts"

    def ready(self) -> None:
        from campaigns import receivers
        from manifests.signals import (
            device_class_created,
            release_approval_lost,
            release_revoked,
            vendor_created,
        )

        release_revoked.connect(receivers.on_release_revoked, dispatch_uid="campaigns-revoked")
        release_approval_lost.connect(
            receivers.on_release_approval_lost, dispatch_uid="campaigns-approval-lost"
        )
        vendor_created.connect(receivers.on_vendor_created, dispatch_uid="campaigns-vendor")
        device_class_created.connect(
            receivers.on_device_class_created, dispatch_uid="campaigns-device-class"
        )
