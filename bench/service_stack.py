"""An embedded service stack for benchmarks: SQLite, a local object folder, no broker (the worker's runner is
called directly), the shipped AT&T model registered with its remember set. Used by bench/coalesce.py and
bench/job_profile.py; not part of the service.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "data" / "att_faces.npz"
MODEL = ROOT / "models" / "att32"


@dataclass
class Stack:
    settings: Any
    storage: Any
    model_id: str
    images: np.ndarray  # the AT&T faces, [400, 112, 92]
    identity: np.ndarray
    index: np.ndarray  # 1-based image number within the person


def embedded_stack(features: bool = True) -> Stack:
    """A fresh stack in a temporary folder; with `features`, the feature network trained up front, as a service
    does on its first job for a model (cached once per model: not part of any erasure's cost)."""
    from app import revisions, storage_keys
    from app.db import session_scope
    from app.migrate import upgrade
    from app.models import Model, ModelVersion, new_id
    from app.settings import Settings
    from app.storage import get_storage
    from taming.checkpoint import file_sha256
    from taming.data import load_faces
    from taming.pipeline import features_for

    work = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    settings = Settings(var_dir=work / "var", device="cpu")
    upgrade(settings)
    storage = get_storage(settings)
    data = np.load(FACES)
    if features:
        features_for(load_faces(MODEL / "remember.npz", 32, 1), settings.var_dir / "cache")
    model_id = new_id()
    base = MODEL / "base.safetensors"
    storage.put_bytes(f"checkpoints/{model_id}/v1.safetensors", base.read_bytes())
    with open(MODEL / "remember.npz", "rb") as f:
        remember = revisions.put_registered(storage, model_id, revisions.REMEMBER, "remember.npz", f)
    with session_scope(settings) as s:
        s.add(Model(id=model_id, name="bench", current_version=1,
                    remember_prefix=storage_keys.remember_prefix(model_id),
                    image_size=32, channels=1, n_bits=5, created_by="bench"))
        s.flush()
        s.add(ModelVersion(model_id=model_id, version=1, parent=None, sha256=file_sha256(base), promoted=True,
                           checkpoint_key=f"checkpoints/{model_id}/v1.safetensors", remember_revision=1))
        revisions.first_revision(s, model_id, [remember])
    return Stack(settings, storage, model_id, data["images"], data["identity"], data["image_index"])


def submit(stack: Stack, person: int, photos: range, params: dict[str, Any], holdout: range = range(0)) -> str:
    """Queue a forget job for `person` with their photos numbered `photos` (and `holdout`), as the API would."""
    from app.db import session_scope
    from app.models import Job, new_id

    job_id = new_id()
    uploads = []
    for field, numbers in (("forget", photos), ("holdout", holdout)):
        chosen = (stack.identity == person) & np.isin(stack.index, list(numbers))
        for i, image in enumerate(stack.images[chosen]):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            key = f"uploads/{job_id}/{field}/{i:04d}.png"
            stack.storage.put_bytes(key, buf.getvalue())
            uploads.append({"field": field, "key": key, "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                            "name": f"{i}.png", "excluded_reason": None})
    with session_scope(stack.settings) as s:
        s.add(Job(id=job_id, kind="forget_identity", model_id=stack.model_id, subject_ref=f"p{person}",
                  parameters=params, submitted_by="bench", uploads=uploads, progress={}))
    return job_id
