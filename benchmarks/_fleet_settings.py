"""Settings of the processes ``bench_fleet.py`` starts (gateways, Celery workers): the project's
settings with the run's own Celery queue, so a benchmark sharing a Redis with other work never
takes its tasks or gives it its own."""

import os

from config.settings import *  # noqa: F403

CELERY_TASK_DEFAULT_QUEUE = os.environ["BENCH_FLEET_QUEUE"]
