"""Settings for the Celery worker processes started by ``test_worker_killed_e2e``: the project's
settings, with the test's own queue (so concurrent test runs sharing a Redis never take each
other's tasks) and a short visibility timeout (so the task a killed worker held is redelivered
within seconds, not the default hour)."""

import os

from config.settings import *  # noqa: F403

CELERY_TASK_DEFAULT_QUEUE = os.environ["FWUPD_TEST_CELERY_QUEUE"]
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 5,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
