"""A model and forget jobs put straight into the database and storage, as `POST /v1/models` and `POST /v1/jobs`
leave them (no HTTP in front), for the benchmarks that time the worker alone (bench/throughput.py,
bench/gpu_job.py). Not part of the service.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from app.db import session_scope
from app.models import Job, Model, ModelVersion, new_id
from app.settings import Settings
from app.storage import get_storage
from taming.checkpoint import file_sha256, read_metadata


def register_model(settings: Settings, checkpoint: Path, remember_npz: Path, name: str) -> str:
    """A model with version 1 (the checkpoint) and its reference remember set; returns its id."""
    config = json.loads(read_metadata(checkpoint)["config"])
    storage = get_storage(settings)
    model_id = new_id()
    with open(checkpoint, "rb") as f:
        storage.put_file(f"checkpoints/{model_id}/v1.safetensors", f)
    with open(remember_npz, "rb") as f:
        storage.put_file(f"remember/{model_id}/remember.npz", f)
    with session_scope(settings) as session:
        session.add(Model(id=model_id, name=name, current_version=1, remember_prefix=f"remember/{model_id}/",
                          image_size=config["img_size"], channels=config["in_channel"], n_bits=config["n_bits"],
                          created_by="bench"))
        session.flush()
        session.add(ModelVersion(model_id=model_id, version=1, parent=None, job_id=None,
                                 checkpoint_key=f"checkpoints/{model_id}/v1.safetensors",
                                 sha256=file_sha256(checkpoint), promoted=True))
    return model_id


def submit_forget(settings: Settings, model_id: str, images: dict[str, list[bytes]], parameters: dict[str, Any],
                  subject_ref: str) -> str:
    """A queued forget_identity job; images: field ("forget", "holdout") -> encoded image files."""
    storage = get_storage(settings)
    job_id = new_id()
    uploads = []
    for field, blobs in images.items():
        for i, blob in enumerate(blobs):
            key = f"uploads/{job_id}/{field}/{i:04d}.png"
            storage.put_bytes(key, blob)
            uploads.append({"field": field, "key": key, "sha256": hashlib.sha256(blob).hexdigest(),
                            "name": f"{field}_{i}.png", "excluded_reason": None})
    with session_scope(settings) as session:
        session.add(Job(id=job_id, kind="forget_identity", state="queued", model_id=model_id,
                        subject_ref=subject_ref, parameters=parameters, submitted_by="bench", uploads=uploads,
                        progress={}))
    return job_id


def job_row(settings: Settings, job_id: str) -> Job:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def wait_done(settings: Settings, job_ids: list[str], timeout: float) -> list[Job]:
    """The jobs' rows once every one of them has ended (or raise after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [job_row(settings, j) for j in job_ids]
        if all(j.state in ("succeeded", "failed", "cancelled") for j in jobs):
            return jobs
        time.sleep(0.5)
    raise TimeoutError(f"jobs still running after {timeout:.0f} s")


def report(settings: Settings, job_id: str) -> dict[str, Any]:
    return dict(json.loads(get_storage(settings).get_bytes(f"reports/{job_id}.json")))
