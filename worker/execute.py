"""One taming run for a batch of jobs: fetch inputs, call `taming.pipeline.run_requests`, record the outcome.

The library knows nothing of jobs, storage or databases; this module translates. While the run goes on,
`RunMonitor.on_step` writes progress to every job of the run, saves the resumable state every
`checkpoint_every` iterations, and stops the run (by raising) when a job is cancelled, the lease is lost
or the time limit passes. A heartbeat thread keeps the heartbeat and the lease fresh through the long
stretches without steps (loading, the final confirmation and evaluation).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select, update

from app import revisions
from app.db import session_scope
from app.models import Job, Model, ModelVersion, RememberRevision
from app.storage import Storage, get_storage
from app.sweeper import Timings, utcnow
from taming import pipeline
from taming.checkpoint import CheckpointError, file_sha256
from taming.data import DataError, FaceSet, load_faces
from taming.tame import TamingError
from worker import finish, lease, remember_sets
from worker.finish import LeaseLost, RunCancelled, RunTimeLimit
from worker.remember_sets import Fetched
from worker.runner import Batch

log = logging.getLogger(__name__)


def pick_device(setting: str) -> str:
    """`auto`: the GPU when there is one. Called inside the task, never at import."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def tame_config(parameters: dict[str, Any]) -> Any:
    """The job's method with its parameters that TameConfig knows; the API has validated them already."""
    from rules.method import DEFAULT_METHOD
    from taming.tame import TameConfig, method_config

    known = {f.name for f in dataclasses.fields(TameConfig)} - {"method"}
    return method_config(parameters.get("method") or DEFAULT_METHOD,
                         **{k: v for k, v in parameters.items() if k in known})


def fetch_remember(storage: Storage, model: Model, revision: RememberRevision | None, folder: Path) -> Fetched:
    """The remember-set revision of the version the run starts from (everyone forgotten before is out of it)."""
    if revision is None:
        raise DataError("the version to start from records no remember-set revision")
    return remember_sets.fetch(storage, model, revision, folder)


