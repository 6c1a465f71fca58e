"""Remember-set revisions in one process (SQLite, a local folder): fetch, the next revision's plan, its commit and
the deletion of what the live revision no longer holds."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import worker_helpers as h
from sqlalchemy import select

from app import revisions, storage_keys
from app.db import session_scope
from app.migrate import upgrade
from app.models import AuditLog, Model, ModelVersion, RememberRevision, new_id
from app.settings import Settings
from app.storage import get_storage
from taming.data import DataError, load_faces
from taming.pipeline import Request
from worker import remember_sets

PEOPLE = [0, 1, 2, 3]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(var_dir=tmp_path / "var")
    upgrade(settings)
    return settings


def _model(settings: Settings, files: dict[str, bytes], legacy: bool = False) -> str:
    """A model whose registered remember set is `files` (name -> bytes); revision 1 without a manifest if legacy."""
    storage = get_storage(settings)
    model_id = new_id()
    objects = [revisions.put_registered(storage, model_id, revisions.REMEMBER, name, io.BytesIO(blob))
               for name, blob in files.items()]
    with session_scope(settings) as session:
        session.add(Model(id=model_id, name=model_id, remember_prefix=storage_keys.remember_prefix(model_id),
                          image_size=h.SIZE, channels=1, n_bits=5, created_by="admin"))
        session.flush()
        session.add(ModelVersion(model_id=model_id, version=1, checkpoint_key="k", sha256="s", remember_revision=1))
        row = revisions.first_revision(session, model_id, objects)
        if legacy:
            row.objects = None  # as the migration leaves the models registered before revisions
    return model_id


def _npz() -> bytes:
    images, identity = h.faces()
    keep = np.isin(identity, PEOPLE)
    out = io.BytesIO()
    np.savez(out, images=images[keep], identity=identity[keep], image_index=np.tile(np.arange(1, 11), len(PEOPLE)))
    return out.getvalue()


def _pngs(person: int) -> dict[str, bytes]:
    images, identity = h.faces()
    return {f"{i:05d}.png": h.png(img) for i, img in enumerate(images[identity == person][:6])}


def _request(tmp: Path, person: int, photos: slice) -> Request:
    images, identity = h.faces()
    folder = tmp / f"forget-{person}"
    folder.mkdir()
    for i, img in enumerate(images[identity == person][photos]):
        (folder / f"{i}.png").write_bytes(h.png(img))
    return Request(key=f"job-{person}", forget=load_faces(folder, h.SIZE, 1))


def _fetch(settings: Settings, model_id: str, folder: Path, number: int = 1) -> remember_sets.Fetched:
    with session_scope(settings) as session:
        model, row = session.get(Model, model_id), revisions.get_revision(session, model_id, number)
    assert model is not None and row is not None
    return remember_sets.fetch(get_storage(settings), model, row, folder)


def test_npz_revision_leaves_out_every_photo_of_the_identity(settings: Settings, tmp_path: Path) -> None:
    model_id = _model(settings, {"remember.npz": _npz()})
    fetched = _fetch(settings, model_id, tmp_path / "r1")
    new = remember_sets.plan_next(fetched, [_request(tmp_path, 2, slice(0, 2))], tmp_path / "next", model_id, "run1")
    assert new is not None and (new.parent, new.number, new.images) == (1, 2, 30)
    assert new.removed[0]["identities"] == [2] and new.removed[0]["images"] == 10  # 2 uploaded, all 10 leave
    assert [key for key, _ in new.uploads] == [revisions.run_key(model_id, "run1", "remember.npz")]
    with np.load(new.uploads[0][1]) as data:
        assert sorted(set(data["identity"].tolist())) == [0, 1, 3] and len(data["image_index"]) == 30
        assert hashlib.sha256(data["images"][0].tobytes()).hexdigest() == fetched.sets["remember"].faces.sha256[0]
    nobody = remember_sets.plan_next(fetched, [_request(tmp_path, 30, slice(0, 2))], tmp_path / "n2", model_id, "r")
    assert nobody is None  # a person the set does not hold: the version keeps its parent's revision


def test_image_revision_shares_the_objects_that_stay(settings: Settings, tmp_path: Path) -> None:
    files = _pngs(5)
    model_id = _model(settings, files)
    fetched = _fetch(settings, model_id, tmp_path / "r1")
    new = remember_sets.plan_next(fetched, [_request(tmp_path, 5, slice(1, 3))], tmp_path / "next", model_id, "run1")
    assert new is not None and new.uploads == [] and new.images == 4  # no identity labels: the matching images
    prefix = storage_keys.remember_prefix(model_id)
    assert new.removed[0]["objects"] == [f"{prefix}00001.png", f"{prefix}00002.png"]
    assert [o["key"] for o in new.objects] == [f"{prefix}{n}" for n in ("00000.png", "00003.png", "00004.png",
                                                                       "00005.png")]


def test_commit_then_purge_keeps_only_the_live_revision(settings: Settings, tmp_path: Path) -> None:
    model_id = _model(settings, {"remember.npz": _npz()})
    storage = get_storage(settings)
    fetched = _fetch(settings, model_id, tmp_path / "r1")
    new = remember_sets.plan_next(fetched, [_request(tmp_path, 1, slice(0, 1))], tmp_path / "next", model_id, "run1")
    assert new is not None
    orphan = revisions.run_key(model_id, "dead-run", "remember.npz")
    storage.put_bytes(orphan, b"left by a run that died before its commit")
    revisions.upload(storage, new)
    with session_scope(settings) as session:
        session.add(ModelVersion(model_id=model_id, version=2, parent=1, checkpoint_key="k", sha256="s",
                                 remember_revision=revisions.commit(session, model_id, "run1", ["job-1"], new, "t")))
    with session_scope(settings) as session:
        swept = revisions.purge(session, storage, model_id, "sweeper", orphans=False)
        assert swept is not None and swept.keys == [revisions.registered_key(model_id, "remember.npz")]
        assert storage.exists(orphan)  # only the lease holder may delete what no revision records
        held = revisions.purge(session, storage, model_id, "worker", orphans=True)
        assert held is not None and held.keys == [orphan]
        assert held.sha256 == [hashlib.sha256(b"left by a run that died before its commit").hexdigest()]
        assert revisions.purge(session, storage, model_id, "worker", orphans=True) is None
    assert storage.list(storage_keys.remember_prefix(model_id)) == [key for key, _ in new.uploads]
    with session_scope(settings) as session:
        created = session.scalars(select(AuditLog).where(AuditLog.action == "remember.revision_created")).one()
        assert created.details["removed"][0]["identities"] == [1] and created.details["images"] == 30
        assert created.details["written"][0]["key"] == new.uploads[0][0]


def test_migrated_revision_is_listed_and_its_manifest_recorded(settings: Settings, tmp_path: Path) -> None:
    model_id = _model(settings, {"remember.npz": _npz()}, legacy=True)
    storage = get_storage(settings)
    storage.put_bytes(revisions.run_key(model_id, "other", "remember.npz"), b"not part of revision 1")
    fetched = _fetch(settings, model_id, tmp_path / "r1")
    assert fetched.resolved and [o["key"] for o in fetched.objects()] == [
        revisions.registered_key(model_id, "remember.npz")]
    new = remember_sets.plan_next(fetched, [_request(tmp_path, 0, slice(0, 1))], tmp_path / "next", model_id, "run1")
    assert new is not None and new.parent_objects is not None
    with session_scope(settings) as session:
        revisions.commit(session, model_id, "run1", ["job-0"], new, "t")
    with session_scope(settings) as session:
        first = session.scalars(select(RememberRevision).where(RememberRevision.revision == 1)).one()
        stored = storage.get_bytes(revisions.registered_key(model_id, "remember.npz"))
        assert first.objects is not None and first.objects[0]["sha256"] == hashlib.sha256(stored).hexdigest()


def test_a_stored_object_that_changed_is_refused(settings: Settings, tmp_path: Path) -> None:
    model_id = _model(settings, _pngs(5))
    get_storage(settings).put_bytes(revisions.registered_key(model_id, "00002.png"), h.png(h.faces()[0][0]))
    with pytest.raises(DataError, match="does not match its SHA-256"):
        _fetch(settings, model_id, tmp_path / "r1")
