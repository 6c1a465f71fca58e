"""Building blocks of the worker tests: a tiny model, faces, jobs inserted as the API would, waiting."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import select

FACES = Path(__file__).resolve().parents[2] / "data" / "att_faces.npz"  # shipped with the project
SIZE = 16


def faces() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(FACES)
    return data["images"], data["identity"]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def tiny_checkpoint(path: Path, remember_ids: list[int], train_steps: int = 30) -> str:
    """A tiny Glow fitted for a few steps to the remember people (16×16 grey); returns its SHA-256."""
    import torch

    from taming.checkpoint import save_checkpoint
    from taming.data import load_faces, quantize
    from taming.glow import Glow, GlowConfig
    from taming.train import TrainConfig, train

    torch.manual_seed(0)
    model = Glow(GlowConfig(in_channel=1, img_size=SIZE, n_flow=2, n_block=2, hidden=16))
    remember = load_faces(path.parent / "remember.npz", SIZE, 1)
    train(model, quantize(remember.images, model.config.n_bits),
          TrainConfig(steps=train_steps, batch_size=32, warmup=20, init_batch=128))
    return save_checkpoint(model, path, data_hash=remember.data_hash(), parent="")


def write_remember(folder: Path, remember_ids: list[int]) -> Path:
    images, identity = faces()
    mask = np.isin(identity, remember_ids)
    path = folder / "remember.npz"
    np.savez(path, images=images[mask], identity=identity[mask])
    return path


def add_model(settings: Any, files: dict[str, Any], name: str = "faces") -> str:
    """Register a model with version 1 the way `POST /v1/models` would."""
    from app import revisions, storage_keys
    from app.db import session_scope
    from app.models import Model, ModelVersion, new_id
    from app.storage import get_storage

    storage = get_storage(settings)
    model_id = new_id()
    with open(files["checkpoint"], "rb") as f:
        storage.put_file(f"checkpoints/{model_id}/v1.safetensors", f)
    with open(files["remember"], "rb") as f:
        remember = revisions.put_registered(storage, model_id, revisions.REMEMBER, "remember.npz", f)
    with session_scope(settings) as session:
        session.add(Model(id=model_id, name=name, current_version=1,
                          remember_prefix=storage_keys.remember_prefix(model_id),
                          image_size=SIZE, channels=1, n_bits=5, created_by="admin"))
        session.flush()
        session.add(ModelVersion(model_id=model_id, version=1, parent=None, job_id=None,
                                 checkpoint_key=f"checkpoints/{model_id}/v1.safetensors",
                                 sha256=files["sha256"], promoted=True, remember_revision=1))
        revisions.first_revision(session, model_id, [remember])
    return model_id


def submit(settings: Any, model_id: str, person: int, parameters: dict[str, Any], n_images: int = 4,
           enqueue: bool = True) -> str:
    """Insert a queued forget job with its uploads (as `POST /v1/jobs` does), then ring the doorbell."""
    import hashlib

    from app.db import session_scope
    from app.models import Job, new_id
    from app.queue import enqueue as ring
    from app.storage import get_storage

    images, identity = faces()
    chosen = images[identity == person][:n_images]
    storage = get_storage(settings)
    job_id = new_id()
    uploads = []
    for i, image in enumerate(chosen):
        blob = png(image)
        key = f"uploads/{job_id}/forget/{i:04d}.png"
        storage.put_bytes(key, blob)
        uploads.append({"field": "forget", "key": key, "sha256": hashlib.sha256(blob).hexdigest(),
                        "name": f"person{person}_{i}.png", "excluded_reason": None})
    with session_scope(settings) as session:
        session.add(Job(id=job_id, kind="forget_identity", state="queued", model_id=model_id,
                        subject_ref=f"ticket-{person}", parameters=parameters, submitted_by="operator1",
                        uploads=uploads, progress={}))
    if enqueue:
        ring(job_id)
    return job_id


def job(settings: Any, job_id: str) -> Any:
    from app.db import session_scope
    from app.models import Job

    with session_scope(settings) as session:
        return session.get(Job, job_id)


def versions(settings: Any, model_id: str) -> list[Any]:
    from app.db import session_scope
    from app.models import ModelVersion

    with session_scope(settings) as session:
        return list(session.scalars(select(ModelVersion).where(ModelVersion.model_id == model_id)
                                    .order_by(ModelVersion.version)))


def report(settings: Any, job_id: str) -> dict[str, Any]:
    from app.storage import get_storage

    return dict(json.loads(get_storage(settings).get_bytes(f"reports/{job_id}.json")))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2,
             on_wait: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if on_wait is not None:
            on_wait()
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_state(settings: Any, job_id: str, states: set[str], timeout: float, **kw: Any) -> Any:
    return wait_for(lambda: (j := job(settings, job_id)) is not None and j.state in states and j,
                    timeout, f"job {job_id} to reach {states}", **kw)


def photo_hashes(people: list[int]) -> dict[str, int]:
    """SHA-256 -> person, of every photo of these people: the pixels, and the PNG a job uploads."""
    import hashlib

    images, identity = faces()
    found = {}
    for person in people:
        for image in images[identity == person]:
            found[hashlib.sha256(image.tobytes()).hexdigest()] = person
            found[hashlib.sha256(png(image)).hexdigest()] = person
    return found


def photos_in_storage(settings: Any, people: list[int]) -> list[tuple[str, int]]:
    """(key, person) for every stored object that holds a photo of these people: by the object's own SHA-256,
    and inside .npz files and images by each image's pixels."""
    from app.storage import get_storage

    wanted = photo_hashes(people)
    storage = get_storage(settings)
    found = []
    for key in storage.list(""):
        try:
            data = storage.get_bytes(key)
        except KeyError:  # deleted since the listing (a run's saved state, say)
            continue
        for digest in _digests(key, data):
            if digest in wanted:
                found.append((key, wanted[digest]))
    return found


def _digests(key: str, data: bytes) -> list[str]:
    import hashlib

    digests = [hashlib.sha256(data).hexdigest()]
    if key.endswith(".npz"):
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if "images" in npz.files:
                digests += [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in npz["images"]]
    elif key.rsplit(".", 1)[-1].lower() in ("png", "jpg", "jpeg", "pgm"):
        with Image.open(io.BytesIO(data)) as img:
            digests.append(hashlib.sha256(np.asarray(img).tobytes()).hexdigest())
    return digests


def revisions_of(settings: Any, model_id: str) -> list[Any]:
    from app.db import session_scope
    from app.models import RememberRevision

    with session_scope(settings) as session:
        return list(session.scalars(select(RememberRevision).where(RememberRevision.model_id == model_id)
                                    .order_by(RememberRevision.revision)))


def audit_rows(settings: Any, action: str) -> list[Any]:
    from app.db import session_scope
    from app.models import AuditLog

    with session_scope(settings) as session:
        return list(session.scalars(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))
