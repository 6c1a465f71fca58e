"""The model lease: at most one worker runs jobs of a given model at a time.

Why a lease in the database and not broker ordering: versions must form a single chain (each run starts
from the model's newest version), and the broker can neither promise one consumer per model nor survive
a worker that dies holding a message. The lease is two columns on the Model row, taken by one atomic
compare-and-set UPDATE, renewed with the heartbeat and given up when the holder's queue is empty. A
holder that dies simply stops renewing; after `lease_seconds` anyone may take the lease over.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from app.models import Model

# One identity per worker process, so that a restarted process on the same host is a new owner.
_OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_id() -> str:
    return _OWNER


def _cas(session: Session, model_id: str, condition: object, values: dict[str, object]) -> bool:
    stmt = update(Model).where(Model.id == model_id).where(condition).values(**values)  # type: ignore[arg-type]
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def acquire(session: Session, model_id: str, owner: str, seconds: float, now: datetime) -> bool:
    """Take the lease if it is free, expired or already ours. The caller commits."""
    free = or_(Model.lease_owner.is_(None), Model.lease_owner == owner, Model.lease_expires_at < now)
    return _cas(session, model_id, free, {"lease_owner": owner, "lease_expires_at": now + timedelta(seconds=seconds)})


def renew(session: Session, model_id: str, owner: str, seconds: float, now: datetime) -> bool:
    """Extend our lease; False when someone else holds it now (we were presumed dead): stop at once."""
    ours = Model.lease_owner == owner
    return _cas(session, model_id, ours, {"lease_expires_at": now + timedelta(seconds=seconds)})


def release(session: Session, model_id: str, owner: str) -> bool:
    """Give the lease up if it is still ours. The caller commits."""
    return _cas(session, model_id, Model.lease_owner == owner, {"lease_owner": None, "lease_expires_at": None})
