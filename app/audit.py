"""The append-only audit log: each row's hash covers the previous row's hash and its own content.

Editing a row breaks its own hash; deleting or reordering rows breaks the next row's `prev_hash`.
(Cutting rows off the end leaves a valid shorter chain; the last hash can be copied elsewhere to catch
that too.) Writers serialise on a lock so that two concurrent records never fork the chain.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from app.models import AuditLog, utcnow

GENESIS = "0" * 64
_PG_LOCK_ID = 7_310_417  # any constant: the advisory lock every audit writer takes on PostgreSQL


def _digest(prev_hash: str, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]) -> str:
    body = {"at": at.replace(tzinfo=None).isoformat(), "actor": actor, "action": action, "subject": subject,
            "details": details}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
    else:
        # SQLite: a write statement takes the database's write lock for the rest of the transaction,
        # so the last row read below cannot change before our insert commits.
        session.execute(update(AuditLog).where(AuditLog.id == -1).values(actor=AuditLog.actor))


def record(session: Session, actor: str, action: str, subject: str, details: dict[str, Any] | None = None) -> AuditLog:
    """Append one row (the caller commits). `details` must be JSON-serialisable."""
    _lock_chain(session)
    last = session.scalars(select(AuditLog.hash).order_by(AuditLog.id.desc()).limit(1)).first()
    prev = last or GENESIS
    at = utcnow().replace(microsecond=0)  # whole seconds: every database stores them exactly
    clean = json.loads(json.dumps(details or {}, default=str))
    row = AuditLog(at=at, actor=actor, action=action, subject=subject, details=clean, prev_hash=prev,
                   hash=_digest(prev, at, actor, action, subject, clean))
    session.add(row)
    session.flush()
    return row


def verify(session: Session) -> list[str]:
    """Problems found in the chain, first one first; an empty list means it is intact."""
    problems: list[str] = []
    prev = GENESIS
    for row in session.scalars(select(AuditLog).order_by(AuditLog.id)):
        if row.prev_hash != prev:
            problems.append(f"row {row.id}: does not follow the row before it (a row was deleted or reordered)")
        if row.hash != _digest(row.prev_hash, row.at, row.actor, row.action, row.subject, row.details or {}):
            problems.append(f"row {row.id}: content does not match its hash (the row was edited)")
        prev = row.hash
    return problems
