"""The queue client: a Celery app the API uses to ring the worker's doorbell.

The job row in the database is the truth; a message on the broker only says "look at job X". So the
message carries nothing but the job id, losing one is repaired by the sweeper (app/sweeper.py), and a
duplicate is harmless (the worker re-reads the row and does nothing for a finished job).

Import-light on purpose: no torch, no worker/ — the API process sends tasks by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from app.settings import Settings, get_settings

RUN_JOB_TASK = "taming.run_job"
SWEEP_TASK = "taming.sweep"
GPU_QUEUE = "gpu"


def broker_folders(var_dir: Path) -> dict[str, Any]:
    """The filesystem transport's folders under <var_dir>/broker, created if missing.

    Producer and consumer share one folder for in and out: a message written by the API is the one
    the worker reads. kombu does not create them itself.
    """
    root = Path(var_dir) / "broker"
    queue_dir = root / "queue"
    processed = root / "processed"
    control = root / "control"  # kombu's default is ./control, beside whatever the working folder is
    for folder in (queue_dir, processed, control):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "processed_folder": str(processed),
        "control_folder": str(control),
        "store_processed": False,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting the API and the worker share, from the typed settings object."""
    broker_url = settings.broker_url
    time_limit = settings.job_time_limit_seconds
    transport_options: dict[str, Any] = {
        # Well above the longest job: Redis redelivers an unacknowledged message after this long, and
        # a job must never be handed out twice while it is still running.
        "visibility_timeout": 2 * time_limit + 3600,
    }
    if broker_url.startswith("filesystem://"):
        transport_options.update(broker_folders(Path(settings.var_dir)))
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle on the broker would let whoever can write there run code in the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # No result backend: results live in the database rows.
        "task_ignore_result": True,
        # Acknowledge after the run, and give the message back when the worker process dies mid-run.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One job at a time per worker process (one per GPU): never hoard messages.
        "worker_prefetch_multiplier": 1,
        # Honoured by pools that can enforce them (prefork); the solo pool the GPU workers use cannot,
        # so the worker also checks the wall-clock limit itself between iterations.
        "task_soft_time_limit": time_limit,
        "task_time_limit": time_limit + 300,
        "task_routes": {RUN_JOB_TASK: {"queue": GPU_QUEUE}, SWEEP_TASK: {"queue": GPU_QUEUE}},
        "task_default_queue": GPU_QUEUE,
        "timezone": "UTC",
        "enable_utc": True,
    }


# A real Celery instance whose configuration is read from the settings on first use (Celery evaluates
# `add_defaults` callables lazily), so importing this module reads no settings and touches no broker.
celery_app = Celery("taming", set_as_current=False)
celery_app.add_defaults(lambda: celery_config(get_settings()))


def configure(settings: Settings) -> None:
    """Point `celery_app` at other settings (tests, `taming serve` after parsing its options)."""
    celery_app.conf.update(celery_config(settings))


def enqueue(job_id: str, countdown: float | None = None) -> None:
    """Ring the doorbell for one job. Call only after the job row is committed.

    A connection per doorbell (jobs are rare and long) keeps no pooled connection bound to a broker
    the settings no longer name.
    """
    with celery_app.connection_for_write() as connection:
        celery_app.send_task(RUN_JOB_TASK, args=[job_id], queue=GPU_QUEUE, countdown=countdown,
                             connection=connection)
