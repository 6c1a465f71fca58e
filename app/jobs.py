"""Jobs: submission (with idempotency), listing with cursor pagination, cancellation.

Plain functions the routes call. The job row is the truth; `ring` only tells the workers to look, after
the row is committed, and a lost doorbell is repaired by the sweeper or the next API start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fastapi import UploadFile
from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import classifiers, lifecycle, upload_store, uploads, webhooks
from app.auth import sees_all
from app.errors import ApiError, not_found
from app.models import TERMINAL_STATES, ApiKey, Job, Model, new_id, utcnow
from app.schemas import JobParameters
from app.settings import Settings
from app.storage import Storage

log = logging.getLogger(__name__)
FILE_FIELDS = ("forget", "holdout", "positive", "negative")
Enqueue = Callable[[str], None]


@dataclass
class Submission:
    kind: str
    model_id: str
    subject_ref: str
    parameters: JobParameters
    callback_url: str | None
    files: dict[str, list[UploadFile]] = field(default_factory=dict)
    classifier: UploadFile | None = None  # rebalance: an attribute classifier uploaded with the job


# The `parameters` form field is a JSON string: its schema goes into the OpenAPI document as contentSchema.
PARAMETERS_SCHEMA = {"contentMediaType": "application/json", "contentSchema": JobParameters.model_json_schema()}


def parse_parameters(text: str | None) -> JobParameters:
    try:
        return JobParameters.model_validate_json(text or "{}")
    except ValidationError as exc:
        problems = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        where = ".".join(str(p) for p in problems[0]["loc"]) or "parameters"
        raise ApiError(422, "invalid_parameters", f"parameters: {where}: {problems[0]['msg']}", problems) from None


def check_shape(sub: Submission) -> None:
    """Which file fields each kind needs."""
    has = {name: len(files) for name, files in sub.files.items() if files}
    if sub.kind == "forget_identity":
        if not has.get("forget"):
            raise ApiError(422, "no_images", "a forget_identity job needs at least one 'forget' image")
        if has.get("positive") or has.get("negative"):
            raise ApiError(422, "invalid_request", "'positive'/'negative' belong to rebalance_attribute jobs")
    else:
        if not (has.get("positive") and has.get("negative")):
            raise ApiError(422, "no_images", "a rebalance_attribute job needs 'positive' and 'negative' images")
        if sub.parameters.target_share is None:
            raise ApiError(422, "invalid_parameters", "a rebalance_attribute job needs parameters.target_share")
    if sub.kind == "forget_identity" and (sub.classifier is not None or sub.parameters.classifier_id):
        raise ApiError(422, "invalid_request", "a classifier belongs to rebalance_attribute jobs")


def request_hash(sub: Submission, hashes: dict[tuple[str, int], str]) -> str:
    body = {"kind": sub.kind, "model_id": sub.model_id, "subject_ref": sub.subject_ref,
            "parameters": sub.parameters.model_dump(), "callback_url": sub.callback_url,
            "files": sorted(f"{f}/{i}/{h}" for (f, i), h in hashes.items())}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _replay(session: Session, key: ApiKey, idem_key: str | None, digest: str) -> Job | None:
    if not idem_key:
        return None
    job = session.scalars(select(Job).where(Job.submitted_by == key.id, Job.idempotency_key == idem_key)).first()
    if job is not None and job.request_hash != digest:
        raise ApiError(409, "idempotency_key_reused",
                       "this Idempotency-Key was already used with a different request", {"job_id": job.id})
    return job


def check_quota(session: Session, key: ApiKey, settings: Settings, incoming_bytes: int) -> None:
    """429 when this key has `max_queued_jobs_per_key` jobs waiting or running, or these files would take its
    uploads of the last 24 hours past `max_upload_bytes_per_key_per_day`."""
    waiting = session.scalar(select(func.count()).select_from(Job).where(
        Job.submitted_by == key.id, Job.state.in_(("queued", "running")))) or 0
    if waiting >= settings.max_queued_jobs_per_key:
        raise ApiError(429, "quota_exceeded", f"this key has {waiting} jobs queued or running; at most "
                       f"{settings.max_queued_jobs_per_key} (submit again when one has ended)",
                       {"limit": settings.max_queued_jobs_per_key, "waiting": waiting},
                       headers={"Retry-After": "60"})
    since = utcnow() - timedelta(days=1)
    used = session.scalar(select(func.coalesce(func.sum(Job.upload_bytes), 0)).where(
        Job.submitted_by == key.id, Job.created_at >= since)) or 0
    limit = settings.max_upload_bytes_per_key_per_day
    if used + incoming_bytes > limit:
        raise ApiError(429, "upload_quota_exceeded", f"this key uploaded {used} bytes in the last 24 hours; "
                       f"{incoming_bytes} more would pass its {limit} bytes a day",
                       {"limit": limit, "used": int(used), "incoming": incoming_bytes},
                       headers={"Retry-After": "3600"})


def submit(session: Session, storage: Storage, settings: Settings, key: ApiKey, sub: Submission,
           idem_key: str | None) -> tuple[Job, bool]:
    """Validate everything, store the uploads, commit the job row; (job, replayed)."""
    check_shape(sub)
    if sub.callback_url:
        webhooks.check_callback(sub.callback_url, key, settings)
    model = session.get(Model, sub.model_id)
    if model is None:
        raise not_found("model", sub.model_id)
    groups = {name: files for name, files in sub.files.items() if files}
    incoming_bytes = uploads.check_caps(groups, settings)
    hashes = uploads.hash_all(groups)
    if sub.classifier is not None:
        hashes["classifier", 0] = uploads.sha256_of(sub.classifier.file)
    digest = request_hash(sub, hashes)
    if (earlier := _replay(session, key, idem_key, digest)) is not None:
        return earlier, True
    # after the replay: retrying a submission that went through is no new job
    check_quota(session, key, settings, incoming_bytes)
    incoming = uploads.inspect_all(groups, hashes, model.image_size, model.channels, settings)
    if sub.kind == "rebalance_attribute":  # an unusable classifier is refused before any image is stored
        sub.parameters.classifier_id = classifiers.for_job(session, storage, key, sub.parameters.classifier_id,
                                                           sub.classifier, sub.subject_ref, settings.max_file_bytes)
    job_id = new_id()
    entries = uploads.store_all(storage, job_id, incoming)
    job = Job(id=job_id, kind=sub.kind, model_id=model.id, subject_ref=sub.subject_ref,
              parameters=sub.parameters.model_dump(), submitted_by=key.id, idempotency_key=idem_key,
              request_hash=digest, uploads=entries, upload_bytes=incoming_bytes, callback_url=sub.callback_url,
              progress={})
    try:
        lifecycle.submitted(session, job, key.id)
        session.commit()
    except IntegrityError:  # the same Idempotency-Key raced in from a parallel request
        session.rollback()
        upload_store.delete(storage, job_id)
        if (earlier := _replay(session, key, idem_key, digest)) is not None:
            return earlier, True
        raise
    except BaseException:
        session.rollback()
        upload_store.delete(storage, job_id)
        raise
    return job, False


def ring(enqueue: Enqueue, job_id: str) -> None:
    """Tell the workers to look at a committed job; a failure here loses nothing (the row stays queued)."""
    try:
        enqueue(job_id)
    except Exception:
        log.warning("could not enqueue job %s; it stays queued for the sweeper", job_id, exc_info=True)


def default_enqueue(job_id: str) -> None:
    from app.queue import enqueue  # imported on first use: the worker helper owns app/queue.py

    enqueue(job_id)


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_JOB_ID = re.compile(r"[0-9a-f]{1,32}")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise ValueError(job_id)  # ids are hex: anything else (a NUL byte, say) is no cursor of ours
        return datetime.fromisoformat(created), job_id
    except (ValueError, TypeError, RecursionError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API handed out") from None


def list_jobs(session: Session, key: ApiKey, *, state: str | None, kind: str | None, model_id: str | None,
              cursor: str | None, limit: int) -> tuple[list[Job], str | None]:
    """Newest first; an operator sees only its own jobs."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if not sees_all(key):
        query = query.where(Job.submitted_by == key.id)
    for column, value in ((Job.state, state), (Job.kind, kind), (Job.model_id, model_id)):
        if value is not None:
            query = query.where(column == value)
    if cursor:
        created, job_id = _decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    jobs = list(session.scalars(query))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, (_encode_cursor(jobs[-1]) if more and jobs else None)


def cancel(session: Session, storage: Storage, key: ApiKey, job: Job) -> Job:
    """A queued job ends at once; a running one is asked to stop at its next iteration (app/lifecycle.py)."""
    if job.state in TERMINAL_STATES:
        raise ApiError(409, "job_finished", f"job {job.id} already ended ({job.state})")
    lifecycle.cancel_requested(session, job, storage, key.id)
    session.commit()
    return job


def queued_job_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Job.id).where(Job.state == "queued").order_by(Job.created_at)))
