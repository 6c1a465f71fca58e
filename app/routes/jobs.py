"""/v1/jobs: submit, list, read, cancel, reports, live events."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.responses import HTMLResponse, StreamingResponse

from app import events, jobs, storage_keys
from app.auth import CurrentKey, SubmitterKey, visible_job
from app.deps import EnqueueDep, ReadSessionDep, SessionDep, SettingsDep, StorageDep
from app.errors import BODY_RESPONSES, CONFLICT_RESPONSES, ERROR_RESPONSES, QUOTA_RESPONSES, ApiError
from app.schemas import TEXT_PATTERN, JobList, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)
Files = Annotated[list[UploadFile] | None, File()]


@router.post("", status_code=202, response_model=JobOut,
             responses={**BODY_RESPONSES, **CONFLICT_RESPONSES, **QUOTA_RESPONSES})
def submit_job(
    response: Response, key: SubmitterKey, session: SessionDep, settings: SettingsDep, storage: StorageDep,
    enqueue: EnqueueDep,
    kind: Annotated[Literal["forget_identity", "rebalance_attribute"], Form()],
    model_id: Annotated[str, Form(max_length=64, pattern=TEXT_PATTERN)],
    subject_ref: Annotated[str, Form(min_length=1, max_length=200, pattern=TEXT_PATTERN)],
    parameters: Annotated[str | None, Form(description="JSON object: delta, epsilon, alpha, … (finite numbers in "
                                           "the ranges of contentSchema)",
                                           json_schema_extra=jobs.PARAMETERS_SCHEMA)] = None,
    callback_url: Annotated[str | None, Form(max_length=2000)] = None,  # app/ssrf.py refuses control characters
    forget: Files = None, holdout: Files = None, positive: Files = None, negative: Files = None,
    classifier: Annotated[UploadFile | None, File(description="rebalance: an attribute classifier")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Submit a forget_identity or rebalance_attribute job; 202 with the job and its Location."""
    files = {"forget": forget or [], "holdout": holdout or [], "positive": positive or [], "negative": negative or []}
    sub = jobs.Submission(kind, model_id, subject_ref, jobs.parse_parameters(parameters), callback_url or None, files,
                          classifier)
    job, replayed = jobs.submit(session, storage, settings, key, sub, idempotency_key)
    if not replayed:
        jobs.ring(enqueue, job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return JobOut.of(job)


@router.get("", response_model=JobList)
def list_jobs(
    key: CurrentKey, session: ReadSessionDep,
    status: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()] = None,
    kind: Annotated[Literal["forget_identity", "rebalance_attribute"] | None, Query()] = None,
    model_id: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    """List jobs, newest first (an operator sees only its own); pass next_cursor to page on."""
    items, next_cursor = jobs.list_jobs(session, key, state=status, kind=kind, model_id=model_id,
                                        cursor=cursor, limit=limit)
    return JobList(items=[JobOut.of(j) for j in items], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, key: CurrentKey, session: ReadSessionDep) -> JobOut:
    """One job: state, progress (iteration, max |d|, share, ETA), the version it produced."""
    return JobOut.of(visible_job(session, key, job_id))


@router.post("/{job_id}:cancel", response_model=JobOut, status_code=202, responses=CONFLICT_RESPONSES)
def cancel_job(job_id: str, key: SubmitterKey, session: SessionDep, storage: StorageDep) -> JobOut:
    """Cancel: a queued job ends at once, a running one stops at its next iteration."""
    return JobOut.of(jobs.cancel(session, storage, key, visible_job(session, key, job_id)))


def _report(session: SessionDep, storage: StorageDep, key: CurrentKey, job_id: str, ext: str) -> bytes:
    job = visible_job(session, key, job_id)
    report_key = (job.report_key or storage_keys.report(job.id)).removesuffix(".json") + ext
    try:
        return storage.get_bytes(report_key)
    except KeyError:
        raise ApiError(404, "report_not_found", f"job {job.id} has no report (state {job.state})") from None


@router.get("/{job_id}/report", responses={200: {"content": {"application/json": {}}}})
def get_report(job_id: str, key: CurrentKey, session: SessionDep, storage: StorageDep) -> Response:
    """The audit report (JSON, versioned schema; DESIGN.md section 8)."""
    return Response(_report(session, storage, key, job_id, ".json"), media_type="application/json")


@router.get("/{job_id}/report.html", response_class=HTMLResponse)
def get_report_html(job_id: str, key: CurrentKey, session: SessionDep, storage: StorageDep) -> HTMLResponse:
    """The human-readable report with figures."""
    return HTMLResponse(_report(session, storage, key, job_id, ".html"))


@router.get("/{job_id}/events", response_class=StreamingResponse)
def job_events(job_id: str, request: Request, key: CurrentKey) -> Response:
    """Server-sent events: the job's state and progress whenever they change, until it ends."""
    return events.response(request, key, job_id)
