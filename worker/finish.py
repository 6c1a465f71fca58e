"""How a run ends, written to the database, storage and the audit log.

Each ending goes through app/lifecycle.py: in one transaction the jobs' final state, its audit record, the
`job.completed` webhook (the delivery loop of app/webhook_delivery.py sends it, outside the run) and the
deletion of the jobs' uploads (a person's images do not outlive their request). On success the artefacts are
uploaded first (the new remember-set revision's objects among them), then one transaction adds the version
with its revision, moves the model's current version and marks every job succeeded: a crash between the two
re-runs from the saved state and overwrites the same keys, so the revision and the version exist together or
not at all, and the unique (model_id, parent) constraint refuses a second version on the same parent whatever
happens. Only after that commit are the superseded remember-set objects deleted (app/revisions.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import audit, job_reports, lifecycle, revisions, storage_keys
from app.db import session_scope
from app.models import Job, Model, ModelVersion
from app.storage import get_storage
from app.sweeper import Timings, utcnow
from rules.jobs import JobKind
from worker import lease, version_stats

if TYPE_CHECKING:
    from taming.pipeline import PipelineResult

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """Another worker took the model over (we were presumed dead): stop, write nothing."""


@dataclass(frozen=True)
class RunCancelled:
    """Why a run was stopped: its owners cancelled these jobs."""

    job_ids: list[str]


@dataclass(frozen=True)
class RunTimeLimit:
    """Why a run was stopped: it ran past the job time limit."""

    seconds: float

    def __str__(self) -> str:
        return (f"The run took longer than the time limit of {self.seconds:.0f} s and was stopped; "
                "the model was not changed.")


Stop = LeaseLost | RunCancelled | RunTimeLimit  # what RunMonitor.stop records when it sets the run's StopToken


def _actor() -> str:
    return f"worker:{lease.owner_id()}"


def criterion_message(result: Any, config: Any, kind: str = JobKind.FORGET, target_share: float | None = None) -> str:
    """Why a run that ended without meeting its stop rule failed, in the words of its kind of job."""
    cap = getattr(config, "max_iterations", result.iterations)
    if kind == JobKind.REBALANCE:
        target = f" of {target_share:.2f}" if target_share is not None else ""
        return (
            f"The stop criterion was not met within {cap} iterations: the attribute's share among the model's "
            f"samples did not reach the target{target}. The model was not changed. Try a larger max_iterations, "
            f"or a target nearer the model's present share."
        )
    return (
        f"The stop criterion was not met within {cap} iterations: the images could not be pushed to the "
        f"likelihood threshold without the run ending. The model was not changed. Try a larger "
        f"max_iterations, or check that the images show the person's face."
    )


def cleanup_run(batch: Any, settings: Any) -> None:
    get_storage(settings).delete_prefix(storage_keys.run_prefix(batch.run_id))


def fail_jobs(batch: Any, settings: Any, t: Timings, job_ids: list[str], message: str, result: Any = None) -> None:
    """Fail these jobs, each keeping a report: the run's own when it measured something (`result`), else
    a small one with the error and the phase it failed in."""
    storage = get_storage(settings)
    with session_scope(settings) as session:
        ended = lifecycle.failed(session, lifecycle.still_running(session, job_ids), message, storage, _actor(),
                                 run_id=batch.run_id, iterations=getattr(result, "iterations", None))
        for job in ended:
            report = _report_json(result, job.id) if result is not None else None
            if report is not None:
                job.report_key = _store_report(storage, job.id, {**report, "model": {
                    **report.get("model", {}), "new_version": None}}, result.html.get(job.id, ""),
                    job_reports.outcome("failed", message, job.progress.get("last_phase"), None))
            else:
                job.report_key = job_reports.store_failure(session, storage, job, message)


def fail(batch: Any, settings: Any, t: Timings, message: str, result: Any = None) -> None:
    fail_jobs(batch, settings, t, batch.job_ids, message, result)
    cleanup_run(batch, settings)


def _report_json(result: PipelineResult, job_id: str) -> dict[str, Any] | None:
    """A job's report from the run, as it is stored (None: the run wrote none for it)."""
    report = result.reports.get(job_id)
    return report.as_json() if report is not None else None


def _store_report(storage: Any, job_id: str, report: dict[str, Any], page: str, outcome: dict[str, Any]) -> str:
    """The library's report with how the job ended (`outcome`) added."""
    return job_reports.store(storage, job_id, {**report, "outcome": outcome}, page)


def _requeue_jobs(session: Any, batch: Any, job_ids: list[str], reason: str) -> None:
    """Put these jobs of the run back in the queue, to run again without the ones that ended."""
    lifecycle.requeued(session, lifecycle.still_running(session, job_ids), reason, _actor(), batch.run_id)


def cancel(batch: Any, settings: Any, t: Timings, cancelled_ids: list[str]) -> None:
    """End the cancelled jobs; the others of the run go back to the queue and re-run without them."""
    others = [j for j in batch.job_ids if j not in cancelled_ids]
    with session_scope(settings) as session:
        lifecycle.cancelled(session, lifecycle.still_running(session, cancelled_ids), get_storage(settings), _actor())
        _requeue_jobs(session, batch, others, "another job of its run was cancelled")
    cleanup_run(batch, settings)


def fail_alone(batch: Any, settings: Any, t: Timings, job_id: str, message: str) -> None:
    """One request of the run cannot be served: it fails with `message`; the others re-run without it."""
    fail_jobs(batch, settings, t, [job_id], message)
    with session_scope(settings) as session:
        _requeue_jobs(session, batch, [j for j in batch.job_ids if j != job_id], "another job of its run failed alone")
    cleanup_run(batch, settings)


