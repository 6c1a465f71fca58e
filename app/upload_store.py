"""The one function that deletes a job's uploaded photos.

Every ending of a job (success, failure, cancel, give-up) and every submission that never became a job
deletes through `delete`; for a job that existed the audit log records which files left (the caller commits).
Free of FastAPI, so the worker imports it too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app import audit, storage_keys
from app.storage import Storage


def delete(storage: Storage, job_id: str, *, ended: Any = None, session: Session | None = None,
           actor: str = "") -> None:
    """Delete every uploaded file of a job; with the ended job and a session, audit it in that session."""
    storage.delete_prefix(storage_keys.uploads_prefix(job_id))
    if ended is not None and session is not None:
        files = ended.uploads or []
        audit.record(session, actor, "job.uploads_deleted", job_id,
                     {"files": len(files), "keys": [u.get("key") for u in files],
                      "sha256": [u.get("sha256") for u in files]})
