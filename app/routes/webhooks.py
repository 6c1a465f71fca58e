"""/v1/jobs/{id}/webhooks: the job's webhook events and every delivery attempt (what was sent, what came back)."""

from __future__ import annotations

from fastapi import APIRouter

from app import webhooks
from app.auth import CurrentKey, visible_job
from app.deps import SessionDep
from app.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("/{job_id}/webhooks", response_model=webhooks.EventList)
def job_webhooks(job_id: str, key: CurrentKey, session: SessionDep) -> webhooks.EventList:
    """The job's webhook events (job.started, job.completed), each with its delivery attempts."""
    return webhooks.events_of(session, visible_job(session, key, job_id).id)
