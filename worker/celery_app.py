"""The worker's side of the Celery app: the shared configuration (app/queue.py) plus beat and the tasks.

Nothing heavy happens here: torch and the model are loaded inside a task, on the first job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from app.queue import SWEEP_TASK, celery_app, configure
from app.settings import get_settings
from app.sweeper import Timings


def configure_worker(settings: Any = None) -> Celery:
    """Configure `celery_app` for a worker process and register the tasks."""
    settings = settings or get_settings()
    configure(settings)
    celery_app.conf.update(
        # the tasks read the settings from the app (worker/tasks.py), so that a worker runs with these
        taming_settings=settings,
        # Beat (when run: `celery -A worker.celery_app beat`, or `taming worker --beat`) rings the
        # sweeper; `taming worker` also sweeps from a thread, so a deployment without beat loses nothing.
        beat_schedule={
            "sweep": {"task": SWEEP_TASK, "schedule": Timings.from_settings(settings).sweep_interval_seconds}
        },
        beat_schedule_filename=str(Path(settings.var_dir) / "celerybeat-schedule"),
        # The worker's own log format is enough; keep Celery from taking over the root logger twice.
        worker_redirect_stdouts=False,
    )
    import worker.tasks  # noqa: F401  (registers the tasks on celery_app)

    return celery_app

