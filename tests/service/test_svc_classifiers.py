"""Stored attribute classifiers: POST /v1/classifiers reads the by-person accuracy from the safetensors header, and
a rebalance job with an unusable classifier is refused with a 422 before anything runs."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from svc_api import Api
from svc_media import png

from app.db import session_scope
from app.models import AuditLog, Job


def classifier_file(accuracy: float, measured: bool = True) -> bytes:
    """A header-only taming-attribute/1 file with the figures `taming classifier train` writes."""
    meta: dict[str, str] = {"format": "taming-attribute/1", "members": "1", "in_channel": "1", "width": "16",
                            "recipe": json.dumps({"members": 1, "steps": 10})}
    if measured:
        record = {"accuracy": accuracy, "balanced_accuracy": accuracy, "sensitivity": accuracy,
                  "specificity": accuracy, "grouping": "person", "people": 40}
        meta.update(accuracy_json=json.dumps(record), accuracy=f"{accuracy:.6f}")
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": meta}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + struct.pack("<f", 1.0)


def _post(api: Api, blob: bytes, role: str = "operator") -> Any:
    return api.client.post("/v1/classifiers", headers=api.h(role), data={"name": "glasses"},
                           files=[("classifier", ("c.safetensors", blob, "application/octet-stream"))])


def _rebalance(api: Api, model_id: str, parameters: dict[str, Any], classifier: bytes | None = None) -> Any:
    files = [(side, (f"{side}{i}.png", png(32, seed=20 + i + 10 * (side == "negative")), "image/png"))
             for side in ("positive", "negative") for i in range(2)]
    if classifier is not None:
        files.append(("classifier", ("c.safetensors", classifier, "application/octet-stream")))
    return api.submit(model_id, kind="rebalance_attribute", files=files,
                      parameters={"target_share": 0.1, **parameters})


def test_store_and_read_a_classifier(api: Api) -> None:
    r = _post(api, classifier_file(0.88))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["accuracy"] == pytest.approx(0.88) and body["usable"] and body["details"]["accuracy"]["people"] == 40
    assert api.client.get(f"/v1/classifiers/{body['id']}", headers=api.h("auditor")).json()["id"] == body["id"]
    listed = api.client.get("/v1/classifiers", headers=api.h("auditor")).json()["items"]
    assert [c["id"] for c in listed] == [body["id"]]
    assert api.storage.exists(f"classifiers/{body['id']}.safetensors")
    with session_scope(api.settings) as session:
        assert session.query(AuditLog).filter_by(action="classifier.create").count() == 1
    assert _post(api, classifier_file(0.9), role="auditor").status_code == 403


@pytest.mark.parametrize("blob,code", [(classifier_file(0.55), "classifier_unusable"),
                                       (classifier_file(0.9, measured=False), "classifier_unmeasured"),
                                       (b"not a safetensors file", "invalid_classifier")])
def test_unusable_classifiers_are_refused(api: Api, blob: bytes, code: str) -> None:
    r = _post(api, blob)
    assert (r.status_code, r.json()["error"]["code"]) == (422, code)
    if code == "classifier_unusable":
        assert "55.0%" in r.json()["error"]["message"] and "75%" in r.json()["error"]["message"]
    assert api.storage.list("classifiers/") == []


def test_rebalance_job_with_a_random_label_classifier_is_refused_before_any_taming(api: Api) -> None:
    model = api.register_model()
    r = _rebalance(api, model["id"], {}, classifier=classifier_file(0.52))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "classifier_unusable")
    assert api.enqueued == [] and api.storage.list("uploads/") == []
    with session_scope(api.settings) as session:
        assert session.query(Job).count() == 0


def test_rebalance_job_with_a_stored_or_uploaded_classifier(api: Api) -> None:
    model = api.register_model()
    stored = _post(api, classifier_file(0.9)).json()
    r = _rebalance(api, model["id"], {"classifier_id": stored["id"], "strategy": "pull_positives",
                                      "direction": "increase"})
    assert r.status_code == 202, r.text
    uploaded = _rebalance(api, model["id"], {}, classifier=classifier_file(0.8))
    assert uploaded.status_code == 202, uploaded.text
    with session_scope(api.settings) as session:
        first, second = session.get(Job, r.json()["id"]), session.get(Job, uploaded.json()["id"])
        assert first.parameters["classifier_id"] == stored["id"] and first.parameters["strategy"] == "pull_positives"
        assert second.parameters["classifier_id"] not in (None, stored["id"])
    missing = _rebalance(api, model["id"], {"classifier_id": "f" * 32})
    assert missing.status_code == 404
    wrong_kind = api.submit(model["id"], parameters={"classifier_id": stored["id"]})
    assert wrong_kind.status_code == 422
