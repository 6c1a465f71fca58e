"""The job machinery in-process (no Celery, no broker): leases, coalescing, cancel, resume, failure, sweep.

Runs on the embedded stack (SQLite + local folder) with the fake pipeline, so it takes seconds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import fake_pipeline
import pytest
import torch
import worker_helpers as h
from sqlalchemy import select, update

from app.db import session_scope
from app.models import AuditLog, Job, Model
from app.storage import get_storage
from app.sweeper import sweep_once, utcnow
from worker import lease
from worker.runner import handle_doorbell

PARAMS = {"max_iterations": 12, "delta": 2.0}


@pytest.fixture
def stack(embedded: Any, model_files: dict[str, Any]) -> tuple[Any, str]:
    fake_pipeline.install(0.0)
    fake_pipeline.RUNS.clear()
    return embedded, h.add_model(embedded, model_files)


def test_lease_is_exclusive_until_it_expires(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    now = utcnow()
    with session_scope(settings) as s:
        assert lease.acquire(s, model_id, "a", 10, now)
    with session_scope(settings) as s:
        assert not lease.acquire(s, model_id, "b", 10, now)
        assert lease.acquire(s, model_id, "a", 10, now)  # re-entrant for its holder
    with session_scope(settings) as s:
        assert lease.acquire(s, model_id, "b", 10, now + timedelta(seconds=11))  # expired: taken over
    with session_scope(settings) as s:
        assert not lease.renew(s, model_id, "a", 10, now)  # the old holder learns it lost the model
        assert lease.release(s, model_id, "b")


def test_requests_beyond_one_forget_batch_wait_for_the_next_run(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    ids = [h.submit(settings, model_id, person, PARAMS, n_images=4, enqueue=False) for person in (30, 31, 32)]
    assert handle_doorbell(ids[0], settings) == "ran 2 run(s)"
    assert [sorted(r["keys"]) for r in fake_pipeline.RUNS] == [sorted(ids[:2]), [ids[2]]]
    assert [(v.version, v.parent) for v in h.versions(settings, model_id)] == [(1, None), (2, 1), (3, 2)]


def test_waiting_jobs_run_together_and_redelivery_is_a_noop(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    # two photos each: three requests fit in one run of the paper's method (rules.method.coalesce_images)
    ids = [h.submit(settings, model_id, person, PARAMS, n_images=2, enqueue=False) for person in (30, 31, 32)]
    other = h.submit(settings, model_id, 33, {**PARAMS, "delta": 3.0}, n_images=2, enqueue=False)

    assert handle_doorbell(ids[0], settings) == "ran 2 run(s)"
    assert [sorted(r["keys"]) for r in fake_pipeline.RUNS] == [sorted(ids), [other]]
    versions = h.versions(settings, model_id)
    assert [(v.version, v.parent) for v in versions] == [(1, None), (2, 1), (3, 2)]
    storage = get_storage(settings)
    for job_id in ids:
        job = h.job(settings, job_id)
        assert (job.state, job.version, job.attempts) == ("succeeded", 2, 1)
        assert h.report(settings, job_id)["model"]["new_sha256"] == versions[1].sha256
        assert storage.list(f"uploads/{job_id}/") == []
    assert h.job(settings, other).version == 3
    with session_scope(settings) as s:
        assert s.get(Model, model_id).current_version == 3
        assert s.get(Model, model_id).lease_owner is None
        actions = set(s.scalars(select(AuditLog.action)))
    assert {"job.started", "version.created", "model.current_version", "job.succeeded",
            "job.uploads_deleted"} <= actions

    assert handle_doorbell(ids[1], settings) == "already succeeded"
    assert len(h.versions(settings, model_id)) == 3


def test_doorbell_returns_when_the_model_is_busy(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    job_id = h.submit(settings, model_id, 30, PARAMS, enqueue=False)
    with session_scope(settings) as s:
        lease.acquire(s, model_id, "someone-else", 60, utcnow())
    assert handle_doorbell(job_id, settings) == "model busy"
    assert h.job(settings, job_id).state == "queued"


def test_cancel_drops_one_job_and_reruns_the_others(stack: tuple[Any, str], monkeypatch: Any) -> None:
    settings, model_id = stack
    ids = [h.submit(settings, model_id, person, PARAMS, n_images=2, enqueue=False) for person in (30, 31, 32)]
    real = fake_pipeline.run_requests

    def cancel_midway(*args: Any, on_step: Any = None, **kw: Any) -> Any:
        def step(info: Any) -> None:
            if info.iteration == 3 and len(fake_pipeline.RUNS) == 1:
                with session_scope(settings) as s:
                    s.execute(update(Job).where(Job.id == ids[1]).values(cancel_requested=True))
            on_step(info)
        return real(*args, on_step=step, **kw)

    monkeypatch.setattr("taming.pipeline.run_requests", cancel_midway)
    handle_doorbell(ids[0], settings)
    cancelled = h.job(settings, ids[1])
    assert (cancelled.state, cancelled.version) == ("cancelled", None)
    assert cancelled.progress["iteration"] <= 3 + 5  # within a few iterations
    assert [sorted(r["keys"]) for r in fake_pipeline.RUNS] == [sorted(ids), sorted([ids[0], ids[2]])]
    assert {h.job(settings, i).state for i in (ids[0], ids[2])} == {"succeeded"}
    assert [v.version for v in h.versions(settings, model_id)] == [1, 2]
    assert get_storage(settings).list(f"uploads/{ids[1]}/") == []


def test_a_dead_run_resumes_from_its_saved_state(stack: tuple[Any, str], tmp_path: Any) -> None:
    settings, model_id = stack
    job_id = h.submit(settings, model_id, 30, PARAMS, enqueue=False)
    # What a worker killed at iteration 7 leaves behind: a running row, its run's state at iteration 5.
    torch.save({"iteration": 5}, tmp_path / "state.pt")
    get_storage(settings).put_bytes("runs/r1/state.pt", (tmp_path / "state.pt").read_bytes())
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            state="running", run_id="r1", base_version=1, attempts=1, started_at=utcnow(),
            heartbeat_at=utcnow() - timedelta(seconds=60)))

    handle_doorbell(job_id, settings)
    job = h.job(settings, job_id)
    assert (job.state, job.attempts, job.version, job.run_id) == ("succeeded", 2, 2, "r1")
    assert fake_pipeline.RUNS[-1]["start"] == 5
    assert h.report(settings, job_id)["job"]["attempts"] == 2
    assert get_storage(settings).list("runs/r1/") == []


def test_criterion_not_met_fails_without_a_version(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    job_id = h.submit(settings, model_id, 30, {**PARAMS, "seed": fake_pipeline.FAIL_SEED}, enqueue=False)
    handle_doorbell(job_id, settings)
    job = h.job(settings, job_id)
    assert job.state == "failed" and "stop criterion was not met" in job.error
    assert [v.version for v in h.versions(settings, model_id)] == [1]
    assert get_storage(settings).list(f"uploads/{job_id}/") == []


def test_sweeper_rescues_stale_jobs_and_gives_up_after_max_attempts(stack: tuple[Any, str], monkeypatch: Any) -> None:
    settings, model_id = stack
    rung: list[str] = []
    monkeypatch.setattr("app.queue.enqueue", lambda job_id, countdown=None: rung.append(job_id))
    stale = utcnow() - timedelta(seconds=60)
    retry = h.submit(settings, model_id, 30, PARAMS, enqueue=False)
    dead = h.submit(settings, model_id, 31, PARAMS, enqueue=False)
    forgotten = h.submit(settings, model_id, 32, PARAMS, enqueue=False)
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == retry).values(state="running", run_id="a", attempts=1,
                                                            heartbeat_at=stale))
        s.execute(update(Job).where(Job.id == dead).values(state="running", run_id="b", attempts=3,
                                                           heartbeat_at=stale))
        s.execute(update(Job).where(Job.id == forgotten).values(created_at=stale))
    with session_scope(settings) as s:
        result = sweep_once(s, settings)
    assert sorted(result["enqueued"]) == sorted([retry, forgotten]) and sorted(rung) == sorted([retry, forgotten])
    assert result["failed"] == [dead]
    job = h.job(settings, dead)
    assert job.state == "failed" and "gave up after 3 attempts" in job.error
    assert get_storage(settings).list(f"uploads/{dead}/") == []
    with session_scope(settings) as s:  # rescued once per stale period, not once per sweep
        assert sweep_once(s, settings)["enqueued"] == [forgotten]