def retry_or_fail(batch: Any, settings: Any, t: Timings, exc: Exception) -> None:
    """An unexpected error (out of memory, a storage outage): leave the jobs for another attempt, or fail.

    The jobs go back to the queue keeping their run (app/lifecycle.py `retried`), so the next claim (ours, at
    once, or another holder's) resumes that run from its saved state and counts one more attempt.
    """
    log.error("run %s failed unexpectedly", batch.run_id, exc_info=exc)
    if batch.attempts >= t.max_attempts:
        # the error itself is in the worker's log and the audit log (job.error), not in the owner's message
        fail(batch, settings, t, f"The run failed {batch.attempts} times with an internal error (run "
                                 f"{batch.run_id}, logged by the worker); the model was not changed.")
        return
    with session_scope(settings) as session:
        error = f"{type(exc).__name__}: {exc}"
        lifecycle.retried(session, lifecycle.still_running(session, batch.job_ids), error, _actor())


def succeed(batch: Any, settings: Any, t: Timings, owner: str, result: Any, checkpoint: Path,
            revision: revisions.NewRevision | None = None) -> None:
    """Upload the artefacts (checkpoint, reports, the new remember-set revision), then one transaction records
    the version with its revision; the superseded remember objects are deleted only after that commit."""
    storage = get_storage(settings)
    key = _upload_artefacts(storage, batch, result, checkpoint)
    if revision is not None:
        revisions.upload(storage, revision)
    try:
        with session_scope(settings) as session:
            if not lease.renew(session, batch.model_id, owner, t.lease_seconds, utcnow()):
                raise LeaseLost(batch.model_id)
            _record_success(session, storage, batch, result, key, revision)
    except IntegrityError:
        # A version on this parent exists already: never a second one. Send the jobs round again on top
        # of the newest version (their erasure must not be lost on a branch).
        log.error("version %s of model %s exists already; re-queueing run %s", batch.base_version + 1,
                  batch.model_id, batch.run_id)
        _requeue(settings, batch)
        return
    if revision is not None:
        revisions.ensure_uploaded(storage, revision)
        purge_remember(settings, batch.model_id, orphans=True)
    cleanup_run(batch, settings)


def _upload_artefacts(storage: Any, batch: Any, result: Any, checkpoint: Path) -> str:
    """The tamed checkpoint and every job's reports; returns the checkpoint's key."""
    if result.sha256 != _file_sha256(checkpoint):
        raise RuntimeError("the tamed checkpoint does not match the SHA-256 the pipeline reported")
    key = storage_keys.checkpoint(batch.model_id, batch.base_version + 1)
    with open(checkpoint, "rb") as f:
        storage.put_file(key, f)
    for job_id in batch.job_ids:
        _store_report(storage, job_id, _report_json(result, job_id) or {}, result.html.get(job_id, ""),
                      job_reports.outcome("succeeded", None, None, batch.base_version + 1))
    _store_version_stats(storage, batch, batch.base_version + 1, result.sha256, result)
    return key


def _record_success(session: Any, storage: Any, batch: Any, result: Any, key: str,
                    revision: revisions.NewRevision | None) -> list[Job]:
    """The new version (with its remember-set revision), the current version, the jobs' end: one transaction."""
    new_version, sha = batch.base_version + 1, result.sha256
    model = session.get(Model, batch.model_id)
    base = session.scalars(select(ModelVersion).where(ModelVersion.model_id == batch.model_id,
                                                      ModelVersion.version == batch.base_version)).first()
    assert model is not None and base is not None
    promoted = not model.require_promotion
    session.add(ModelVersion(model_id=model.id, version=new_version, parent=batch.base_version,
                             job_id=batch.job_ids[0], checkpoint_key=key, sha256=sha, promoted=promoted,
                             remember_revision=revision.number if revision is not None else base.remember_revision))
    session.flush()  # the unique (model_id, parent) check happens here
    if revision is not None:
        revisions.commit(session, model.id, batch.run_id, batch.job_ids, revision, _actor())
    details = {"version": new_version, "parent": batch.base_version, "sha256": sha, "jobs": batch.job_ids,
               "run_id": batch.run_id, "iterations": result.iterations,
               "remember_revision": revision.number if revision is not None else base.remember_revision}
    audit.record(session, _actor(), "version.created", model.id, details)
    if promoted:
        model.current_version = new_version
        audit.record(session, _actor(), "model.current_version", model.id, {"version": new_version})
    return lifecycle.succeeded(session, lifecycle.still_running(session, batch.job_ids), new_version, sha, storage,
                               _actor(), iterations=result.iterations)


def purge_remember(settings: Any, model_id: str, *, orphans: bool) -> None:
    """Delete the model's remember objects that the live revision does not hold, and audit what went."""
    with session_scope(settings) as session:
        revisions.purge(session, get_storage(settings), model_id, _actor(), orphans=orphans)


def _store_version_stats(storage: Any, batch: Any, version: int, sha: str, result: Any) -> None:
    """The new version's μ_R, σ_R as its report measured them, for `POST /v1/verify` (forget runs only: a
    rebalance run's remember set is one side of the attribute, not the model's reference set)."""
    first = next(iter(result.reports.values()), None)
    report = first.as_json() if first is not None else {}
    stats = version_stats.from_report(report)
    if stats is not None and (report.get("job") or {}).get("kind") == "forget_identity":
        version_stats.write(storage, batch.model_id, version, sha, stats, "run")


def _requeue(settings: Any, batch: Any) -> None:
    with session_scope(settings) as session:
        _requeue_jobs(session, batch, batch.job_ids, "a version on its parent exists already")
    cleanup_run(batch, settings)


def _file_sha256(path: Path) -> str:
    from taming.checkpoint import file_sha256

    return file_sha256(path)

