from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Fleet: devices, campaigns, rollouts"

    def ready(self) -> None:
        from campaigns import receivers
        from manifests.signals import release_approval_lost, release_revoked

        release_revoked.connect(receivers.on_release_revoked, dispatch_uid="campaigns-revoked")
        release_approval_lost.connect(
            receivers.on_release_approval_lost, dispatch_uid="campaigns-approval-lost"
        )
