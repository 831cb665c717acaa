from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "REST API and outbound webhooks"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from api import webhooks
        from audit.models import AuditEvent

        # Every audited campaign / release / emergency change can notify, with no service edits.
        post_save.connect(
            webhooks.on_audit_event_saved, sender=AuditEvent, dispatch_uid="api-webhooks"
        )
