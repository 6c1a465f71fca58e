"""The worker's side of remember-set revisions: fetch the revision a run starts from, and plan the next one.

app/revisions.py records revisions and deletes superseded objects; this module reads the images, which the
API process never does. The next revision leaves out exactly the rows `taming.pipeline.forgotten_rows`
names, the rule the library applies to D_R, so the run's D_R is the new revision's remember set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import revisions
from app.models import Model, RememberRevision
from app.storage import Storage
from taming import pipeline
from taming.checkpoint import file_sha256
from taming.data import DataError, FaceSet, load_faces


@dataclass
class FetchedSet:
    """One named set of a revision, loaded, with the manifest entry behind each row."""

    name: str
    faces: FaceSet
    objects: list[dict[str, Any]]  # its manifest entries, SHA-256s checked (or filled in)
    npz: Path | None  # the local .npz when the set is one object
    rows: list[int] = field(default_factory=list)  # image sets: the entry holding each row

    def entries_of(self, rows: np.ndarray) -> list[int]:
        return sorted({self.rows[i] for i in np.flatnonzero(rows)}) if self.npz is None else [0]


@dataclass
class Fetched:
    revision: int
    sets: dict[str, FetchedSet]
    resolved: bool  # the manifest came from listing the prefix (a revision the migration made)

    def objects(self) -> list[dict[str, Any]]:
        return [o for s in self.sets.values() for o in s.objects]


def fetch(storage: Storage, model: Model, row: RememberRevision, folder: Path) -> Fetched:
    """Download a revision's objects into `folder`, check their SHA-256s and load each set."""
    manifest = revisions.resolve_objects(storage, model, row)
    names = list(dict.fromkeys(o["set"] for o in manifest))
    if revisions.REMEMBER not in names:
        raise DataError(f"remember-set revision {row.revision} holds no remember images")
    sets = {}
    for name in names:
        entries = [o for o in manifest if o["set"] == name]
        sets[name] = _fetch_set(storage, model, row.revision, name, entries, folder / name)
    return Fetched(row.revision, sets, row.objects is None)


def _fetch_set(storage: Storage, model: Model, revision: int, name: str, entries: list[dict[str, Any]],
               folder: Path) -> FetchedSet:
    folder.mkdir(parents=True, exist_ok=True)
    checked, paths = [], []
    for j, item in enumerate(entries):
        path = folder / f"{j:06d}{Path(item['key']).suffix.lower()}"
        storage.download(item["key"], path)
        sha = file_sha256(path)
        if item.get("sha256") and item["sha256"] != sha:
            raise DataError(f"object {j} of the stored remember set (revision {revision}) does not match its SHA-256")
        checked.append({**item, "sha256": sha, "bytes": path.stat().st_size})
        paths.append(path)
    if len(paths) == 1 and paths[0].suffix == ".npz":
        return FetchedSet(name, load_faces(paths[0], model.image_size, model.channels), checked, paths[0])
    if any(p.suffix == ".npz" for p in paths):
        raise DataError(f"the remember set of revision {revision} mixes an .npz with other files")
    faces = load_faces(folder, model.image_size, model.channels)
    return FetchedSet(name, faces, checked, None, [int(Path(n).stem) for n in faces.names])


def plan_next(fetched: Fetched, requests: list[pipeline.Request], folder: Path, model_id: str,
              run_id: str) -> revisions.NewRevision | None:
    """The revision without everyone the requests forget (files written to `folder`); None when nobody leaves."""
    objects: list[dict[str, Any]] = []
    uploads: list[tuple[str, Path]] = []
    removed: list[dict[str, Any]] = []
    images = 0
    for name, part in fetched.sets.items():
        drop = pipeline.forgotten_rows(part.faces, requests)
        if name == revisions.REMEMBER:
            images = int((~drop).sum())
        if not drop.any():
            objects += part.objects
            continue
        gone = part.entries_of(drop)  # the manifest entries holding the rows that leave
        removed.append({"set": name, "images": int(drop.sum()),
                        "identities": sorted(set(part.faces.identity[drop].tolist()) - {-1}),
                        "sha256": [part.faces.sha256[i] for i in np.flatnonzero(drop)],
                        "objects": [part.objects[j]["key"] for j in gone]})
        if part.npz is not None:
            path = folder / f"{name}.npz"
            _write_npz(part.npz, ~drop, path)
            key = revisions.run_key(model_id, run_id, f"{name}.npz")
            objects.append(revisions.entry(name, key, file_sha256(path), path.stat().st_size))
            uploads.append((key, path))
        else:
            objects += [o for j, o in enumerate(part.objects) if j not in gone]
    if not removed:
        return None
    return revisions.NewRevision(parent=fetched.revision, objects=objects, uploads=uploads, removed=removed,
                                 images=images, parent_objects=fetched.objects() if fetched.resolved else None)


def _write_npz(source: Path, keep: np.ndarray, target: Path) -> None:
    """The .npz with only the kept rows of every per-image array (the others as they were)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with np.load(source, allow_pickle=False) as data:
        n = len(data["images"])
        arrays = {k: (data[k][keep] if data[k].shape[:1] == (n,) else data[k]) for k in data.files}
    np.savez_compressed(target, **arrays)
