"""Per-request isolation in coalesced runs: a request whose images carry no identity fails alone, with a
message for its owner (no server paths, no exception names); the other requests of the batch succeed."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import fake_pipeline
import numpy as np
import pytest
import torch
import worker_helpers as h
from PIL import Image

from app.db import session_scope
from app.models import Job
from app.storage import get_storage
from taming import pipeline
from taming.data import FaceSet
from taming.requests import Request, RequestProblem
from worker.runner import handle_doorbell

PARAMS = {"max_iterations": 6, "delta": 2.0, "method": "paper"}


@pytest.fixture
def stack(fake_stack: tuple[Any, str]) -> tuple[Any, str]:
    return fake_stack


def _png(level: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), level).save(buf, format="PNG")
    return buf.getvalue()


def submit_flat(settings: Any, model_id: str, level: int = 0, n: int = 2) -> str:
    """A queued forget job whose images are flat (black at level 0): accepted at upload, no identity."""
    job_id = h.submit(settings, model_id, 33, PARAMS, n_images=1, enqueue=False)
    storage, uploads = get_storage(settings), []
    for i in range(n):
        blob, key = _png(level), f"uploads/{job_id}/forget/{i:04d}.png"
        storage.put_bytes(key, blob)
        uploads.append({"field": "forget", "key": key, "sha256": hashlib.sha256(blob).hexdigest(),
                        "name": f"black{i}.png", "excluded_reason": "nearly black image"})
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.uploads = uploads
    return job_id


def _assert_owner_message(message: str | None) -> None:
    assert message is not None and "carries an identity" in message and "black0.png" in message
    for leak in ("/tmp", "taming-run", "Error", "Traceback"):
        assert leak not in message, message


def test_a_black_request_fails_alone_before_the_run(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    good = h.submit(settings, model_id, 30, PARAMS, n_images=2, enqueue=False)
    bad = submit_flat(settings, model_id)
    other = h.submit(settings, model_id, 31, PARAMS, n_images=2, enqueue=False)
    handle_doorbell(good, settings)
    assert [sorted(r["keys"]) for r in fake_pipeline.RUNS] == [sorted([good, other])]
    assert h.job(settings, good).state == h.job(settings, other).state == "succeeded"
    failed = h.job(settings, bad)
    assert failed.state == "failed"
    _assert_owner_message(failed.error)
    assert h.report(settings, bad)["outcome"]["state"] == "failed"


def test_a_request_the_run_finds_unusable_fails_alone_and_the_others_rerun(
        stack: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, model_id = stack
    # the check before the run is skipped, so the run's own screening (pipeline._plan) meets the request
    monkeypatch.setattr("worker.execute.request_problem", lambda _request: None)

    def screening_run(*args: Any, **kw: Any) -> Any:
        pipeline._plan(args[2])
        return fake_pipeline.run_requests(*args, **kw)

    monkeypatch.setattr("taming.pipeline.run_requests", screening_run)
    good = h.submit(settings, model_id, 30, PARAMS, n_images=2, enqueue=False)
    bad = submit_flat(settings, model_id)
    handle_doorbell(good, settings)
    assert [sorted(r["keys"]) for r in fake_pipeline.RUNS] == [[good]]  # the first run stopped at screening
    assert h.job(settings, good).state == "succeeded" and h.job(settings, good).version == 2
    failed = h.job(settings, bad)
    assert failed.state == "failed" and failed.attempts == 1
    _assert_owner_message(failed.error)


def test_bad_parameters_stop_a_run_before_any_step(stack: tuple[Any, str]) -> None:
    settings, model_id = stack
    job_id = h.submit(settings, model_id, 30, {**PARAMS, "epsilon": float("inf")}, n_images=2, enqueue=False)
    handle_doorbell(job_id, settings)
    job = h.job(settings, job_id)
    assert job.state == "failed" and "epsilon" in (job.error or "") and job.version is None
    assert not fake_pipeline.RUNS


def test_plan_names_the_request_without_identity() -> None:
    rng = np.random.default_rng(0)

    def faces(images: np.ndarray, name: str) -> FaceSet:
        return FaceSet(torch.from_numpy(images), np.full(len(images), -1), [f"{name}{i}" for i in range(len(images))],
                       [str(i) for i in range(len(images))])

    good = Request("good", faces(rng.integers(40, 220, (2, 1, 16, 16), dtype=np.uint8), "g"))
    black = Request("black", faces(np.zeros((2, 1, 16, 16), dtype=np.uint8), "b"))
    with pytest.raises(RequestProblem) as caught:
        pipeline._plan([good, black])
    assert caught.value.key == "black" and "b0" in str(caught.value)
    planned, stacked = pipeline._plan([good])
    assert stacked.shape[0] == 2 and planned[0].rows == slice(0, 2)
