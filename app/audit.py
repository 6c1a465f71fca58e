"""The append-only audit log: each row's hash covers the previous row's hash and its own content.

Editing a row breaks its own hash; deleting or reordering rows breaks the next row's `prev_hash`. Re-hashing
the rows after an edit, or cutting rows off the end, is caught by the anchors of app/audit_anchor.py: each
row's keyed MAC, and the head kept in a file outside the database (or pinned by a reader from `GET /v1/audit/head`).
Writers serialise on a lock so that two concurrent records never fork the chain.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from app import audit_anchor as anchor
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
    digest = _digest(prev, at, actor, action, subject, clean)
    settings = anchor.settings_of(session)
    row = AuditLog(at=at, actor=actor, action=action, subject=subject, details=clean, prev_hash=prev,
                   hash=digest, mac=anchor.mac(settings, digest))
    session.add(row)
    session.flush()
    anchor.pending(session, anchor.Head(row.id, row.hash, row.mac))
    return row


def verify(session: Session, pinned: anchor.Head | None = None) -> list[str]:
    """Problems found in the chain, first one first; an empty list means it is intact.

    Checks each row's hash and link, its MAC (rows before the first MAC'd one predate anchoring and are only
    chained), and that the chain reaches the head kept in the head file and `pinned` (a head read earlier
    from `GET /v1/audit/head`), with the same hash there."""
    settings = anchor.settings_of(session)
    problems: list[str] = []
    prev, anchored = GENESIS, False
    hashes: dict[int, str] = {}
    macs: dict[int, str | None] = {}
    for row in session.scalars(select(AuditLog).order_by(AuditLog.id)):
        if row.prev_hash != prev:
            problems.append(f"row {row.id}: does not follow the row before it (a row was deleted or reordered)")
        if row.hash != _digest(row.prev_hash, row.at, row.actor, row.action, row.subject, row.details or {}):
            problems.append(f"row {row.id}: content does not match its hash (the row was edited)")
        anchored = anchored or row.mac is not None
        if anchored and not anchor.mac_ok(settings, row.hash, row.mac):
            problems.append(f"row {row.id}: its MAC does not match (the row was rewritten or re-hashed)")
        prev = hashes[row.id] = row.hash
        macs[row.id] = row.mac
    for name, head in (("stored", anchor.stored_head(settings)), ("pinned", pinned)):
        if head is not None:
            problems += _head_problems(name, head, hashes, macs)
    return problems


def _head_problems(name: str, head: anchor.Head, hashes: dict[int, str], macs: dict[int, str | None]) -> list[str]:
    last = max(hashes, default=0)
    if head.id == 0 and not hashes:
        return []
    if head.id not in hashes:
        return [f"the chain ends at row {last} but the {name} head is row {head.id} (rows were cut off the end)"]
    if hashes[head.id] != head.hash:
        return [f"row {head.id}: its hash differs from the {name} head (the chain was rewritten)"]
    if head.mac is not None and macs[head.id] != head.mac:  # e.g. every MAC removed to pass as unanchored
        return [f"row {head.id}: its MAC differs from the {name} head (the MACs were removed or rewritten)"]
    return []


def head(session: Session) -> anchor.Head | None:
    """The chain's last row as a head: what `GET /v1/audit/head` publishes."""
    row = session.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(1)).first()
    return anchor.Head(row.id, row.hash, row.mac) if row is not None else None
