"""A job's life: every change of a job's state happens here, and nowhere else.

```
                       claimed                    succeeded
  submitted ─> queued ───────────> running ─────────────────> succeeded
                │  ^                │  │     failed, gave_up
                │  │ requeued,      │  ├─────────────────────> failed
                │  │ retried        │  │     cancelled
                │  └────────────────┘  └─────────────────────> cancelled
                │                   ↺ resumed, rescued (a dead holder's run goes on: running -> running)
                └── cancelled (before it started) ───────────> cancelled
```

`retried` keeps the job's run (it resumes from the run's saved state); `requeued` drops it (a new run), also
for a queued job whose retried run lost one of its jobs (queued -> queued). An ending is final.

One function per transition. Each does, in the session the caller passes (the caller commits):
the state change with the fields that go with it (run id, attempts, finished_at, error, version, progress),
the transition's one audit record, the webhook (`job.started` when claimed, `job.completed` on every
ending) and, on every ending, the deletion of the job's uploads (app/upload_store.py, audited).

The uploads are deleted last, after every database write of the ending, and before the caller's commit: a
person's photos never outlive a committed ending, and the audit row saying they went commits with it. If
the commit then fails, the job stays as it was and its next attempt ends it again, without its photos (for
a success: as a failure that says its images could not be used, and the erasure is asked for again). The
other order would keep a person's photos for good, unaudited, whenever a worker died between the two.

The caller hands the jobs as it read them. A job whose state, as read, cannot make the transition is the
caller's mistake: `IllegalTransition`. The move itself is a conditional UPDATE on the state as read, so a
job that someone else moved meanwhile (the API cancelling a queued job while a worker claims it, the
sweeper giving up on a job) is left alone and not returned. Torch-free, FastAPI-free: the API, the
sweeper and the worker all call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app import audit, storage_keys, upload_store, webhooks
from app.models import Job
from app.storage import Storage
from rules.jobs import TERMINAL_STATES, JobState, finished

QUEUED, RUNNING = JobState.QUEUED, JobState.RUNNING
# The state machine: where each state may go. Terminal states go nowhere.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    QUEUED: frozenset({QUEUED, RUNNING, JobState.CANCELLED}),  # queued -> queued: a retry's run is dropped
    RUNNING: frozenset({RUNNING, QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    **{state: frozenset() for state in TERMINAL_STATES},
}


class IllegalTransition(ValueError):
    """A transition the state machine does not have (e.g. succeeded -> running)."""


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def check(job: Job, target: JobState) -> None:
    """Raise unless a job in its state (as read) may move to `target`."""
    if target not in ALLOWED.get(JobState(job.state), frozenset()):
        raise IllegalTransition(f"job {job.id}: {job.state} -> {target} is no transition of a job's life")


def _move(session: Session, jobs: Sequence[Job], target: JobState, *where: Any, **values: Any) -> list[Job]:
    """Move each job from the state it was read in (and `where`) to `target`; the jobs that moved, refreshed."""
    for job in jobs:
        check(job, target)
    moved = []
    for job in jobs:
        done = session.execute(update(Job).where(Job.id == job.id, Job.state == job.state, *where)
                               .values(state=target, **values).execution_options(synchronize_session=False))
        if done.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(job)
            moved.append(job)
    return moved


def still_running(session: Session, job_ids: Sequence[str]) -> list[Job]:
    """The jobs of these ids that are running now (an ending elsewhere, e.g. the sweeper's, skips the others)."""
    if not job_ids:
        return []
    found = session.scalars(select(Job).where(Job.id.in_(list(job_ids)), Job.state == RUNNING)
                            .execution_options(populate_existing=True)).all()
    order = {job_id: i for i, job_id in enumerate(job_ids)}
    return sorted(found, key=lambda job: order[job.id])


# -- the start of a job's life ----------------------------------------------------------------------------------


def submitted(session: Session, job: Job, actor: str) -> Job:
    """A new job row, queued: added, flushed (the idempotency constraint is checked here) and audited."""
    job.state = QUEUED
    session.add(job)
    session.flush()
    audit.record(session, actor, "job.submit", f"job:{job.id}",
                 {"kind": job.kind, "model_id": job.model_id, "subject_ref": job.subject_ref,
                  "files": [u["sha256"] for u in job.uploads or []]})
    return job


def claimed(session: Session, jobs: Sequence[Job], run_id: str, base_version: int, actor: str,
            now: datetime | None = None, *, resume: bool = False) -> list[Job]:
    """Queued jobs start one run together; those cancelled meanwhile are left out. `job.started` each, or with
    `resume` (jobs `retried` in run `run_id`, still in it) `job.resumed`: the run goes on from its saved state."""
    now = _now(now)
    where = [Job.run_id == run_id] if resume else []
    taken = _move(session, jobs, RUNNING, *where, run_id=run_id, base_version=base_version,
                  attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now), heartbeat_at=now,
                  progress={}, error=None)
    ids = [job.id for job in taken]
    for job in taken:
        if resume:
            audit.record(session, actor, "job.resumed", job.id, {"run_id": run_id, "attempt": job.attempts})
        else:
            audit.record(session, actor, "job.started", job.id,
                         {"run_id": run_id, "base_version": base_version, "attempt": job.attempts, "run_jobs": ids})
        webhooks.record(session, job, webhooks.STARTED)  # once per job: a second record is a no-op
    return taken


