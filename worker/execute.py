"""One taming run for a batch of jobs: fetch inputs, call `taming.pipeline.run_requests`, record the outcome.

The library knows nothing of jobs, storage or databases; this module translates. While the run goes on,
`worker.monitor.RunMonitor` writes progress and phase to every job of the run, saves the resumable state
and stops the run when a job is cancelled, the lease is lost or the time limit passes; worker/finish.py
records how it ended.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from sqlalchemy import select

from app import job_reports, revisions, storage_keys
from app.db import session_scope
from app.models import TERMINAL_STATES, Classifier, Job, Model, ModelVersion, RememberRevision
from app.schemas import JobParameters
from app.storage import Storage, get_storage
from app.sweeper import Timings
from taming import pipeline
from taming.checkpoint import CheckpointError, file_sha256
from taming.data import DataError, FaceSet, load_faces
from taming.precision import Precision
from taming.requests import RequestProblem, request_problem
from taming.tame import TamingError
from worker import finish, remember_sets, run_folders
from worker.batch import Batch
from worker.finish import LeaseLost, RunCancelled, Stop
from worker.monitor import RunMonitor
from worker.progress import Goal, PhaseClock, previous_phase_seconds

log = logging.getLogger(__name__)


def pick_device(setting: str) -> str:
    """`auto`: the GPU when there is one. Called inside the task, never at import."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def run_precision(settings: Any) -> Precision:
    """The precision policy and speed switches of the worker's runs (TAMING_PRECISION, _CHANNELS_LAST, _COMPILE)."""
    return Precision(settings.precision, channels_last=settings.channels_last, compile=settings.compile)


def tame_config(parameters: dict[str, Any]) -> Any:
    """The job's method with its parameters that TameConfig knows; the API has validated them already."""
    from rules.method import DEFAULT_METHOD
    from taming.tame import TameConfig, method_config

    known = {f.name for f in dataclasses.fields(TameConfig)} - {"method"}
    return method_config(parameters.get("method") or DEFAULT_METHOD,
                         **{k: v for k, v in parameters.items() if k in known})


def checked_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The job's parameters validated again (finite, in range: app.schemas.JobParameters) before any step, so
    that a row written by an older API or edited by hand cannot start a run; DataError says which."""
    try:
        return JobParameters.model_validate(parameters).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise DataError(f"parameters: {where}: {first['msg']}") from None


def fetch_remember(storage: Storage, model: Model, revision: RememberRevision | None,
                   folder: Path) -> remember_sets.Fetched:
    """The remember-set revision of the version the run starts from (everyone forgotten before is out of it):
    the reference remember set and, when the model has one, its held-out remember images."""
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
    try:
        faces = load_faces(target, model.image_size, model.channels)
    except DataError as exc:
        raise DataError(_public(str(exc), target, original)) from None
    faces.names = [original.get(n, n) for n in faces.names]
    return faces


def _public(message: str, folder: Path, names: dict[str, str]) -> str:
    """A message about files in the run's temp folder, naming them as the caller did (no server paths)."""
    for local, name in names.items():
        message = message.replace(str(folder / local), name)
    return message.replace(str(folder), "the upload")


def _job_meta(job: Job, batch: Batch, inputs: _Inputs) -> dict[str, Any]:
    return {**job_reports.job_section(job, inputs.key_names.get(job.submitted_by)), "run_id": batch.run_id,
            "run_jobs": batch.job_ids, "resumed_from_iteration": inputs.resumed_from,
            "audit_head": inputs.audit_head}


@dataclass
class _Inputs:
    """What one run starts from, read from the database and fetched from storage."""

    model: Model
    base: ModelVersion
    jobs: list[Job]
    key_names: dict[str, str | None]
    previous: dict[str, float]  # phase seconds of the newest finished run on this model
    revision: RememberRevision | None = None
    checkpoint: Path | None = None
    fetched: remember_sets.Fetched | None = None
    remember: FaceSet | None = None
    remember_holdout: FaceSet | None = None
    config: Any = None
    resume_state: dict[str, Any] | None = None
    resumed_from: int = 0
    classifier_keys: dict[str, str] = dataclasses.field(default_factory=dict)  # stored classifier id -> object key
    audit_head: dict[str, Any] = dataclasses.field(default_factory=dict)  # the chain's head as the run starts


