"""Erasure after erasure through real worker processes (PostgreSQL + Redis + S3, the real library on a tiny
model): every later run leaves out everyone forgotten before, no stored object keeps their photos, and a
worker killed while writing a remember-set revision loses nothing.
"""

from __future__ import annotations

from typing import Any

import worker_helpers as h

from app import lineage, registry, storage_keys
from app.db import session_scope
from app.storage import get_storage
from app.sweeper import sweep_once
from taming.checkpoint import file_sha256

QUICK = {"max_iterations": 80, "delta": 1.0, "epsilon": 0.5, "lr": 3e-3, "forget_loss": "scale_free"}
PEOPLE = (3, 7, 11)  # of the tiny model's people 0-19, 10 photos each in its remember set
PER_PERSON = 10


def _sweep(settings: Any) -> None:
    with session_scope(settings) as session:
        sweep_once(session, settings)


def _run_keys(settings: Any, model_id: str) -> list[str]:
    return [k for k in get_storage(settings).list(storage_keys.remember_prefix(model_id)) if "/runs/" in k]


def _erase(settings: Any, model_id: str, person: int) -> tuple[Any, dict[str, Any]]:
    job_id = h.submit(settings, model_id, person, QUICK)
    job = h.wait_state(settings, job_id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert job.state == "succeeded", job.error
    return job, h.report(settings, job_id)


def test_erasures_in_a_row_exclude_everyone_forgotten_before(distributed: Any, model_files: dict[str, Any],
                                                             workers: Any) -> None:
    settings = distributed
    model_id = h.add_model(settings, model_files)
    first = h.revisions_of(settings, model_id)[0].objects[0]
    workers.start(settings)
    for k, person in enumerate(PEOPLE, start=1):
        job, report = _erase(settings, model_id, person)
        forgotten = list(PEOPLE[:k])
        # this run's D_R: the revision of the version it started from, without this person
        assert (report["model"]["remember_revision_parent"], report["model"]["remember_revision"]) == (k, k + 1)
        assert report["model"]["remember_images"] == 20 * PER_PERSON - k * PER_PERSON
        assert not set(report["metrics"].get("nearest_identities", [])) & set(forgotten)
        assert [(v.version, v.remember_revision) for v in h.versions(settings, model_id)][-1] == (k + 1, k + 1)
        revs = h.revisions_of(settings, model_id)
        assert [(r.revision, r.parent) for r in revs][-1] == (k + 1, k)
        assert revs[-1].removed[0]["identities"] == [person] and revs[-1].removed[0]["images"] == PER_PERSON
        assert revs[-1].job_ids == [job.id]
        # the superseded revision's objects go right after the commit: no object holds anyone forgotten
        h.wait_for(lambda f=forgotten: not h.photos_in_storage(settings, f), 30, "the forgotten photos to go")
        assert all(r.purged_at is not None for r in h.revisions_of(settings, model_id)[:-1])
        assert h.photos_in_storage(settings, [0, 19])  # the scan finds the people who stay
    deleted = h.audit_rows(settings, "remember.objects_deleted")
    assert [d.details["revisions"] for d in deleted] == [[1], [2], [3]]
    assert deleted[0].details["keys"] == [first["key"]] and deleted[0].details["sha256"] == [first["sha256"]]
    assert all(d.details["count"] == 1 for d in deleted)
    with session_scope(settings) as session:
        views = lineage.version_views(session, model_id, registry.versions(session, model_id))
    assert [[e.subject_ref for e in v.erasures] for v in views] == [
        [], ["ticket-3"], ["ticket-3", "ticket-7"], ["ticket-3", "ticket-7", "ticket-11"]]


def test_kill9_while_writing_a_revision_loses_nothing(distributed: Any, model_files: dict[str, Any],
                                                      workers: Any) -> None:
    settings = distributed
    model_id = h.add_model(settings, model_files)
    crashing = workers.start(settings, crash_at="uploaded")
    job_id = h.submit(settings, model_id, 3, QUICK)
    h.wait_for(lambda: crashing.poll() is not None, 300, "the worker to die after uploading the revision")
    written = _run_keys(settings, model_id)
    assert len(written) == 1  # the new revision's object was uploaded ...
    assert [v.version for v in h.versions(settings, model_id)] == [1]  # ... and neither it nor the version
    assert [r.revision for r in h.revisions_of(settings, model_id)] == [1]  # was recorded
    assert h.job(settings, job_id).state == "running"

    workers.start(settings)
    job = h.wait_state(settings, job_id, {"succeeded", "failed"}, timeout=300, every=1.0,
                       on_wait=lambda: _sweep(settings))
    assert job.state == "succeeded" and job.attempts == 2, job.error
    assert [(v.version, v.remember_revision) for v in h.versions(settings, model_id)] == [(1, 1), (2, 2)]
    revs = h.revisions_of(settings, model_id)
    assert [r.revision for r in revs] == [1, 2]
    assert [o["key"] for o in revs[1].objects] == written  # the resumed run wrote its own key again
    local = settings.var_dir / "r2.npz"
    get_storage(settings).download(written[0], local)
    assert file_sha256(local) == revs[1].objects[0]["sha256"]
    h.wait_for(lambda: get_storage(settings).list(storage_keys.remember_prefix(model_id)) == written, 30,
               "the superseded revision to be deleted")
    assert h.photos_in_storage(settings, [3]) == []


def test_kill9_after_the_commit_the_sweeper_deletes_what_is_left(distributed: Any, model_files: dict[str, Any],
                                                                 workers: Any) -> None:
    settings = distributed
    model_id = h.add_model(settings, model_files)
    crashing = workers.start(settings, crash_at="committed")
    job_id = h.submit(settings, model_id, 3, QUICK)
    h.wait_for(lambda: crashing.poll() is not None, 300, "the worker to die after its commit")
    assert h.job(settings, job_id).state == "succeeded"
    assert [(v.version, v.remember_revision) for v in h.versions(settings, model_id)] == [(1, 1), (2, 2)]
    assert h.photos_in_storage(settings, [3])  # revision 1 is still stored: the kill came before the deletion
    # the sweeper leaves the model alone while the dead worker's lease lasts, then deletes revision 1
    h.wait_for(lambda: (_sweep(settings), not h.photos_in_storage(settings, [3]))[1], 60,
               "the sweeper to delete the superseded revision", every=1.0)
    deleted = h.audit_rows(settings, "remember.objects_deleted")
    assert [(d.actor, d.details["revisions"], d.details["count"]) for d in deleted] == [("sweeper", [1], 1)]
    assert h.revisions_of(settings, model_id)[0].purged_at is not None