# -- running -> running ------------------------------------------------------------------------------------------


def _running(jobs: Sequence[Job]) -> None:
    """Raise unless every job is running (these transitions keep it running; a queued job is claimed instead)."""
    for job in jobs:
        if job.state != RUNNING:
            raise IllegalTransition(f"job {job.id}: {job.state} -> running is no transition that keeps it running")


def resumed(session: Session, jobs: Sequence[Job], run_id: str, actor: str, now: datetime | None = None) -> None:
    """A dead holder's running jobs go on in the same run (same run id, from its saved state): one more attempt."""
    _running(jobs)
    for job in jobs:
        job.run_id = run_id
        job.attempts += 1
        job.heartbeat_at = _now(now)
        audit.record(session, actor, "job.resumed", job.id, {"run_id": run_id, "attempt": job.attempts})


def rescued(session: Session, job: Job, actor: str, now: datetime) -> None:
    """The sweeper rings again for a running job whose holder went silent; the next claim resumes it.

    The heartbeat is touched so that one rescue is sent per stale period, not one per sweep."""
    _running([job])
    job.heartbeat_at = now
    audit.record(session, actor, "job.rescued", job.id, {"attempts": job.attempts, "run_id": job.run_id})


# -- back to the queue -------------------------------------------------------------------------------------------


def retried(session: Session, jobs: Sequence[Job], error: str, actor: str) -> list[Job]:
    """An internal error (out of memory, a storage outage) below max_attempts: the running jobs go back to the
    queue *keeping their run* (run id, base version), so the next claim resumes that run from its saved state
    as one more attempt (`claimed(..., resume=True)`). Audited as `job.error`."""
    _running(jobs)
    moved = _move(session, jobs, QUEUED, progress={}, heartbeat_at=None)
    for job in moved:
        audit.record(session, actor, "job.error", job.id, {"error": error, "run_id": job.run_id})
    return moved


def requeued(session: Session, jobs: Sequence[Job], reason: str, actor: str, run_id: str | None) -> list[Job]:
    """Jobs go back to the queue to run again in a new run (without the ones that ended): running ones, or queued
    ones that were waiting to resume a run (`retried`) that lost one of its jobs."""
    moved = _move(session, jobs, QUEUED, run_id=None, base_version=None, progress={}, heartbeat_at=None)
    for job in moved:
        audit.record(session, actor, "job.requeued", job.id, {"reason": reason, "run_id": run_id})
    return moved