def _read_rows(batch: Batch, settings: Any) -> _Inputs | None:
    with session_scope(settings) as session:
        model = session.get(Model, batch.model_id)
        base = session.scalar(select(ModelVersion).where(ModelVersion.model_id == batch.model_id,
                                                         ModelVersion.version == batch.base_version))
        jobs = list(session.scalars(select(Job).where(Job.id.in_(batch.job_ids)).order_by(Job.created_at)))
        names = {job.submitted_by: job_reports.key_name(session, job.submitted_by) for job in jobs}
        earlier = session.scalars(select(Job.progress).where(Job.model_id == batch.model_id,
                                                             Job.state.in_(TERMINAL_STATES), Job.run_id != batch.run_id)
                                  .order_by(Job.finished_at.desc()).limit(5))
        previous = previous_phase_seconds(list(earlier))
        revision = revisions.get_revision(session, batch.model_id, base.remember_revision if base else None)
        wanted = [(j.parameters or {}).get("classifier_id") for j in jobs]
        keys = {c.id: c.storage_key for c in session.scalars(select(Classifier).where(Classifier.id.in_(
            [w for w in wanted if w])))}
        head = job_reports.audit_head(session)
    if model is None or base is None:
        return None
    return _Inputs(model, base, jobs, names, previous, revision, classifier_keys=keys, audit_head=head)


def _fetch(inputs: _Inputs, batch: Batch, storage: Storage, tmp: Path) -> None:
    """Checkpoint (SHA-256 checked), remember sets, parameters and any saved state of this run."""
    ckpt = tmp / "base.safetensors"
    storage.download(inputs.base.checkpoint_key, ckpt)
    if file_sha256(ckpt) != inputs.base.sha256:
        raise CheckpointError(f"the stored checkpoint of version {inputs.base.version} does not match its SHA-256")
    inputs.checkpoint = ckpt
    fetched = inputs.fetched = fetch_remember(storage, inputs.model, inputs.revision, tmp / "remember")
    inputs.remember = fetched.sets[revisions.REMEMBER].faces
    held = fetched.sets.get(revisions.REMEMBER_HOLDOUT)
    inputs.remember_holdout = held.faces if held is not None else None
    inputs.config = tame_config(checked_parameters(inputs.jobs[0].parameters or {}))
    if batch.resumed and storage.exists(storage_keys.run_state(batch.run_id)):
        storage.download(storage_keys.run_state(batch.run_id), tmp / "state.pt")
        inputs.resume_state = torch.load(tmp / "state.pt", weights_only=True, map_location="cpu")
    state = inputs.resume_state
    inputs.resumed_from = int(state.get("iteration", 0)) if isinstance(state, dict) else 0


def _request_for(job: Job, inputs: _Inputs, storage: Storage, tmp: Path) -> tuple[pipeline.Request,
                                                                                 pipeline.Rebalance | None]:
    """One job's images as a pipeline request (and its rebalance, for that kind); raises DataError."""
    model, rebalance = inputs.model, None
    if job.kind == "rebalance_attribute":
        positive = fetch_uploads(storage, job, "positive", model, tmp) or fetch_uploads(storage, job, "forget",
                                                                                         model, tmp)
        if positive is None:
            raise DataError("no images with the attribute were uploaded")
        negative = fetch_uploads(storage, job, "negative", model, tmp) or inputs.remember
        params = job.parameters or {}
        assert negative is not None
        rebalance = pipeline.Rebalance(positive, negative, float(params.get("target_share", 0.5)),
                                       str(params.get("direction", "decrease")),
                                       str(params.get("strategy") or "push_negatives"),
                                       _classifier(inputs, params.get("classifier_id"), storage, tmp / job.id))
        forget: FaceSet | None = positive
    else:
        forget = fetch_uploads(storage, job, "forget", model, tmp)
    if forget is None:
        raise DataError("no forget images were uploaded")
    holdout = fetch_uploads(storage, job, "holdout", model, tmp)
    request = pipeline.Request(key=job.id, forget=forget, holdout=holdout)
    if rebalance is None and (problem := request_problem(request)) is not None:
        raise DataError(problem)
    return request, rebalance


def _classifier(inputs: _Inputs, classifier_id: str | None, storage: Storage, folder: Path) -> Path | None:
    """The job's stored classifier, downloaded; None when the job trains its own."""
    if not classifier_id:
        return None
    if classifier_id not in inputs.classifier_keys:
        raise DataError(f"the stored classifier {classifier_id} is gone")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "classifier.safetensors"
    storage.download(inputs.classifier_keys[classifier_id], path)
    return path


def _goal(config: Any, rebalance: pipeline.Rebalance | None) -> Goal:
    """What the taming phase's ETA estimate follows: the stop rule's quantity and its target."""
    if rebalance is not None:
        return Goal("share", rebalance.target_share)
    return Goal("max_abs_d", float(config.eps))


