"""Stored attribute classifiers: the safetensors `taming classifier train` writes, with the by-person accuracy its
header records. The header is read with json (8-byte little-endian length, then JSON): the API never loads torch.

A classifier whose by-person accuracy is below MIN_ACCURACY is refused with a 422, here and in a rebalance job,
before any taming: the share it would steer by means little.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from fastapi import UploadFile
from sqlalchemy.orm import Session

from app import audit, storage_keys
from app.errors import ApiError, not_found
from app.models import ApiKey, Classifier, new_id
from app.storage import Storage
from app.uploads import file_size, sha256_of

FORMAT = "taming-attribute/1"  # taming/attribute.py FORMAT
MIN_ACCURACY = 0.75  # taming/attribute.py MIN_ACCURACY
MAX_HEADER = 1 << 20


def read_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's header; ApiError 422 when it is not a readable one."""
    if len(data) < 8:
        raise ApiError(422, "invalid_classifier", "the classifier is not a safetensors file (too short)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_HEADER or len(data) < 8 + size:
        raise ApiError(422, "invalid_classifier", "the classifier is not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(422, "invalid_classifier", "the classifier's safetensors header is not JSON") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def figures(meta: dict[str, str]) -> dict[str, Any]:
    """The measured figures of a classifier header; 422 when it is no attribute classifier or was never measured."""
    if meta.get("format") != FORMAT:
        raise ApiError(422, "invalid_classifier", "not an attribute classifier written by `taming classifier train`")
    try:
        record = json.loads(meta["accuracy_json"])
        return {"accuracy": float(record["accuracy"]), "sensitivity": float(record["sensitivity"]),
                "specificity": float(record["specificity"]), "record": record,
                "recipe": json.loads(meta.get("recipe", "{}"))}
    except (KeyError, ValueError, TypeError):
        raise ApiError(422, "classifier_unmeasured", "the classifier carries no by-person accuracy; train it with "
                       "`taming classifier train`, which measures it by grouped cross-validation") from None


def require_usable(accuracy: float, grouping: str | None = None) -> None:
    """422 when the by-person accuracy is below MIN_ACCURACY."""
    if accuracy < MIN_ACCURACY:
        raise ApiError(422, "classifier_unusable",
                       f"the classifier's by-person accuracy is {accuracy:.1%}, below the {MIN_ACCURACY:.0%} a share "
                       "needs: it cannot tell the classes apart on unseen people",
                       {"accuracy": accuracy, "minimum": MIN_ACCURACY, "grouping": grouping})


def store(session: Session, storage: Storage, key: ApiKey, name: str, upload: UploadFile, max_bytes: int,
          commit: bool = True) -> Classifier:
    """Check and keep an uploaded classifier, audited; `commit=False` leaves the commit to the caller."""
    size = file_size(upload.file)
    if size > max_bytes:
        raise ApiError(413, "file_too_large", f"the classifier is {size} bytes; at most {max_bytes}")
    data = upload.file.read()
    measured = figures(read_metadata(data))
    require_usable(measured["accuracy"], measured["record"].get("grouping"))
    row = Classifier(id=new_id(), name=name, sha256=sha256_of(upload.file), accuracy=measured["accuracy"],
                     sensitivity=measured["sensitivity"], specificity=measured["specificity"],
                     details={"accuracy": measured["record"], "recipe": measured["recipe"]}, created_by=key.id)
    row.storage_key = storage_keys.classifier(row.id)
    storage.put_bytes(row.storage_key, data)
    session.add(row)
    session.flush()
    audit.record(session, key.id, "classifier.create", f"classifier:{row.id}",
                 {"name": name, "sha256": row.sha256, "accuracy": row.accuracy})
    if commit:
        session.commit()
    return row


def for_job(session: Session, storage: Storage, key: ApiKey, classifier_id: str | None, upload: UploadFile | None,
            subject_ref: str, max_bytes: int) -> str | None:
    """The classifier a rebalance job will use: the uploaded one (stored now) or the stored one named; each refused
    with a 422 when unusable. None: the job trains and measures its own."""
    if upload is not None:
        return store(session, storage, key, f"job upload for {subject_ref}", upload, max_bytes, commit=False).id
    if classifier_id is None:
        return None
    row = get(session, classifier_id)
    require_usable(row.accuracy, (row.details or {}).get("accuracy", {}).get("grouping"))
    return row.id


def get(session: Session, classifier_id: str) -> Classifier:
    row = session.get(Classifier, classifier_id)
    if row is None:
        raise not_found("classifier", classifier_id)
    return row
