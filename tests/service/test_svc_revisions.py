"""Remember-set revisions seen from the API: revision 1 at registration, the erasures each version carries,
the rollback guard, the sweeper's deletion of superseded objects, and the migration's backfill."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import select, text
from svc_api import Api
from svc_media import png

from app import migrate, revisions, storage_keys
from app.db import get_engine, session_scope
from app.models import AuditLog, Job, Model, ModelVersion, RememberRevision, utcnow
from app.settings import Settings
from app.sweeper import sweep_once


@pytest.fixture
def model(api: Api) -> dict[str, Any]:
    return api.register_model()


def _erasure(api: Api, model_id: str, version: int, subject: str, kind: str = "forget_identity") -> str:
    """A job that succeeded with `version` (as the worker leaves it), and that version's row when missing."""
    job_id = api.submit(model_id, subject_ref=subject).json()["id"]
    with session_scope(api.settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state, job.version, job.kind, job.finished_at = "succeeded", version, kind, utcnow()
        exists = session.scalars(select(ModelVersion).where(ModelVersion.model_id == model_id,
                                                            ModelVersion.version == version)).first()
        if exists is None:
            session.add(ModelVersion(model_id=model_id, version=version, parent=version - 1, job_id=job_id,
                                     sha256=f"{version}" * 64, checkpoint_key=f"checkpoints/x/v{version}",
                                     promoted=True, remember_revision=1))
        session.get(Model, model_id).current_version = version  # type: ignore[union-attr]
    return job_id


def test_registration_records_revision_1(api: Api, model: dict[str, Any]) -> None:
    with session_scope(api.settings) as session:
        row = revisions.get_revision(session, model["id"], 1)
        assert row is not None and row.parent is None
        objects = row.objects or []
    assert [o["sha256"] for o in objects] == [hashlib.sha256(png(16, seed=i)).hexdigest() for i in range(3)]
    assert {o["key"] for o in objects} == set(api.storage.list(storage_keys.remember_prefix(model["id"])))
    listed = api.client.get(f"/v1/models/{model['id']}/versions", headers=api.h("auditor")).json()["items"]
    assert [(v["version"], v["remember_revision"], v["erasures"]) for v in listed] == [(1, 1, [])]


def test_versions_list_the_erasures_they_carry(api: Api, model: dict[str, Any]) -> None:
    mid = model["id"]
    first = _erasure(api, mid, 2, "ticket-a")
    second = _erasure(api, mid, 2, "ticket-b")  # coalesced into the same run: the same version
    third = _erasure(api, mid, 3, "ticket-c")
    _erasure(api, mid, 4, "share-audit", kind="rebalance_attribute")  # not an erasure
    got = api.client.get(f"/v1/models/{mid}/versions/3", headers=api.h("operator")).json()
    assert [(e["job_id"], e["subject_ref"], e["version"]) for e in got["erasures"]] == [
        (first, "ticket-a", 2), (second, "ticket-b", 2), (third, "ticket-c", 3)]
    assert all(e["erased_at"] for e in got["erasures"])
    listed = api.client.get(f"/v1/models/{mid}/versions", headers=api.h("auditor")).json()["items"]
    assert [len(v["erasures"]) for v in listed] == [0, 2, 3, 3]

    url = f"/v1/models/{mid}/versions/1:promote"
    refused = api.client.post(url, headers=api.h("admin"), json={}).json()["error"]
    assert [d["job_id"] for d in refused["details"]] == [first, second, third]  # the coalesced one too
    assert "not restored" in refused["message"]
    assert api.client.post(url, headers=api.h("admin"), json={"force": True, "reason": "court order 12"}).is_success
    with session_scope(api.settings) as session:
        last = session.scalars(select(AuditLog).order_by(AuditLog.id.desc())).first()
        assert last is not None and last.action == "model.promote"
        assert last.details["photos_restored"] is False and last.details["remember_revision"] == 1
        assert len(last.details["erasures_undone"]) == 3


def test_sweeper_deletes_superseded_objects_and_audits_them(api: Api, model: dict[str, Any]) -> None:
    mid = model["id"]
    job_id = _erasure(api, mid, 2, "ticket-a")
    with session_scope(api.settings) as session:
        first = revisions.get_revision(session, mid, 1)
        assert first is not None and first.objects
        gone, kept = first.objects[0], first.objects[1:]
        new = revisions.NewRevision(parent=1, objects=kept, uploads=[], removed=[], images=len(kept))
        revisions.commit(session, mid, "run-1", [job_id], new, "test")
        session.execute(text("UPDATE model_versions SET remember_revision = 2 WHERE version = 2"))
    with session_scope(api.settings) as session:
        assert sweep_once(session, api.settings)["purged"] == [mid]
    assert api.storage.list(storage_keys.remember_prefix(mid)) == sorted(o["key"] for o in kept)
    with session_scope(api.settings) as session:
        row = session.scalars(select(AuditLog).where(AuditLog.action == "remember.objects_deleted")).one()
        assert (row.actor, row.details["keys"], row.details["sha256"]) == ("sweeper", [gone["key"]], [gone["sha256"]])
        assert (row.details["count"], row.details["revisions"], row.details["kept_revision"]) == (1, [1], 2)
        assert session.scalars(select(RememberRevision.purged_at).where(RememberRevision.revision == 1)).one()
        assert sweep_once(session, api.settings)["purged"] == []  # done once


def test_migration_gives_existing_models_revision_1(tmp_path: Any) -> None:
    settings = Settings(var_dir=tmp_path)
    migrate.upgrade(settings, "0016")
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(text("INSERT INTO models (id, name, current_version, require_promotion, remember_prefix, "
                          "image_size, channels, n_bits, created_at, created_by) VALUES ('m1', 'old', 2, false, "
                          "'remember/m1/', 16, 1, 5, '2025-01-01 00:00:00', 'admin')"))
        for version, parent in ((1, None), (2, 1)):
            conn.execute(text("INSERT INTO model_versions (model_id, version, parent, checkpoint_key, sha256, "
                              "created_at, promoted) VALUES ('m1', :v, :p, 'k', 's', '2025-01-01 00:00:00', true)"),
                         {"v": version, "p": parent})
    migrate.upgrade(settings)
    with session_scope(settings) as session:
        row = revisions.get_revision(session, "m1", 1)
        assert row is not None and row.objects is None  # listed under the prefix at first use
        assert revisions.live_number(session, "m1") == 1
        assert list(session.scalars(select(ModelVersion.remember_revision))) == [1, 1]
