from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The operator web console: server-rendered pages over the same services as the CLI/API."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "console"
    verbose_name = "Operator console"

    def ready(self) -> None:
        from console import checks  # noqa: F401  (registers the deploy check)
