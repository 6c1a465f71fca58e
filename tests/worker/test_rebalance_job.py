"""A rebalance_attribute job through a real worker in distributed mode (PostgreSQL, Redis, S3): a stored classifier,
a new version, a report with the share's figure and intervals, and the audit record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import worker_helpers as h
from sqlalchemy import select

from app.db import session_scope
from app.models import AuditLog, Classifier, Job, new_id
from app.queue import enqueue as ring
from app.storage import get_storage

pytestmark = pytest.mark.integration


def _with_band(images: np.ndarray) -> np.ndarray:
    """A synthetic attribute any person can carry: a dark bar across the eyes."""
    out = images.copy()
    out[:, 38:50, 10:82] = 10
    return out


def _classifier(settings: Any, tmp: Path) -> str:
    """Train and store a classifier of the bar (measured by person, as `taming classifier train` does)."""
    from taming.attribute import Recipe, fit_classifier, save_classifier
    from taming.data import FaceSet

    images, identity = h.faces()
    keep = identity < 20

    def faces(x: np.ndarray) -> FaceSet:
        import torch
        from PIL import Image

        from taming.data import to_square

        arr = np.stack([to_square(Image.fromarray(a), 32, 1) for a in x])
        return FaceSet(torch.from_numpy(arr), identity[keep], [f"x[{i}]" for i in range(len(arr))],
                       [str(i) for i in range(len(arr))])

    model = fit_classifier(faces(_with_band(images[keep])), faces(images[keep]), Recipe(members=1, steps=80, folds=2))
    path = tmp / "c.safetensors"
    save_classifier(model, path)
    assert model.accuracy is not None and model.usable(), model.accuracy
    row_id = new_id()
    get_storage(settings).put_bytes(f"classifiers/{row_id}.safetensors", path.read_bytes())
    with session_scope(settings) as session:
        session.add(Classifier(id=row_id, name="bar", storage_key=f"classifiers/{row_id}.safetensors",
                               sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                               accuracy=model.accuracy.accuracy, sensitivity=model.accuracy.sensitivity,
                               specificity=model.accuracy.specificity, details={}, created_by="operator1"))
    return row_id


def _submit(settings: Any, model_id: str, classifier_id: str) -> str:
    images, identity = h.faces()
    storage, job_id, uploads = get_storage(settings), new_id(), []
    sides = {"positive": _with_band(images[identity == 21][:4]), "negative": images[identity == 22][:4]}
    for side, batch in sides.items():
        for i, image in enumerate(batch):
            blob, key = h.png(image), f"uploads/{job_id}/{side}/{i:04d}.png"
            storage.put_bytes(key, blob)
            uploads.append({"field": side, "key": key, "sha256": hashlib.sha256(blob).hexdigest(),
                            "name": f"{side}{i}.png", "excluded_reason": None})
    parameters = {"target_share": 0.0, "direction": "decrease", "classifier_id": classifier_id, "method": "paper",
                  "max_iterations": 20, "lr": 1e-3}
    with session_scope(settings) as session:
        session.add(Job(id=job_id, kind="rebalance_attribute", state="queued", model_id=model_id,
                        subject_ref="share-audit", parameters=parameters, submitted_by="operator1", uploads=uploads,
                        progress={}))
    ring(job_id)
    return job_id


@pytest.mark.slow
def test_rebalance_job_gives_a_version_a_report_and_an_audit_record(distributed: Any, model_files: dict[str, Any],
                                                                     workers: Any, tmp_path: Path) -> None:
    settings = distributed
    model_id = h.add_model(settings, model_files)
    classifier_id = _classifier(settings, tmp_path)
    workers.start(settings)
    job_id = _submit(settings, model_id, classifier_id)
    job = h.wait_state(settings, job_id, {"succeeded", "failed", "cancelled"}, timeout=600)
    assert job.state == "succeeded", job.error
    assert job.version == 2
    report = h.report(settings, job_id)
    share = report["metrics"]["attribute_share"]
    assert share["target"] == 0.0 and share["reached"] and share["samples"] == 1000
    assert share["after_interval"][0] <= share["after"] <= share["after_interval"][1]
    html = get_storage(settings).get_bytes(f"reports/{job_id}.html").decode()
    assert "Corrected share" in html or "attribute share" in html.lower()
    with session_scope(settings) as session:
        actions = [a.action for a in session.scalars(select(AuditLog).where(AuditLog.subject == job_id))]
    assert "job.succeeded" in actions and json.dumps(report)
