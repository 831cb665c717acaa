from django.apps import AppConfig


class OpsConfig(AppConfig):
    """What operators run the service with: health and readiness probes, Prometheus metrics,
    request ids and structured logs (docs/operations.md)."""

    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        from ops import celery_context, checks  # noqa: F401  (signal handlers, settings checks)
