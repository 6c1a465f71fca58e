"""Revisions of a model's reference remember set, and the storage keys of every remember-set object.

The reference remember set is versioned with the model. Revision 1 is the set as registered; a job that
forgets people writes the next revision without every image of their identities, and the version it makes
records that revision (`ModelVersion.remember_revision`) in the same transaction. Every job starts from the
newest version and reads that version's revision, so everyone forgotten before stays out of every later D_R
by construction.

The deletion rule (README, "Erasure after erasure"): a model's remember folder holds the *live* revision
only, the newest version's. Serving a version needs its checkpoint alone, and no job can start from an older
version, so no version that may still be served needs an older revision: the objects that the live revision
does not share are deleted as soon as the version that leaves the person out is committed (by the worker
right after its commit; by the sweeper if the worker died in between). A forced rollback to a version
before an erasure serves that version's checkpoint, which re-exposes the person's likelihood (hence the
guard in app/registry.py), but restores no photo: the next job still starts from the newest version and its
revision.

Objects live under `remember/{model_id}/`: registered ones directly (`remember/{model_id}/{name}`), those a
run writes under `remember/{model_id}/runs/{run_id}/` (a retried run overwrites its own keys, and no two
runs share one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import audit, storage_keys, uploads
from app.models import Model, ModelVersion, RememberRevision, utcnow
from app.storage import Storage

REMEMBER = "remember"  # the reference remember set; a model may carry more named sets beside it
REMEMBER_HOLDOUT = "remember_holdout"  # held-out photos of the remembered people (optional)


def registered_key(model_id: str, name: str) -> str:
    return f"{storage_keys.remember_prefix(model_id)}{name}"


def run_key(model_id: str, run_id: str, name: str) -> str:
    return f"{storage_keys.remember_prefix(model_id)}runs/{run_id}/{name}"


def entry(set_name: str, key: str, sha256: str | None, size: int | None) -> dict[str, Any]:
    """One object of a revision's manifest."""
    return {"set": set_name, "key": key, "sha256": sha256, "bytes": size}


def put_registered(storage: Storage, model_id: str, set_name: str, name: str, fileobj: BinaryIO) -> dict[str, Any]:
    """Store one object of a model's registered set; returns its manifest entry."""
    sha, size = uploads.sha256_of(fileobj), uploads.file_size(fileobj)
    key = registered_key(model_id, name)
    storage.put_file(key, fileobj)
    return entry(set_name, key, sha, size)


def first_revision(session: Session, model_id: str, objects: list[dict[str, Any]]) -> RememberRevision:
    """Revision 1: the set as registered (the caller commits, with version 1)."""
    row = RememberRevision(model_id=model_id, revision=1, parent=None, job_ids=[], objects=objects, removed=[])
    session.add(row)
    return row


def get_revision(session: Session, model_id: str, revision: int | None) -> RememberRevision | None:
    if revision is None:
        return None
    return session.scalars(select(RememberRevision).where(RememberRevision.model_id == model_id,
                                                          RememberRevision.revision == revision)).first()


def live_number(session: Session, model_id: str) -> int | None:
    """The newest version's revision (numbers only grow along the chain, so the largest one recorded)."""
    number = session.scalar(select(func.max(ModelVersion.remember_revision)).where(ModelVersion.model_id == model_id))
    return int(number) if number is not None else None


def live_keys(session: Session, storage: Storage, model: Model, set_name: str = REMEMBER) -> list[str]:
    """Storage keys of one set of the live revision (what the next job reads; the yardstick of /v1/verify)."""
    row = get_revision(session, model.id, live_number(session, model.id))
    if row is None:
        return []
    return [o["key"] for o in resolve_objects(storage, model, row) if o["set"] == set_name]


def resolve_objects(storage: Storage, model: Model, row: RememberRevision) -> list[dict[str, Any]]:
    """The revision's manifest; for a revision the migration made, the objects directly under the prefix."""
    if row.objects is not None:
        return list(row.objects)
    prefix = model.remember_prefix.rstrip("/") + "/"
    flat = [k for k in storage.list(prefix) if "/" not in k[len(prefix):]]
    return [entry(REMEMBER, key, None, None) for key in flat]


@dataclass
class NewRevision:
    """What a run writes: the next revision's manifest, the files to upload first, and what it leaves out."""

    parent: int
    objects: list[dict[str, Any]]
    uploads: list[tuple[str, Path]]  # (key, local file), uploaded before the commit
    removed: list[dict[str, Any]]  # per set: {"set", "images", "identities", "sha256", "objects"}
    images: int
    parent_objects: list[dict[str, Any]] | None = None  # the parent's manifest, when it had none recorded
    number: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.number = self.parent + 1  # revisions form one chain, like the versions that carry them


