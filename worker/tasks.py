"""The Celery tasks: thin doorbells. The logic lives in worker/runner.py and app/sweeper.py."""

from __future__ import annotations

import logging
from typing import Any

from app.queue import RUN_JOB_TASK, SWEEP_TASK, celery_app
from app.settings import get_settings

log = logging.getLogger(__name__)


def current_settings() -> Any:
    """The settings the worker was configured with (worker/celery_app.py), else the environment's."""
    return celery_app.conf.get("taming_settings") or get_settings()


@celery_app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> str:
    """Run the job (and every job of its model that is waiting) unless it is finished or the model is busy."""
    from worker.runner import handle_doorbell

    outcome = handle_doorbell(job_id, current_settings())
    log.info("job %s: %s", job_id, outcome)
    return outcome


@celery_app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> dict[str, list[str]]:
    from app.db import session_scope
    from app.sweeper import sweep_once

    settings = current_settings()
    with session_scope(settings) as session:
        return sweep_once(session, settings)
