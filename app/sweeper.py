"""The sweeper: nothing accepted is lost, even when a worker dies or a doorbell message goes missing.

The broker is only a doorbell; the job rows are the truth. Every `sweep_interval_seconds` the sweeper
looks for two kinds of job that nobody is looking after, on models whose lease is free or expired (a
live lease holder picks up its model's jobs itself):

- `running` jobs whose heartbeat is older than `stale_after_seconds` (the worker died: kill -9, OOM,
  preemption). Below `max_attempts` they get a new doorbell; the next worker resumes them from their
  saved state. At `max_attempts` they fail with a message that says so, and their uploads are deleted.
- `queued` jobs older than `queued_stale_seconds` (their doorbell was lost, or rang while the model was
  busy and the holder died before picking them up): a new doorbell.
- remember-set objects of superseded revisions that a worker dying right after its commit left behind:
  deleted, and audited (app/revisions.py).

Torch-free: it runs beside the API in embedded mode (`run_forever` in a thread) and as Celery task
`taming.sweep` (beat) or a thread of `taming worker` in distributed mode.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app import job_reports, lifecycle, storage_keys
from app.models import Job, Model
from app.storage import Storage

log = logging.getLogger(__name__)

ACTOR = "sweeper"


@dataclass(frozen=True)
class Timings:
    """The worker's clocks: a typed view of these Settings fields, with no defaults of its own."""

    heartbeat_seconds: float
    stale_after_seconds: float
    lease_seconds: float
    queued_stale_seconds: float
    sweep_interval_seconds: float
    max_attempts: int
    checkpoint_every: int
    progress_every: int
    job_time_limit_seconds: float

    @classmethod
    def from_settings(cls, settings: Any) -> Timings:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _models_with_live_lease(session: Session, now: datetime) -> set[str]:
    rows = session.execute(select(Model.id, Model.lease_expires_at).where(Model.lease_owner.is_not(None)))
    return {model_id for model_id, expires in rows if (as_utc(expires) or now) > now}


def give_up(session: Session, job: Job, message: str, actor: str, now: datetime, storage: Storage) -> bool:
    """Fail a running job for good (attempts exhausted), with a small report saying why and in which phase
    (app/job_reports.py); its uploads are deleted in this transaction. False when it is no longer running."""
    if not lifecycle.gave_up(session, [job], message, storage, actor, now):
        return False
    job.report_key = job_reports.store_failure(session, storage, job, message)
    return True


def _after_commit(session: Session, settings: Any, rescued: list[str], failed: list[str]) -> None:
    """Delete the given-up jobs' saved run state, and ring the rescued jobs' doorbells."""
    from app.queue import enqueue
    from app.storage import get_storage

    if failed:
        storage = get_storage(settings)
        for run_id in set(session.scalars(select(Job.run_id).where(Job.id.in_(failed)))):
            if run_id:
                storage.delete_prefix(storage_keys.run_prefix(run_id))
    for job_id in rescued:
        try:
            enqueue(job_id)
        except Exception:  # the broker is down: the next sweep tries again
            log.exception("could not re-enqueue job %s", job_id)
    if rescued or failed:
        log.info("sweep: re-enqueued %s, failed %s", rescued, failed)


def sweep_once(session: Session, settings: Any, now: datetime | None = None) -> dict[str, list[str]]:
    """One pass; returns the job ids it re-enqueued and failed, and the models it purged. Doorbells ring after
    the commit."""
    from app.storage import get_storage

    t = Timings.from_settings(settings)
    now = now or utcnow()
    busy = _models_with_live_lease(session, now)
    stale_cutoff = now - timedelta(seconds=t.stale_after_seconds)
    queued_cutoff = now - timedelta(seconds=t.queued_stale_seconds)
    stale = session.scalars(
        select(Job).where(
            Job.state == "running",
            or_(Job.heartbeat_at < stale_cutoff, (Job.heartbeat_at.is_(None) & (Job.started_at < stale_cutoff))),
        )
    ).all()
    waiting = session.scalars(select(Job).where(Job.state == "queued", Job.created_at < queued_cutoff)).all()
    rescued: list[str] = []
    failed: list[str] = []
    for job in stale:
        if job.model_id in busy:
            continue
        if job.attempts < t.max_attempts:
            lifecycle.rescued(session, job, ACTOR, now)
            rescued.append(job.id)
            continue
        message = (
            f"The worker running this job stopped responding {job.attempts} times (crash, restart or "
            f"lost machine); gave up after {t.max_attempts} attempts. The model was not changed."
        )
        if give_up(session, job, message, ACTOR, now, get_storage(settings)):
            failed.append(job.id)
    rescued += [job.id for job in waiting if job.model_id not in busy]
    session.commit()
    _after_commit(session, settings, rescued, failed)
    purged = _purge_superseded(session, settings, busy)
    return {"enqueued": rescued, "failed": failed, "purged": purged}


def _purge_superseded(session: Session, settings: Any, busy: set[str]) -> list[str]:
    """Delete superseded remember objects of models nobody runs now (a holder purges its own after its commit)."""
    from app import revisions
    from app.storage import get_storage

    purged = []
    for model_id in revisions.pending_purges(session):
        if model_id not in busy and revisions.purge(session, get_storage(settings), model_id, ACTOR, orphans=False):
            purged.append(model_id)
        session.commit()
    return purged


def run_forever(stop_event: threading.Event, settings: Any = None) -> None:
    """Sweep until `stop_event` is set (embedded mode: a thread beside the API or the worker)."""
    from app.db import session_scope
    from app.settings import get_settings

    settings = settings or get_settings()
    interval = Timings.from_settings(settings).sweep_interval_seconds
    while not stop_event.wait(interval):
        try:
            with session_scope(settings) as session:
                sweep_once(session, settings)
        except Exception:  # a database hiccup must not end the loop
            log.exception("sweep failed")
