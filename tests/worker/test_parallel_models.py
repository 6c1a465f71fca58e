"""Many models at once: two worker processes run two models' jobs at the same time (the lease is per model), while
one model's jobs still run one after another. Real Celery workers on the fake pipeline (tests/worker/fake_pipeline.py,
paced), so that it takes seconds; on PostgreSQL + Redis + S3 and on the embedded stack.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import worker_helpers as h
from sqlalchemy import select

from app.db import session_scope
from app.models import AuditLog

pytestmark = pytest.mark.slow  # real worker processes: `make test-all` and CI run them

STEP = 0.1  # seconds per fake iteration
# 4 s a job; 5 + 5 photos exceed the paper method's coalescing cap of 8, so two jobs never share a run
PARAMS = {"method": "paper", "max_iterations": 40, "delta": 2.0}


@pytest.fixture(params=["distributed", "embedded"])
def stack(request: pytest.FixtureRequest, model_files: dict[str, Any]) -> tuple[Any, str, str]:
    settings = request.getfixturevalue(request.param)
    return settings, h.add_model(settings, model_files, "faces-a"), h.add_model(settings, model_files, "faces-b")


def _span(settings: Any, job_id: str) -> tuple[datetime, datetime]:
    job = h.job(settings, job_id)
    assert job.state == "succeeded", job.error
    return job.started_at, job.finished_at


def _started_by(settings: Any, job_id: str) -> str:
    with session_scope(settings) as session:
        return str(session.scalars(select(AuditLog.actor).where(AuditLog.subject == job_id,
                                                                AuditLog.action == "job.started")).one())


def test_two_models_run_at_once_on_two_workers(stack: tuple[Any, str, str], workers: Any) -> None:
    settings, model_a, model_b = stack
    for _ in range(2):
        workers.start(settings, STEP, fake=True)
    h.wait_for(lambda: workers.logs().count(" ready.") >= 2, 120, "both workers to be ready")
    a1 = h.submit(settings, model_a, 30, PARAMS, n_images=5)
    a2 = h.submit(settings, model_a, 31, PARAMS, n_images=5)
    b1 = h.submit(settings, model_b, 32, PARAMS, n_images=5)
    both_running = h.wait_for(lambda: h.job(settings, a1).state == "running" == h.job(settings, b1).state, 60,
                              "a job of each model running at the same moment", every=0.1)
    assert both_running
    for job_id in (a1, a2, b1):
        h.wait_state(settings, job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
    (a1_start, a1_end), (a2_start, _), (b1_start, b1_end) = (_span(settings, j) for j in (a1, a2, b1))
    assert b1_start < a1_end and a1_start < b1_end  # the second model did not wait for the first
    assert a1_end <= a2_start  # one model's jobs still one after another, on one chain
    assert _started_by(settings, a1) == _started_by(settings, a2) != _started_by(settings, b1)
    assert [v.version for v in h.versions(settings, model_a)] == [1, 2, 3]
    assert [v.version for v in h.versions(settings, model_b)] == [1, 2]
