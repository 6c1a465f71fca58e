"""Reading the audit log over HTTP: newest first, filtered by job, model or action, paged by cursor.

Rows name their subject as `job:<id>` / `model:<id>` (written by the API) or as the bare id (written by
the worker and the sweeper); a filter matches both. Actors that are API keys are named with the key's
name, so that a reader sees who, not only which key id.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app import audit
from app.errors import ApiError
from app.models import ApiKey, AuditLog


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_name: str | None
    action: str
    subject: str
    details: dict[str, Any]
    hash: str
    prev_hash: str


class AuditList(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None


class AuditHead(BaseModel):
    """The chain's last row: pin it (store it outside this service) and pass it to `taming audit verify --head`
    later; a chain cut off or rewritten before it is then detected."""

    id: int = Field(description="Id of the last row (0: the log is empty).")
    hash: str = Field(description="Its chained hash.")
    mac: str | None = Field(description="Its keyed MAC (HMAC-SHA256 under the server's audit key).")
    rows: int


class AuditVerdict(BaseModel):
    intact: bool
    rows: int
    problems: list[str]


def _encode(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"a{row_id}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("a") or not text[1:].isdigit() or not 0 < int(text[1:]) <= 2**31 - 1:
            raise ValueError(cursor)  # an id of the integer column, or no cursor of ours
        return int(text[1:])
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API handed out") from None


def _filtered(query: Select[Any], job_id: str | None, model_id: str | None,
              action: str | None) -> Select[Any]:
    if any("\x00" in (value or "") for value in (job_id, model_id, action)):
        raise ApiError(422, "invalid_request", "filters must not contain NUL characters")
    if job_id:
        query = query.where(AuditLog.subject.in_([job_id, f"job:{job_id}"]))
    if model_id:
        query = query.where(AuditLog.subject.in_([model_id, f"model:{model_id}"]))
    if action and action.endswith(".*"):
        query = query.where(AuditLog.action.startswith(action[:-1], autoescape=True))
    elif action:
        query = query.where(AuditLog.action == action)
    return query


def list_entries(session: Session, *, job_id: str | None, model_id: str | None, action: str | None,
                 cursor: str | None, limit: int) -> AuditList:
    """One page of the log, newest first; `action` is exact, or a prefix when it ends in `.*`."""
    query = _filtered(select(AuditLog), job_id, model_id, action).order_by(AuditLog.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(AuditLog.id < _decode(cursor))
    rows: list[AuditLog] = list(session.scalars(query))
    more, rows = len(rows) > limit, rows[:limit]
    names = dict(session.execute(select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_({r.actor for r in rows}))).all())
    items = [AuditEntry(id=r.id, at=r.at, actor=r.actor, actor_name=names.get(r.actor), action=r.action,
                        subject=r.subject, details=r.details or {}, hash=r.hash, prev_hash=r.prev_hash) for r in rows]
    return AuditList(items=items, next_cursor=_encode(rows[-1].id) if more and rows else None)


def head_of(session: Session) -> AuditHead:
    """What `GET /v1/audit/head` answers."""
    head = audit.head(session)
    rows = session.scalar(select(func.count()).select_from(AuditLog)) or 0
    if head is None:
        return AuditHead(id=0, hash=audit.GENESIS, mac=None, rows=0)
    return AuditHead(id=head.id, hash=head.hash, mac=head.mac, rows=rows)