def execute(batch: Batch, settings: Any, t: Timings, owner: str) -> None:
    """Run one batch to its outcome (succeeded, failed, cancelled, or left for a retry)."""
    storage = get_storage(settings)
    clock = PhaseClock()  # from now on the run is loading
    with run_folders.run_folder(batch.run_id) as tmp:  # removed after the attempt; a crash's by the next start
        inputs = _read_rows(batch, settings)
        if inputs is None:
            finish.fail(batch, settings, t, f"Model version {batch.base_version} to start from is missing.")
            return
        clock.previous = inputs.previous
        try:
            _fetch(inputs, batch, storage, tmp)
        except (DataError, CheckpointError, KeyError, TypeError) as exc:
            finish.fail(batch, settings, t, f"Could not prepare the run: {exc}")
            return
        requests: list[pipeline.Request] = []
        rebalance = None
        for job in inputs.jobs:
            try:
                request, job_rebalance = _request_for(job, inputs, storage, tmp)
            except (DataError, KeyError, ValueError) as exc:
                # One request with bad images must not sink the others of a coalesced run.
                finish.fail_jobs(batch, settings, t, [job.id], f"Its images could not be used: {exc}")
                continue
            rebalance = job_rebalance or rebalance
            request.meta = _job_meta(job, batch, inputs)
            requests.append(request)
        if not requests:
            finish.cleanup_run(batch, settings)
            return
        batch.job_ids = [r.key for r in requests]
        monitor = RunMonitor(batch, settings, t, owner, storage, inputs.resumed_from, clock,
                             _goal(inputs.config, rebalance))
        _run(batch, settings, t, owner, inputs, requests, rebalance, monitor, tmp / "tamed.safetensors")


def _run(batch: Batch, settings: Any, t: Timings, owner: str, inputs: _Inputs, requests: list[pipeline.Request],
         rebalance: pipeline.Rebalance | None, monitor: RunMonitor, out: Path) -> None:
    model, base = inputs.model, inputs.base
    assert inputs.checkpoint is not None and inputs.remember is not None and inputs.fetched is not None
    # D_R below is the revision without this run's people: the same rows the next revision leaves out
    new_revision = (None if rebalance else
                    remember_sets.plan_next(inputs.fetched, requests, out.parent / "next", model.id, batch.run_id))
    model_meta = {"id": model.id, "parent_version": base.version, "parent_sha256": base.sha256,
                  "new_version": batch.base_version + 1,
                  **_remember_meta(inputs.fetched, new_revision, rebalance is None)}
    device, precision = pick_device(settings.device), run_precision(settings)
    log.info("run %s on %s (%s)", batch.run_id, device, precision.describe())
    try:
        with monitor:
            result = pipeline.run_requests(
                inputs.checkpoint, inputs.remember, requests, inputs.config, out,
                rebalance=rebalance, on_step=monitor.on_step, on_phase=monitor.on_phase,
                resume_state=inputs.resume_state, device=device, model_meta=model_meta,
                remember_holdout=inputs.remember_holdout,
                cache_dir=Path(settings.var_dir) / "cache",  # the feature space, once per model
                precision=precision, stop=monitor.token,
            )
    except RequestProblem as exc:  # one request's images: it fails alone, the others run again without it
        finish.fail_alone(batch, settings, t, exc.key, f"Its images could not be used: {exc}")
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
    if monitor.stop is not None:  # asked after the loop ended too: what the run wrote is not kept
        _stopped(batch, settings, t, monitor.stop)
        return
    if not result.criterion_met:
        first = inputs.jobs[0]  # a run is either forget requests or one rebalance
        message = finish.criterion_message(result, inputs.config, first.kind,
                                           (first.parameters or {}).get("target_share"))
        finish.fail(batch, settings, t, message, result=result)
        return
    finish.succeed(batch, settings, t, owner, result, out, new_revision)


def _stopped(batch: Batch, settings: Any, t: Timings, stop: Stop) -> None:
    if isinstance(stop, LeaseLost):
        raise stop  # another worker holds the model now: write nothing (worker.runner)
    if isinstance(stop, RunCancelled):
        finish.cancel(batch, settings, t, stop.job_ids)
    else:
        finish.fail(batch, settings, t, str(stop))


def _remember_meta(fetched: remember_sets.Fetched, new: revisions.NewRevision | None,
                   erasure: bool) -> dict[str, Any]:
    """The report's record of the remember-set revisions: the one read, the one the new version records."""
    meta: dict[str, Any] = {"remember_revision_parent": fetched.revision,
                            "remember_revision": new.number if new is not None else fetched.revision}
    if erasure:
        meta["remember_images"] = new.images if new is not None else len(fetched.sets[revisions.REMEMBER].faces)
    return meta
