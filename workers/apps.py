from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Workers and LwM2M gateway"

    def ready(self) -> None:
        # Registers the tasks under their names in every process that loads Django: the fleet
        # side queues them by name (``campaigns.device_services.command_queue``) without
        # importing this app.
        from workers import tasks  # noqa: F401
