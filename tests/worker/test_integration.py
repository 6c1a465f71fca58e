"""Real worker processes (`python -m worker`) against PostgreSQL + Redis + S3, and the embedded stack,
running the real taming library on a tiny model. Kill and cancel tests slow each iteration down
(tests/worker/paced_worker.py) so that the run is still going when they strike.
"""

from __future__ import annotations

from typing import Any

import pytest
import worker_helpers as h
from sqlalchemy import update

from app.db import session_scope
from app.models import Job, Model
from app.storage import get_storage
from app.sweeper import sweep_once

pytestmark = pytest.mark.slow  # real worker processes: `make test-all` and CI run them

SLOW_STEP = 0.15  # seconds of sleep per iteration, so that a run lasts long enough to kill or cancel
# Meets the criterion in about 20-30 iterations on the tiny model (a small δ, the scale-free forget loss).
QUICK = {"max_iterations": 80, "delta": 1.0, "epsilon": 0.5, "lr": 3e-3, "forget_loss": "scale_free"}
# Takes several saved states to converge, so that a kill lands mid-run and the resumed run still succeeds.
RESUMABLE = {**QUICK, "delta": 2.0, "max_iterations": 200}
# Runs to the cap: a δ far beyond reach keeps it iterating until cancelled.
LONG = {**QUICK, "delta": 50.0, "max_iterations": 60}


@pytest.fixture(params=["distributed", "embedded"])
def stack(request: pytest.FixtureRequest, model_files: dict[str, Any]) -> tuple[Any, str]:
    settings = request.getfixturevalue(request.param)
    return settings, h.add_model(settings, model_files)


def _uploads_gone(settings: Any, job_id: str) -> None:
    """The worker deletes a job's uploads right after committing its final state."""
    storage = get_storage(settings)
    h.wait_for(lambda: storage.list(f"uploads/{job_id}/") == [], 10, "the uploads to be deleted")


def _sweep(settings: Any) -> None:
    with session_scope(settings) as session:
        sweep_once(session, settings)


def test_submit_succeeds_with_version_2(stack: tuple[Any, str], workers: Any) -> None:
    settings, model_id = stack
    workers.start(settings)
    job_id = h.submit(settings, model_id, 30, QUICK)
    job = h.wait_state(settings, job_id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job.state == "succeeded", job.error
    assert job.version == 2 and job.attempts == 1
    v2 = h.versions(settings, model_id)[-1]
    assert (v2.version, v2.parent) == (2, 1)
    storage = get_storage(settings)
    from taming.checkpoint import file_sha256

    local = settings.var_dir / "v2.safetensors"
    local.parent.mkdir(parents=True, exist_ok=True)
    storage.download(v2.checkpoint_key, local)
    report = h.report(settings, job_id)
    assert file_sha256(local) == v2.sha256 == report["model"]["new_sha256"]
    assert report["stopping"]["criterion_met"] is True
    assert job.progress["done"] is True and job.progress["iteration"] == job.progress["max_iterations"]
    assert {"loading", "taming", "confirming", "evaluating", "reporting"} <= set(job.progress["phase_seconds"])
    assert storage.exists(f"stats/{model_id}/v2.json")  # the version's μ_R, σ_R for verify
    _uploads_gone(settings, job_id)
    with session_scope(settings) as session:
        assert session.get(Model, model_id).current_version == 2

    from app.queue import enqueue

    enqueue(job_id)  # a redelivered doorbell for the finished job changes nothing
    follow = h.submit(settings, model_id, 31, QUICK)  # and the worker is still alive and serving
    assert h.wait_state(settings, follow, {"succeeded", "failed"}, timeout=240).version == 3
    assert [v.version for v in h.versions(settings, model_id)] == [1, 2, 3]


def test_kill9_mid_job_resumes_on_a_new_worker(stack: tuple[Any, str], workers: Any) -> None:
    settings, model_id = stack
    first = workers.start(settings, SLOW_STEP)
    job_id = h.submit(settings, model_id, 30, RESUMABLE)
    every = settings.checkpoint_every
    h.wait_for(lambda: (h.job(settings, job_id).progress or {}).get("saved_iteration", 0) >= every,
               120, "a saved state")
    workers.kill9(first)
    killed_at = h.job(settings, job_id).progress["iteration"]
    workers.start(settings, SLOW_STEP)
    # The sweeper (beat in production) notices the stale heartbeat and rings the doorbell again.
    job = h.wait_state(settings, job_id, {"succeeded", "failed"}, timeout=180, every=1.0,
                       on_wait=lambda: _sweep(settings))
    assert job.state == "succeeded", job.error
    assert job.attempts == 2
    resumed_from = job.progress.get("resumed_from") or h.report(settings, job_id)["job"]["resumed_from_iteration"]
    assert every <= resumed_from <= killed_at
    assert h.report(settings, job_id)["job"]["attempts"] == 2
    assert [(v.version, v.parent) for v in h.versions(settings, model_id)] == [(1, None), (2, 1)]
    _uploads_gone(settings, job_id)


def test_five_requests_in_a_second_coalesce_into_a_chain(stack: tuple[Any, str], workers: Any) -> None:
    settings, model_id = stack
    workers.start(settings)
    # one photo each keeps the union within one forget batch, so the tiny model meets the rule quickly
    ids = [h.submit(settings, model_id, person, QUICK, n_images=1) for person in (30, 31, 32, 33, 34)]
    jobs = [h.wait_state(settings, i, {"succeeded", "failed"}, timeout=300) for i in ids]
    assert all(j.state == "succeeded" for j in jobs), [j.error for j in jobs]
    runs = {j.run_id for j in jobs}
    assert len(runs) < 5
    versions = h.versions(settings, model_id)
    parents = [v.parent for v in versions]
    assert len(parents) == len(set(parents))  # a single chain: no two versions share a parent
    assert [v.version for v in versions] == list(range(1, len(runs) + 2))
    for j in jobs:
        assert h.report(settings, j.id)["stopping"]["criterion_met"] is True


def test_cancel_while_running(stack: tuple[Any, str], workers: Any) -> None:
    settings, model_id = stack
    workers.start(settings, SLOW_STEP)
    job_id = h.submit(settings, model_id, 30, LONG)
    h.wait_for(lambda: (h.job(settings, job_id).progress or {}).get("iteration", 0) >= 2, 120, "progress")
    with session_scope(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    at_cancel = h.job(settings, job_id).progress["iteration"]
    job = h.wait_state(settings, job_id, {"cancelled", "succeeded", "failed"}, timeout=60)
    assert job.state == "cancelled" and job.version is None
    assert job.progress["iteration"] - at_cancel <= 2 * settings.checkpoint_every
    assert [v.version for v in h.versions(settings, model_id)] == [1]
    _uploads_gone(settings, job_id)
