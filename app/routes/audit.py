"""/v1/audit: the audit log for auditors and admins, and the check of its hash chain."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from app import audit, audit_query
from app.audit_query import AuditHead, AuditList, AuditVerdict, list_entries
from app.auth import ReaderKey
from app.deps import SessionDep
from app.errors import ERROR_RESPONSES
from app.models import AuditLog

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERROR_RESPONSES)


@router.get("", response_model=AuditList)
def list_audit(
    _key: ReaderKey, session: SessionDep,
    job_id: Annotated[str | None, Query(max_length=64, description="Rows about this job.")] = None,
    model_id: Annotated[str | None, Query(max_length=64, description="Rows about this model.")] = None,
    action: Annotated[str | None, Query(max_length=100, description="e.g. `job.submit`, or `job.*`.")] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AuditList:
    """The audit log, newest first (auditor or admin); pass next_cursor to page on."""
    return list_entries(session, job_id=job_id, model_id=model_id, action=action, cursor=cursor, limit=limit)


@router.get("/head", response_model=AuditHead)
def audit_head(_key: ReaderKey, session: SessionDep) -> AuditHead:
    """The chain's head (last id, hash, MAC) to pin outside the service (auditor or admin)."""
    return audit_query.head_of(session)


@router.get("/verify", response_model=AuditVerdict)
def verify_audit(_key: ReaderKey, session: SessionDep) -> AuditVerdict:
    """Check the hash chain: intact, or the problems found, first one first (auditor or admin)."""
    problems = audit.verify(session)
    rows = session.scalar(select(func.count()).select_from(AuditLog)) or 0
    return AuditVerdict(intact=not problems, rows=rows, problems=problems)
