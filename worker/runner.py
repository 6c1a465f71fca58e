"""What a doorbell does: take the model's lease, run its jobs until none are left, give the lease back.

    handle_doorbell(job_id)
      ├─ job finished already?      → nothing (a redelivered message must not make a second version)
      ├─ lease held by someone else → nothing (the holder, or the sweeper, will pick the job up)
      └─ loop with the lease:
           claim_batch: orphaned `running` jobs first (resume them: same run_id, same job set),
                        then a run an internal error sent back to the queue (resume it the same way),
                        else every queued forget job with the same parameters (one run, D_F = union)
           every state change goes through app/lifecycle.py
           execute (worker/execute.py) and record the outcome (worker/finish.py)
         when nothing is left: release the lease, then look once more — a job queued while we were
         releasing rang a doorbell that found the lease held, so we must not leave it behind.

Everything here is plain functions over a settings object, so tests drive it without Celery.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import func, select

from app import lifecycle, storage_keys
from app.db import session_scope
from app.models import Job, ModelVersion
from app.sweeper import Timings, give_up, utcnow
from rules.jobs import TERMINAL_STATES, JobKind
from rules.method import DEFAULT_METHOD, coalesce_images
from worker import lease
from worker.batch import Batch

log = logging.getLogger(__name__)

TERMINAL = set(TERMINAL_STATES)
FORGET = JobKind.FORGET
# Images in one coalesced run: at most one forget batch, so that every image is in every step as in a
# single run. Measured on the shipped model: 8 people x 7 photos in one run with the paper's batch of 8
# did not reach the threshold in 800 iterations (each image was pushed only 1 step in 7), so larger
# requests run one after another on the same lease instead.
MAX_COALESCE_IMAGES = 8


def actor() -> str:
    return f"worker:{lease.owner_id()}"


def handle_doorbell(job_id: str, settings: Any) -> str:
    """Entry point of task `taming.run_job`; returns what happened, for the log."""
    t = Timings.from_settings(settings)
    owner = lease.owner_id()
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        if job is None:
            return "unknown job"
        if job.state in TERMINAL:
            return f"already {job.state}"
        model_id = job.model_id
        if not lease.acquire(session, model_id, owner, t.lease_seconds, utcnow()):
            return "model busy"
    ran = 0
    while True:
        ran += drain(model_id, settings, t, owner)
        with session_scope(settings) as session:
            lease.release(session, model_id, owner)
        # The re-check: a doorbell that rang while we held the lease was dropped on the floor.
        with session_scope(settings) as session:
            if not _has_work(session, model_id):
                return f"ran {ran} run(s)"
            if not lease.acquire(session, model_id, owner, t.lease_seconds, utcnow()):
                return f"ran {ran} run(s); model taken over"


def _has_work(session: Any, model_id: str) -> bool:
    pending = session.scalar(
        select(func.count()).select_from(Job).where(Job.model_id == model_id, Job.state.in_(["queued", "running"]))
    )
    return bool(pending)


def drain(model_id: str, settings: Any, t: Timings, owner: str) -> int:
    """Run batches while we hold the lease and work is left; returns the number of runs."""
    from worker.execute import execute  # imports torch: only here, in the worker process
    from worker.finish import LeaseLost

    runs = 0
    while True:
        with session_scope(settings) as session:
            if not lease.renew(session, model_id, owner, t.lease_seconds, utcnow()):
                return runs
            batch = claim_batch(session, model_id, t, settings)
        if batch is None:
            return runs
        runs += 1
        try:
            execute(batch, settings, t, owner)
        except LeaseLost:
            log.warning("lease on model %s lost during run %s; its new holder continues", model_id, batch.run_id)
            return runs


def newest_version(session: Any, model_id: str) -> int:
    return int(session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model_id)) or 0)


def _forget_images(job: Job) -> int:
    return sum(1 for u in job.uploads or [] if u.get("field") == "forget" and not u.get("excluded_reason"))


def claim_batch(session: Any, model_id: str, t: Timings, settings: Any) -> Batch | None:
    """The next run for a model whose lease we hold (the caller commits)."""
    now = utcnow()
    running = session.scalars(
        select(Job).where(Job.model_id == model_id, Job.state == "running").order_by(Job.created_at)
    ).all()
    if running:
        batch = _resume(session, model_id, running, t, settings, now)
        return batch if batch is not None else claim_batch(session, model_id, t, settings)
    queued = session.scalars(
        select(Job).where(Job.model_id == model_id, Job.state == "queued").order_by(Job.created_at)
    ).all()
    for job in [j for j in queued if j.cancel_requested]:
        _cancel_queued(session, job, now, settings)
    queued = [j for j in queued if not j.cancel_requested]
    if not queued:
        return None
    retry = [j for j in queued if j.run_id]  # a run an internal error interrupted (finish.retry_or_fail) goes on
    if retry:
        batch = _claim_retry(session, model_id, retry, now, settings)
    else:
        batch = _claim(session, model_id, _coalesced(queued), now)
    return batch if batch is not None else claim_batch(session, model_id, t, settings)


def _resume(session: Any, model_id: str, running: list[Job], t: Timings, settings: Any, now: Any) -> Batch | None:
    """Running jobs belong to a holder that died (only the lease holder runs a model's jobs): resume them as
    they were (same run id, same job set) from the state that run saved, or give up on them (then None)."""
    run_id = running[0].run_id or uuid.uuid4().hex
    jobs = [j for j in running if (j.run_id or run_id) == run_id]
    if max(j.attempts for j in jobs) >= t.max_attempts:
        message = (
            f"This job was started {jobs[0].attempts} times and its worker stopped each time (crash, "
            f"restart or lost machine); gave up after {t.max_attempts} attempts. The model was not changed."
        )
        from app.storage import get_storage

        for job in jobs:
            give_up(session, job, message, actor(), now, get_storage(settings))
        _discard_run(settings, run_id)
        return None
    lifecycle.resumed(session, jobs, run_id, actor(), now)
    base = jobs[0].base_version if jobs[0].base_version is not None else newest_version(session, model_id)
    return Batch(run_id, model_id, [j.id for j in jobs], base, max(j.attempts for j in jobs), True)


def _coalesced(queued: list[Job]) -> list[Job]:
    """The first queued job and the waiting forget requests with the same parameters that may join its run:
    as many as the method converges in one run (rules/method.py); the rest run one after another."""
    first = queued[0]
    chosen = [first]
    if first.kind == FORGET:
        images = _forget_images(first)
        cap = coalesce_images((first.parameters or {}).get("method") or DEFAULT_METHOD)
        for job in queued[1:]:
            same = job.kind == FORGET and (job.parameters or {}) == (first.parameters or {})
            if same and images + _forget_images(job) <= cap:
                chosen.append(job)
                images += _forget_images(job)
    return chosen


def _claim(session: Any, model_id: str, chosen: list[Job], now: Any) -> Batch | None:
    """Mark the chosen jobs running in one new run; None when the API cancelled all of them meanwhile."""
    base = newest_version(session, model_id)
    run_id = uuid.uuid4().hex
    # Conditional: the API may cancel a queued job at this very moment.
    taken = lifecycle.claimed(session, chosen, run_id, base, actor(), now)
    if not taken:
        return None
    ids = [j.id for j in taken]
    return Batch(run_id, model_id, ids, base, max(j.attempts for j in taken), False)


def _claim_retry(session: Any, model_id: str, retry: list[Job], now: Any, settings: Any) -> Batch | None:
    """Resume the oldest retried run from its saved state, when every job that was in it still waits; else its
    jobs start afresh (None): that state was tuned to the images of the job that left, too."""
    run_id, base = retry[0].run_id, retry[0].base_version
    assert run_id is not None and base is not None
    waiting = [j for j in retry if j.run_id == run_id]
    left = session.scalar(select(func.count()).select_from(Job).where(Job.run_id == run_id, Job.cancel_requested))
    taken = [] if left else lifecycle.claimed(session, waiting, run_id, base, actor(), now, resume=True)
    if taken and len(taken) == len(waiting):
        return Batch(run_id, model_id, [j.id for j in taken], base, max(j.attempts for j in taken), True)
    lifecycle.requeued(session, [*taken, *(j for j in waiting if j not in taken)],
                       "a job of its run was cancelled while it waited to resume", actor(), run_id)
    _discard_run(settings, run_id)
    return None


def _cancel_queued(session: Any, job: Job, now: Any, settings: Any) -> None:
    from app.storage import get_storage

    lifecycle.cancelled(session, [job], get_storage(settings), actor(), now=now)


def _discard_run(settings: Any, run_id: str) -> None:
    """Delete the saved state of a run whose jobs all ended without running to the end."""
    from app.storage import get_storage

    get_storage(settings).delete_prefix(storage_keys.run_prefix(run_id))