def fetch_uploads(storage: Storage, job: Job, field: str, model: Model, folder: Path) -> FaceSet | None:
    """A job's uploaded images of one field, named as the caller named them."""
    items = [u for u in job.uploads or [] if u.get("field") == field]
    if not items:
        return None
    target = folder / job.id / field
    target.mkdir(parents=True, exist_ok=True)
    original = {}
    for i, item in enumerate(items):
        path = target / f"{i:04d}{Path(item['key']).suffix}"
        storage.download(item["key"], path)
        original[path.name] = item.get("name") or path.name
    faces = load_faces(target, model.image_size, model.channels)
    faces.names = [original.get(n, n) for n in faces.names]
    return faces


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class RunMonitor:
    """Progress, heartbeat, state saves and stop signals for one run."""

    def __init__(self, batch: Batch, settings: Any, t: Timings, owner: str, storage: Storage, resumed_from: int):
        self.batch, self.settings, self.t, self.owner, self.storage = batch, settings, t, owner, storage
        self.resumed_from = resumed_from
        self.started = time.monotonic()
        self.last_write_iteration: int | None = None
        self.last_write_time = 0.0
        self.last_state_iteration = resumed_from
        self.lease_lost = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{batch.run_id[:8]}", daemon=True)

    # -- called by the library after each iteration
    def on_step(self, info: Any) -> None:
        if self.lease_lost.is_set():
            raise LeaseLost(self.batch.model_id)
        if time.monotonic() - self.started > self.t.job_time_limit_seconds:
            raise RunTimeLimit(self.t.job_time_limit_seconds)
        iteration = int(info.iteration)
        if iteration > 0 and iteration % self.t.checkpoint_every == 0 and iteration != self.last_state_iteration:
            self.save_state(info, iteration)
        due = (
            self.last_write_iteration is None
            or iteration - self.last_write_iteration >= self.t.progress_every
            or time.monotonic() - self.last_write_time >= self.t.heartbeat_seconds
        )
        if due:
            self.write_progress(info, iteration)

    def save_state(self, info: Any, iteration: int) -> None:
        with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
            torch.save(info.state(), tmp.name)
            with open(tmp.name, "rb") as f:
                self.storage.put_file(f"runs/{self.batch.run_id}/state.pt", f)
        self.last_state_iteration = iteration

    def write_progress(self, info: Any, iteration: int) -> None:
        progress = {
            "iteration": iteration,
            "max_iterations": int(info.max_iterations),
            "max_abs_d": _num(info.max_abs_d),
            "mu_r": _num(info.mu_r),
            "sigma_r": _num(info.sigma_r),
            "share": _num(info.share),
            "eta_seconds": _num(info.eta_seconds),
            "resumed_from": self.resumed_from,
            "saved_iteration": self.last_state_iteration,
            "run_jobs": len(self.batch.job_ids),
        }
        with session_scope(self.settings) as session:
            if not lease.renew(session, self.batch.model_id, self.owner, self.t.lease_seconds, utcnow()):
                self.lease_lost.set()
                raise LeaseLost(self.batch.model_id)
            session.execute(
                update(Job)
                .where(Job.run_id == self.batch.run_id, Job.state == "running")
                .values(progress=progress, heartbeat_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            cancelled = list(
                session.scalars(select(Job.id).where(Job.run_id == self.batch.run_id, Job.cancel_requested.is_(True)))
            )
        self.last_write_iteration, self.last_write_time = iteration, time.monotonic()
        if cancelled:
            raise RunCancelled(cancelled)

    # -- the heartbeat thread
    def _beat(self) -> None:
        # It stops on its own past the time limit, so that a run hung inside the library goes stale and
        # the sweeper hands its jobs to another attempt.
        limit = self.t.job_time_limit_seconds + 2 * self.t.heartbeat_seconds
        while not self.done.wait(self.t.heartbeat_seconds) and time.monotonic() - self.started < limit:
            try:
                with session_scope(self.settings) as session:
                    if not lease.renew(session, self.batch.model_id, self.owner, self.t.lease_seconds, utcnow()):
                        self.lease_lost.set()
                        return
                    session.execute(
                        update(Job)
                        .where(Job.run_id == self.batch.run_id, Job.state == "running")
                        .values(heartbeat_at=utcnow())
                        .execution_options(synchronize_session=False)
                    )
            except Exception:  # a database hiccup: try again next beat
                log.exception("heartbeat failed")

    def __enter__(self) -> RunMonitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)


def _job_meta(job: Job, batch: Batch, resumed_from: int) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "subject_ref": job.subject_ref,
        "submitted_by": job.submitted_by,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "attempts": job.attempts,
        "run_id": batch.run_id,
        "run_jobs": batch.job_ids,
        "resumed_from_iteration": resumed_from,
    }


