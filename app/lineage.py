"""The erasures a version carries: every succeeded forget job whose version is at or before it.

Versions form one chain (each job starts from the newest version, and the database refuses two versions on
one parent), so version v carries the erasures of versions 2..v, including every request of a coalesced run
(they all name the run's one version), not only the job recorded on the version row.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Job, ModelVersion
from app.schemas import ErasureOut, VersionOut


def erasures(session: Session, model_id: str, low: int = 0, high: int | None = None) -> list[ErasureOut]:
    """Erasures that took effect in versions (low, high], oldest first."""
    query = select(Job).where(Job.model_id == model_id, Job.kind == "forget_identity", Job.state == "succeeded",
                              Job.version.is_not(None), Job.version > low)
    if high is not None:
        query = query.where(Job.version <= high)
    jobs = session.scalars(query.order_by(Job.version, Job.created_at))
    return [ErasureOut(job_id=j.id, subject_ref=j.subject_ref, version=int(j.version or 0),
                       erased_at=j.finished_at) for j in jobs]


def version_views(session: Session, model_id: str, rows: list[ModelVersion]) -> list[VersionOut]:
    """The versions with the erasures each carries."""
    carried = erasures(session, model_id)
    return [VersionOut.of(v, [e for e in carried if e.version <= v.version]) for v in rows]
