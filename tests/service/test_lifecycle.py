"""app/lifecycle.py on SQLite, without Celery or a worker: each transition sets the state and its fields, writes
exactly its audit record, deletes the uploads when the job ends and records one `job.completed` webhook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import lifecycle
from app.db import new_session
from app.migrate import upgrade
from app.models import AuditLog, Job, Model, WebhookEvent, new_id
from app.settings import Settings
from app.storage import Storage, get_storage
from rules.jobs import JobState

ACTOR = "worker:test"


@pytest.fixture
def db(settings: Settings) -> Iterator[tuple[Session, Storage]]:
    upgrade(settings)
    session = new_session(settings)
    session.add(Model(id="m1", name="faces", remember_prefix="remember/m1/", image_size=32, channels=1, n_bits=5,
                      created_by="admin"))
    session.commit()
    yield session, get_storage(settings)
    session.close()


def _job(session: Session, storage: Storage, **values: Any) -> Job:
    """A queued job with one uploaded photo and a callback (so that its webhooks are recorded)."""
    job_id = new_id()
    key = f"uploads/{job_id}/forget/0.png"
    storage.put_bytes(key, b"photo")
    job = Job(id=job_id, kind="forget_identity", model_id="m1", subject_ref="person-1", parameters={},
              submitted_by="k1", uploads=[{"field": "forget", "key": key, "sha256": "ab" * 32}],
              callback_url="https://example.org/hook", progress={})
    lifecycle.submitted(session, job, "k1")
    for name, value in values.items():
        setattr(job, name, value)
    session.commit()
    return job


def _actions(session: Session, job: Job) -> list[str]:
    rows = session.scalars(select(AuditLog).where(AuditLog.subject.in_([job.id, f"job:{job.id}"]))
                           .order_by(AuditLog.id))
    return [row.action for row in rows]


def _webhooks(session: Session, job: Job) -> list[str]:
    return sorted(session.scalars(select(WebhookEvent.event_type).where(WebhookEvent.job_id == job.id)))


def _running(session: Session, storage: Storage) -> Job:
    job = _job(session, storage)
    assert lifecycle.claimed(session, [job], "run1", 1, ACTOR) == [job]
    session.commit()
    return job


def test_submitted_is_queued_and_audited(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _job(session, storage)
    assert job.state == JobState.QUEUED
    assert _actions(session, job) == ["job.submit"] and _webhooks(session, job) == []


def test_claimed_starts_a_run(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _running(session, storage)
    assert (job.state, job.run_id, job.base_version, job.attempts) == ("running", "run1", 1, 1)
    assert job.started_at is not None and job.heartbeat_at is not None
    assert _actions(session, job) == ["job.submit", "job.started"]
    assert _webhooks(session, job) == ["job.started"]
    assert storage.list(f"uploads/{job.id}/")  # a running job still needs its photos


def test_succeeded_ends_with_its_version(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _running(session, storage)
    assert lifecycle.succeeded(session, [job], 2, "cd" * 32, storage, ACTOR, iterations=40) == [job]
    session.commit()
    assert (job.state, job.version, job.error, job.report_key) == ("succeeded", 2, None, f"reports/{job.id}.json")
    assert job.finished_at is not None and job.progress["done"] is True and job.progress["iteration"] == 40
    assert _actions(session, job)[2:] == ["job.succeeded", "job.uploads_deleted"]
    assert _webhooks(session, job) == ["job.completed", "job.started"]
    assert storage.list(f"uploads/{job.id}/") == []


def test_failed_keeps_the_message(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _running(session, storage)
    lifecycle.failed(session, [job], "it broke", storage, ACTOR, run_id="run1")
    session.commit()
    assert (job.state, job.error, job.version) == ("failed", "it broke", None)
    rows = session.scalars(select(AuditLog).where(AuditLog.subject == job.id).order_by(AuditLog.id)).all()
    assert [(r.action, r.details) for r in rows][1:] == [
        ("job.failed", {"error": "it broke", "run_id": "run1"}),
        ("job.uploads_deleted", {"files": 1, "keys": [job.uploads[0]["key"]], "sha256": ["ab" * 32]})]
    assert _webhooks(session, job) == ["job.completed", "job.started"]
    assert storage.list(f"uploads/{job.id}/") == []


def test_gave_up_keeps_the_dead_runs_progress(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _running(session, storage)
    job.progress = {"phase": "taming", "iteration": 7}
    session.commit()
    assert lifecycle.gave_up(session, [job], "gave up after 3 attempts", storage, "sweeper") == [job]
    session.commit()
    assert job.state == "failed" and job.progress == {"phase": "taming", "iteration": 7}
    assert _actions(session, job)[2:] == ["job.failed", "job.uploads_deleted"]
    assert storage.list(f"uploads/{job.id}/") == []


def test_cancelled_before_it_started(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _job(session, storage)
    lifecycle.cancel_requested(session, job, storage, "k1")
    session.commit()
    assert (job.state, job.cancel_requested, job.started_at) == ("cancelled", True, None)
    assert job.finished_at is not None and job.progress == {}
    assert _actions(session, job) == ["job.submit", "job.cancel", "job.cancelled", "job.uploads_deleted"]
    assert _webhooks(session, job) == ["job.completed"]
    assert storage.list(f"uploads/{job.id}/") == []


def test_a_running_job_asked_to_stop_is_only_flagged_until_its_run_stops(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _running(session, storage)
    lifecycle.cancel_requested(session, job, storage, "k1")
    session.commit()
    assert (job.state, job.cancel_requested) == ("running", True)
    assert storage.list(f"uploads/{job.id}/")
    lifecycle.cancelled(session, [job], storage, ACTOR, iterations=3)
    session.commit()
    assert job.state == "cancelled" and job.progress["done"] is True
    assert _actions(session, job)[2:] == ["job.cancel", "job.cancelled", "job.uploads_deleted"]
    assert _webhooks(session, job) == ["job.completed", "job.started"]


def test_requeued_goes_back_without_its_run(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _running(session, storage)
    assert lifecycle.requeued(session, [job], "another job of its run failed alone", ACTOR, "run1") == [job]
    session.commit()
    assert (job.state, job.run_id, job.base_version, job.heartbeat_at) == ("queued", None, None, None)
    assert _actions(session, job)[2:] == ["job.requeued"] and _webhooks(session, job) == ["job.started"]
    assert storage.list(f"uploads/{job.id}/")  # it runs again: its photos stay


def test_running_to_running_transitions(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _running(session, storage)
    lifecycle.resumed(session, [job], "run1", ACTOR)
    lifecycle.rescued(session, job, "sweeper", job.heartbeat_at)
    session.commit()
    assert (job.state, job.run_id, job.attempts) == ("running", "run1", 2)
    assert _actions(session, job)[2:] == ["job.resumed", "job.rescued"]
    assert _webhooks(session, job) == ["job.started"]


def test_retried_waits_in_the_queue_keeping_its_run_and_resumes_it(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _running(session, storage)
    assert lifecycle.retried(session, [job], "MemoryError: out of memory", ACTOR) == [job]
    session.commit()
    assert (job.state, job.run_id, job.base_version, job.heartbeat_at) == ("queued", "run1", 1, None)
    assert lifecycle.claimed(session, [job], "run1", 1, ACTOR, resume=True) == [job]
    session.commit()
    assert (job.state, job.run_id, job.attempts) == ("running", "run1", 2)
    assert _actions(session, job)[2:] == ["job.error", "job.resumed"]
    assert _webhooks(session, job) == ["job.started"]  # one job.started webhook, however many attempts
    assert storage.list(f"uploads/{job.id}/")


def test_a_resume_claim_leaves_a_job_whose_run_was_dropped(db: tuple[Session, Storage], settings: Settings) -> None:
    session, storage = db
    job = _running(session, storage)
    lifecycle.retried(session, [job], "MemoryError", ACTOR)
    session.commit()
    with new_session(settings) as other:  # its run is dropped after this session read it
        lifecycle.requeued(other, [other.get(Job, job.id)], "a job of its run was cancelled", ACTOR, "run1")
        other.commit()
    assert lifecycle.claimed(session, [job], "run1", 1, ACTOR, resume=True) == []


@pytest.mark.parametrize("move", [
    lambda s, st, job: lifecycle.claimed(s, [job], "run2", 2, ACTOR),  # succeeded -> running
    lambda s, st, job: lifecycle.resumed(s, [job], "run2", ACTOR),
    lambda s, st, job: lifecycle.requeued(s, [job], "again", ACTOR, None),
    lambda s, st, job: lifecycle.failed(s, [job], "late", st, ACTOR),
    lambda s, st, job: lifecycle.cancel_requested(s, job, st, "k1"),
])
def test_an_ended_job_makes_no_transition(db: tuple[Session, Storage], move: Any) -> None:
    session, storage = db
    job = _running(session, storage)
    lifecycle.succeeded(session, [job], 2, "cd" * 32, storage, ACTOR)
    session.commit()
    before = _actions(session, job)
    with pytest.raises(lifecycle.IllegalTransition):
        move(session, storage, job)
    session.rollback()
    assert job.state == "succeeded" and _actions(session, job) == before


def test_a_queued_job_cannot_skip_running(db: tuple[Session, Storage]) -> None:
    session, storage = db
    job = _job(session, storage)
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.succeeded(session, [job], 2, "cd" * 32, storage, ACTOR)
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.resumed(session, [job], "run1", ACTOR)


def test_a_job_moved_by_someone_else_meanwhile_is_left_alone(db: tuple[Session, Storage], settings: Settings) -> None:
    session, storage = db
    job = _job(session, storage)
    with new_session(settings) as api:  # the API cancels it while a worker holds the row as read: queued
        lifecycle.cancel_requested(api, api.get(Job, job.id), storage, "k1")
        api.commit()
    assert lifecycle.claimed(session, [job], "run1", 1, ACTOR) == []
    session.commit()
    session.refresh(job)
    assert job.state == "cancelled" and _actions(session, job).count("job.started") == 0


def test_still_running_skips_the_ended(db: tuple[Session, Storage]) -> None:
    session, storage = db
    first, second = _running(session, storage), _running(session, storage)
    lifecycle.failed(session, [second], "it broke", storage, ACTOR)
    session.commit()
    assert lifecycle.still_running(session, [second.id, first.id]) == [first]