def execute(batch: Batch, settings: Any, t: Timings, owner: str) -> None:
    """Run one batch to its outcome (succeeded, failed, cancelled, or left for a retry)."""
    storage = get_storage(settings)
    with tempfile.TemporaryDirectory(prefix=f"taming-run-{batch.run_id[:8]}-") as tmp_name:
        tmp = Path(tmp_name)
        with session_scope(settings) as session:
            model = session.get(Model, batch.model_id)
            base = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.model_id == batch.model_id, ModelVersion.version == batch.base_version
                )
            )
            jobs = list(session.scalars(select(Job).where(Job.id.in_(batch.job_ids)).order_by(Job.created_at)))
            revision = revisions.get_revision(session, batch.model_id, base.remember_revision if base else None)
        if model is None or base is None:
            finish.fail(batch, settings, t, f"Model version {batch.base_version} to start from is missing.")
            return
        try:
            ckpt = tmp / "base.safetensors"
            storage.download(base.checkpoint_key, ckpt)
            if file_sha256(ckpt) != base.sha256:
                raise CheckpointError(f"the stored checkpoint of version {base.version} does not match its SHA-256")
            fetched = fetch_remember(storage, model, revision, tmp / "remember")
            remember = fetched.sets[revisions.REMEMBER].faces
            config = tame_config(jobs[0].parameters or {})
        except (DataError, CheckpointError, KeyError, TypeError) as exc:
            finish.fail(batch, settings, t, f"Could not prepare the run: {exc}")
            return

        resume_state = None
        if batch.resumed and storage.exists(f"runs/{batch.run_id}/state.pt"):
            storage.download(f"runs/{batch.run_id}/state.pt", tmp / "state.pt")
            resume_state = torch.load(tmp / "state.pt", weights_only=True, map_location="cpu")
        resumed_from = int(resume_state.get("iteration", 0)) if isinstance(resume_state, dict) else 0

        requests: list[pipeline.Request] = []
        rebalance = None
        for job in jobs:
            try:
                if job.kind == "rebalance_attribute":
                    positive = fetch_uploads(storage, job, "positive", model, tmp) or fetch_uploads(
                        storage, job, "forget", model, tmp
                    )
                    if positive is None:
                        raise DataError("no images with the attribute were uploaded")
                    negative = fetch_uploads(storage, job, "negative", model, tmp) or remember
                    params = job.parameters or {}
                    rebalance = pipeline.Rebalance(
                        positive, negative, float(params.get("target_share", 0.5)),
                        str(params.get("direction", "decrease")),
                    )
                    forget: FaceSet | None = positive
                else:
                    forget = fetch_uploads(storage, job, "forget", model, tmp)
                if forget is None:
                    raise DataError("no forget images were uploaded")
                holdout = fetch_uploads(storage, job, "holdout", model, tmp)
            except (DataError, KeyError) as exc:
                # One request with bad images must not sink the others of a coalesced run.
                finish.fail_jobs(batch, settings, t, [job.id], f"Its images could not be used: {exc}")
                continue
            requests.append(pipeline.Request(key=job.id, forget=forget, holdout=holdout,
                                             meta=_job_meta(job, batch, resumed_from)))
        if not requests:
            finish.cleanup_run(batch, settings)
            return
        batch.job_ids = [r.key for r in requests]

        out = tmp / "tamed.safetensors"
        # D_R below is the revision without this run's people: the same rows the next revision leaves out
        new_revision = (None if rebalance else
                        remember_sets.plan_next(fetched, requests, tmp / "next", model.id, batch.run_id))
        model_meta = {
            "id": model.id, "parent_version": base.version, "parent_sha256": base.sha256,
            "new_version": batch.base_version + 1, **_remember_meta(fetched, new_revision, rebalance is None),
        }
        monitor = RunMonitor(batch, settings, t, owner, storage, resumed_from)
        try:
            with monitor:
                result = pipeline.run_requests(
                    ckpt, remember, requests, config, out,
                    rebalance=rebalance, on_step=monitor.on_step, resume_state=resume_state,
                    device=pick_device(settings.device), model_meta=model_meta,
                    cache_dir=Path(settings.var_dir) / "cache",  # the feature space, once per model
                )
        except LeaseLost:
            raise
        except RunCancelled as stop:
            finish.cancel(batch, settings, t, stop.job_ids)
            return
        except RunTimeLimit as stop:
            finish.fail(batch, settings, t, str(stop))
            return
        except (DataError, CheckpointError) as exc:
            finish.fail(batch, settings, t, f"The images or the model could not be used: {exc}")
            return
        except TamingError as exc:
            finish.fail(batch, settings, t, f"The taming run could not continue: {exc}")
            return
        except Exception as exc:
            finish.retry_or_fail(batch, settings, t, exc)
            return
        if not result.criterion_met:
            finish.fail(batch, settings, t, finish.criterion_message(result, config))
            return
        finish.succeed(batch, settings, t, owner, result, out, new_revision)


def _remember_meta(fetched: Fetched, new: revisions.NewRevision | None, erasure: bool) -> dict[str, Any]:
    """The report's record of the remember-set revisions: the one read, the one the new version records."""
    meta: dict[str, Any] = {"remember_revision_parent": fetched.revision,
                            "remember_revision": new.number if new is not None else fetched.revision}
    if erasure:
        meta["remember_images"] = new.images if new is not None else len(fetched.sets[revisions.REMEMBER].faces)
    return meta


