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

from app import revisions
from app.db import session_scope
from app.models import AuditLog, Job, Model
from app.storage import get_storage
from app.sweeper import sweep_once, utcnow
from worker import lease
from worker.runner import handle_doorbell

PARAMS = {"max_iterations": 12, "delta": 2.0}


@pytest.fixture
def stack(fake_stack: tuple[Any, str]) -> tuple[Any, str]:
    return fake_stack


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
    paper = {**PARAMS, "method": "paper"}  # random batches of 8: a run carries at most 8 forget images
    ids = [h.submit(settings, model_id, person, paper, n_images=4, enqueue=False) for person in (30, 31, 32)]
    assert handle_doorbell(ids[0], settings) == "ran 2 run(s)"
    assert [sorted(r["keys"]) for r in fake_pipeline.RUNS] == [sorted(ids[:2]), [ids[2]]]
    assert [(v.version, v.parent) for v in h.versions(settings, model_id)] == [(1, None), (2, 1), (3, 2)]


def test_the_default_method_carries_eight_requests_of_seven_photos_in_one_run(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    ids = [h.submit(settings, model_id, person, PARAMS, n_images=7, enqueue=False) for person in range(12)]
    assert handle_doorbell(ids[0], settings) == "ran 2 run(s)"
    assert [len(r["keys"]) for r in fake_pipeline.RUNS] == [11, 1]  # 77 photos fit the 80 of rules/method.py


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


def test_criterion_not_met_fails_without_a_version_and_keeps_its_report(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    job_id = h.submit(settings, model_id, 30, {**PARAMS, "seed": fake_pipeline.FAIL_SEED}, enqueue=False)
    handle_doorbell(job_id, settings)
    job = h.job(settings, job_id)
    assert job.state == "failed" and "stop criterion was not met" in job.error
    assert [v.version for v in h.versions(settings, model_id)] == [1]
    assert get_storage(settings).list(f"uploads/{job_id}/") == []
    # what the run measured stays readable, and says how the job ended
    assert job.report_key == f"reports/{job_id}.json"
    report = h.report(settings, job_id)
    assert report["stopping"]["criterion_met"] is False and report["model"]["new_version"] is None
    assert report["outcome"]["state"] == "failed" and "stop criterion" in report["outcome"]["error"]
    assert job.progress["done"] is True and job.progress["iteration"] == PARAMS["max_iterations"]
    assert not get_storage(settings).exists(f"stats/{model_id}/v2.json")


def _named_key(settings: Any, job_id: str, name: str) -> str:
    from app.auth import create_key

    with session_scope(settings) as s:
        key, _ = create_key(s, "operator", name)
        s.execute(update(Job).where(Job.id == job_id).values(submitted_by=key.id))
        return key.id


def test_a_job_that_fails_before_anything_is_measured_keeps_a_small_report(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    job_id = h.submit(settings, model_id, 30, PARAMS, n_images=2, enqueue=False)
    key_id = _named_key(settings, job_id, "erasure-desk")
    storage = get_storage(settings)
    for key in storage.list(f"uploads/{job_id}/"):
        storage.put_bytes(key, b"not an image any more")
    handle_doorbell(job_id, settings)
    job = h.job(settings, job_id)
    assert job.state == "failed" and "could not be used" in job.error
    report = h.report(settings, job_id)
    assert report["outcome"] == {"state": "failed", "error": job.error, "phase": "loading", "version": None}
    assert report["stopping"]["criterion_met"] is False and report["stopping"]["iterations"] == 0
    assert [i["sha256"] for i in report["inputs"]["forget"]] == [u["sha256"] for u in job.uploads]
    assert (report["job"]["submitted_by"], report["job"]["submitted_by_name"]) == (key_id, "erasure-desk")
    assert "erasure-desk" in storage.get_bytes(f"reports/{job_id}.html").decode()
    _assert_a_head_of_the_chain(settings, report["job"]["audit_head"])
    _assert_valid(report)


def _assert_valid(report: dict[str, Any]) -> None:
    import jsonschema

    from rules.report_schema import SCHEMA

    jsonschema.validate(report, SCHEMA)


def _assert_a_head_of_the_chain(settings: Any, head: dict[str, Any]) -> None:
    from app.db import session_scope
    from app.models import AuditLog

    with session_scope(settings) as session:
        row = session.get(AuditLog, head["id"])
        assert row is not None and (row.hash, row.mac) == (head["hash"], head["mac"])  # a pin `audit verify` takes


def test_a_finished_job_reads_done_and_its_version_keeps_its_statistics(stack: tuple[Any, str],
                                                                         monkeypatch: Any) -> None:
    from worker import version_stats

    settings, model_id = stack
    job_id = h.submit(settings, model_id, 30, PARAMS, enqueue=False)
    _named_key(settings, job_id, "alice")
    real, seen = fake_pipeline.run_requests, []

    def watching(*args: Any, on_phase: Any = None, **kw: Any) -> Any:
        def phase(name: str) -> None:
            on_phase(name)
            seen.append(h.job(settings, job_id).progress["phase"])  # on the row at once
        return real(*args, on_phase=phase, **kw)

    monkeypatch.setattr("taming.pipeline.run_requests", watching)
    handle_doorbell(job_id, settings)
    assert seen == ["loading", "features", "taming", "confirming", "evaluating", "reporting"]
    job = h.job(settings, job_id)
    p = job.progress
    assert job.state == "succeeded" and p["done"] is True and p["phase"] == "done"
    assert p["iteration"] == p["max_iterations"] == p["iteration_cap"] == PARAMS["max_iterations"]
    assert set(seen) <= set(p["phase_seconds"]) and p["last_phase"] == "reporting"
    report = h.report(settings, job_id)
    assert report["outcome"] == {"state": "succeeded", "error": None, "phase": None, "version": 2}
    assert report["job"]["submitted_by_name"] == "alice"
    _assert_a_head_of_the_chain(settings, report["job"]["audit_head"])  # the fake pipeline's report is no real one
    stats = version_stats.read(get_storage(settings), model_id, 2, h.versions(settings, model_id)[-1].sha256)
    assert stats is not None and (stats["source"], stats["mu"], stats["sigma"]) == ("run", 2.0, 0.25)


def test_the_models_held_out_remember_set_reaches_the_run(stack: tuple[Any, str], model_files: dict[str, Any]) -> None:
    settings, model_id = stack
    storage = get_storage(settings)
    with open(model_files["remember"], "rb") as f:
        held = revisions.put_registered(storage, model_id, revisions.REMEMBER_HOLDOUT, "holdout/held.npz", f)
    with session_scope(settings) as s:
        row = revisions.get_revision(s, model_id, 1)
        assert row is not None
        row.objects = [*row.objects, held]
    job_id = h.submit(settings, model_id, 30, PARAMS, enqueue=False)
    handle_doorbell(job_id, settings)
    assert h.job(settings, job_id).state == "succeeded"
    assert fake_pipeline.RUNS[-1]["remember_holdout"] == 200  # people 0-19, 10 photos each


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
    assert h.report(settings, dead)["outcome"]["error"] == job.error  # it keeps a report saying why
    assert get_storage(settings).list(f"uploads/{dead}/") == []
    with session_scope(settings) as s:  # rescued once per stale period, not once per sweep
        assert sweep_once(s, settings)["enqueued"] == [forgotten]


def test_the_criterion_message_speaks_of_what_the_job_asked_for() -> None:
    from types import SimpleNamespace

    from rules.jobs import JobKind
    from worker.finish import criterion_message

    result, config = SimpleNamespace(iterations=300), SimpleNamespace(max_iterations=300)
    erasure = criterion_message(result, config)
    assert "within 300 iterations" in erasure and "likelihood threshold" in erasure
    rebalance = criterion_message(result, config, JobKind.REBALANCE, 0.3)
    assert "within 300 iterations" in rebalance and "share" in rebalance and "target of 0.30" in rebalance
    assert "likelihood threshold" not in rebalance and "face" not in rebalance


def _failing_once(monkeypatch: Any, before_raising: Any = None) -> None:
    """The first run raises an unexpected error at iteration 8 (its state was saved at 5); later runs work."""
    real = fake_pipeline.run_requests

    def flaky(*args: Any, on_step: Any = None, **kw: Any) -> Any:
        def step(info: Any) -> None:
            if info.iteration == 8 and len(fake_pipeline.RUNS) == 1:
                if before_raising is not None:
                    before_raising()
                raise RuntimeError("CUDA out of memory")
            on_step(info)
        return real(*args, on_step=step, **kw)

    monkeypatch.setattr("taming.pipeline.run_requests", flaky)


def _actions_of(settings: Any, job_id: str) -> list[str]:
    with session_scope(settings) as s:
        return list(s.scalars(select(AuditLog.action).where(AuditLog.subject == job_id).order_by(AuditLog.id)))


def test_an_internal_error_requeues_the_run_and_it_resumes_from_its_saved_state(stack: tuple[Any, str],
                                                                                monkeypatch: Any) -> None:
    settings, model_id = stack
    ids = [h.submit(settings, model_id, person, PARAMS, n_images=2, enqueue=False) for person in (30, 31)]
    _failing_once(monkeypatch)
    assert handle_doorbell(ids[0], settings) == "ran 2 run(s)"
    first_run = fake_pipeline.RUNS[0]
    assert [(sorted(r["keys"]), r["start"]) for r in fake_pipeline.RUNS] == [(sorted(ids), 0), (sorted(ids), 5)]
    for job_id in ids:
        job = h.job(settings, job_id)
        assert (job.state, job.attempts, job.version) == ("succeeded", 2, 2)
        assert _actions_of(settings, job_id)[:4] == ["job.started", "job.error", "job.resumed", "job.succeeded"]
    assert first_run["meta"][0]["run_id"] == h.job(settings, ids[0]).run_id  # the same run, one more attempt


def test_a_job_cancelled_while_its_run_waits_to_resume_sends_the_others_afresh(stack: tuple[Any, str],
                                                                               monkeypatch: Any) -> None:
    settings, model_id = stack
    ids = [h.submit(settings, model_id, person, PARAMS, n_images=2, enqueue=False) for person in (30, 31)]

    def cancel_second() -> None:
        with session_scope(settings) as s:
            s.execute(update(Job).where(Job.id == ids[1]).values(cancel_requested=True))

    _failing_once(monkeypatch, cancel_second)
    handle_doorbell(ids[0], settings)
    # the saved state was tuned to both people: the one left starts a new run from the base
    assert [(sorted(r["keys"]), r["start"]) for r in fake_pipeline.RUNS] == [(sorted(ids), 0), ([ids[0]], 0)]
    assert h.job(settings, ids[1]).state == "cancelled"
    assert (h.job(settings, ids[0]).state, h.job(settings, ids[0]).attempts) == ("succeeded", 2)
    assert "job.requeued" in _actions_of(settings, ids[0])
    assert get_storage(settings).list(f"uploads/{ids[1]}/") == []