def upload(storage: Storage, new: NewRevision) -> None:
    """Store the new revision's own objects (before the transaction that records it)."""
    for key, path in new.uploads:
        with open(path, "rb") as f:
            storage.put_file(key, f)


def ensure_uploaded(storage: Storage, new: NewRevision) -> None:
    """After the commit: put back any object of the new revision that a concurrent purge removed."""
    missing = [(key, path) for key, path in new.uploads if not storage.exists(key)]
    for key, path in missing:
        with open(path, "rb") as f:
            storage.put_file(key, f)


def commit(session: Session, model_id: str, run_id: str, job_ids: list[str], new: NewRevision,
           actor: str) -> int:
    """Record the new revision in the caller's transaction (the one that adds its version)."""
    parent = get_revision(session, model_id, new.parent)
    if parent is not None and parent.objects is None and new.parent_objects is not None:
        parent.objects = new.parent_objects  # so that its deletion can be audited key by key
    session.add(RememberRevision(model_id=model_id, revision=new.number, parent=new.parent, run_id=run_id,
                                 job_ids=job_ids, objects=new.objects, images=new.images, removed=new.removed))
    audit.record(session, actor, "remember.revision_created", f"model:{model_id}",
                 {"revision": new.number, "parent": new.parent, "jobs": job_ids, "images": new.images,
                  "removed": new.removed, "written": [o for o in new.objects if o["key"].startswith(
                      run_key(model_id, run_id, ""))]})
    return new.number


@dataclass
class Purged:
    """What one purge deleted (also in its `remember.objects_deleted` audit row)."""

    keys: list[str]
    sha256: list[str | None]
    revisions: list[int]  # the superseded revisions whose objects went
    kept_revision: int


def pending_purges(session: Session) -> list[str]:
    """Models with a superseded revision whose objects have not been deleted yet."""
    live = (select(ModelVersion.model_id, func.max(ModelVersion.remember_revision).label("live"))
            .group_by(ModelVersion.model_id).subquery())
    rows = session.scalars(
        select(RememberRevision.model_id).join(live, live.c.model_id == RememberRevision.model_id)
        .where(RememberRevision.purged_at.is_(None), RememberRevision.revision < live.c.live).distinct()
    )
    return list(rows)


def purge(session: Session, storage: Storage, model_id: str, actor: str, *, orphans: bool) -> Purged | None:
    """Delete every remember object of the model that the live revision does not hold; audit it (caller commits).

    orphans: also delete objects no revision records (left by a run that died between its upload and its
    commit). Only the lease holder may ask for that: a running job's new objects are recorded only at its commit.
    """
    model = session.get(Model, model_id)
    live_n = live_number(session, model_id)
    live = get_revision(session, model_id, live_n)
    if model is None or live is None:
        return None
    keep = {o["key"] for o in resolve_objects(storage, model, live)}
    stale = list(session.scalars(select(RememberRevision).where(
        RememberRevision.model_id == model_id, RememberRevision.revision < live.revision,
        RememberRevision.purged_at.is_(None))))
    doomed: dict[str, str | None] = {}
    for row in stale:
        for o in resolve_objects(storage, model, row):
            if o["key"] not in keep:
                doomed[o["key"]] = o.get("sha256")
    if orphans:
        for key in storage.list(storage_keys.remember_prefix(model_id)):
            if key not in keep and key not in doomed:
                doomed[key] = _sha_of(storage, key)
    if not doomed and not stale:
        return None
    for key in sorted(doomed):
        storage.delete(key)
    now = utcnow()
    for row in stale:
        row.purged_at = now
    done = Purged(sorted(doomed), [doomed[k] for k in sorted(doomed)], [r.revision for r in stale], live.revision)
    audit.record(session, actor, "remember.objects_deleted", f"model:{model_id}",
                 {"count": len(done.keys), "keys": done.keys, "sha256": done.sha256, "revisions": done.revisions,
                  "kept_revision": done.kept_revision, "kept_objects": len(keep)})
    return done


def _sha_of(storage: Storage, key: str) -> str | None:
    """SHA-256 of a stored object, streamed through a temporary file (None when it vanished meanwhile)."""
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="taming-purge-") as tmp:
        try:
            storage.download(key, tmp.name)
        except KeyError:
            return None
        with open(tmp.name, "rb") as f:
            return uploads.sha256_of(f)