# -- endings -----------------------------------------------------------------------------------------------------


def _end(session: Session, jobs: Sequence[Job], target: JobState, storage: Storage, actor: str,
         details: Any, *, now: datetime | None, iterations: int | None, close: bool, **values: Any) -> list[Job]:
    """The shared part of every ending; `details(job)` is the audit record's content, read before the move."""
    now = _now(now)
    ran = {job.id for job in jobs if job.state == RUNNING}
    contents = {job.id: details(job) for job in jobs}
    ended = _move(session, jobs, target, finished_at=now, **values)
    for job in ended:
        if close and job.id in ran:  # a live holder's run ended: its phase closes now (rules/jobs.py)
            job.progress = finished(job.progress, now, iterations)
        audit.record(session, actor, f"job.{target}", job.id, contents[job.id])
        webhooks.record(session, job, webhooks.COMPLETED)
    for job in ended:
        upload_store.delete(storage, job.id, ended=job, session=session, actor=actor)
    return ended


def succeeded(session: Session, jobs: Sequence[Job], version: int, sha256: str, storage: Storage, actor: str, *,
              iterations: int | None = None, now: datetime | None = None) -> list[Job]:
    """The run made model version `version` (recorded by the caller in this transaction): the jobs end with it."""
    ended = _end(session, jobs, JobState.SUCCEEDED, storage, actor, lambda _: {"version": version, "sha256": sha256},
                 now=now, iterations=iterations, close=True, version=version, error=None)
    for job in ended:
        job.report_key = storage_keys.report(job.id)
    return ended


def failed(session: Session, jobs: Sequence[Job], message: str, storage: Storage, actor: str, *,
           run_id: str | None = None, iterations: int | None = None, now: datetime | None = None) -> list[Job]:
    """The run (or this job's part of it) failed with `message`, for the owner to read; the model is unchanged."""
    return _end(session, jobs, JobState.FAILED, storage, actor, lambda _: {"error": message, "run_id": run_id},
                now=now, iterations=iterations, close=True, error=message)


def gave_up(session: Session, jobs: Sequence[Job], message: str, storage: Storage, actor: str,
            now: datetime | None = None) -> list[Job]:
    """Running jobs whose holder died max_attempts times fail for good. Their progress stays the dead run's
    last (its phase's clock ran on while nobody was running it)."""
    return _end(session, jobs, JobState.FAILED, storage, actor,
                lambda job: {"error": message, "attempts": job.attempts},
                now=now, iterations=None, close=False, error=message)


def cancelled(session: Session, jobs: Sequence[Job], storage: Storage, actor: str, *,
              iterations: int | None = None, now: datetime | None = None) -> list[Job]:
    """Queued jobs cancelled before they started, or running ones that stopped at their run's next iteration."""
    return _end(session, jobs, JobState.CANCELLED, storage, actor,
                lambda job: {"when": "before it started"} if job.state == QUEUED else {"run_id": job.run_id},
                now=now, iterations=iterations, close=True)


def cancel_requested(session: Session, job: Job, storage: Storage, actor: str) -> Job:
    """Someone asked a job to stop: a queued one is cancelled at once, a running one is flagged and its run
    stops at the next iteration (worker/monitor.py). Raises for a job that ended already."""
    if job.state in TERMINAL_STATES:
        raise IllegalTransition(f"job {job.id} already ended ({job.state})")
    session.execute(update(Job).where(Job.id == job.id, Job.state.in_((QUEUED, RUNNING)))
                    .values(cancel_requested=True).execution_options(synchronize_session=False))
    audit.record(session, actor, "job.cancel", f"job:{job.id}", {})
    if job.state == QUEUED:  # conditional: a worker may claim it at this very moment, and then stops it
        cancelled(session, [job], storage, actor)
    session.refresh(job)
    return job
