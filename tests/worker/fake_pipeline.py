"""A stand-in for taming.pipeline.run_requests with the same contract and a controllable pace.

Used where a test is about the job machinery (leases, cancel, crash recovery) rather than the maths, and
by `fake_worker.py` to run a real Celery worker process on it. It counts iterations, calls `on_step`
with a StepInfo-like object whose `state()` can be resumed from, writes a real checkpoint (the base
model re-saved with the new version's metadata) and returns per-request reports.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rules.report_schema import ForgetItem, Inputs, Report, Stopping, Timing
from taming.checkpoint import load_checkpoint, save_checkpoint
from taming.pipeline import PipelineResult
from taming.tame import StepInfo

STEP_SECONDS = 0.0  # set by the test or the launcher
RUNS: list[dict[str, Any]] = []  # every call, for in-process tests
FAIL_SEED = 666  # a TameConfig with this seed ends with criterion_met=False


def run_requests(base_checkpoint: Path, remember: Any, requests: list[Any], config: Any, out_checkpoint: Path, *,
                 rebalance: Any = None, on_step: Any = None, resume_state: dict[str, Any] | None = None,
                 device: str = "cpu", model_meta: dict[str, Any] | None = None, remember_holdout: Any = None,
                 cache_dir: Path | None = None, on_phase: Any = None, precision: Any = None,
                 stop: Any = None) -> PipelineResult:
    phase = on_phase or (lambda _name: None)
    start = int(resume_state["iteration"]) if resume_state else 0
    RUNS.append({"keys": [r.key for r in requests], "start": start, "meta": [r.meta for r in requests],
                 "remember_holdout": None if remember_holdout is None else len(remember_holdout)})
    total = int(config.max_iterations)
    began = time.monotonic()
    for name in ("loading", "features", "taming"):
        phase(name)
    for it in range(start + 1, total + 1):
        if stop is not None and stop.requested:  # as taming.tame: before the next iteration
            return PipelineResult("", False, it - 1, {}, {}, stopped=True)
        time.sleep(STEP_SECONDS)
        if on_step is not None:
            elapsed = time.monotonic() - began
            on_step(StepInfo(it, total, 1.0 / it, 3.0, 0.5, None, {"loss": 1.0}, elapsed,
                             elapsed / (it - start) * (total - it), partial(_state, it)))
    phase("confirming")
    phase("evaluating")
    model, _ = load_checkpoint(base_checkpoint)
    sha = save_checkpoint(model, out_checkpoint, parent=str((model_meta or {}).get("parent_sha256")))
    met = config.seed != FAIL_SEED
    reports = {
        r.key: Report(
            job=r.meta, model={**(model_meta or {}), "new_sha256": sha}, parameters={},
            stopping=Stopping(criterion_met=met, iterations=total, reason="fake", resumed_from=start),
            inputs=Inputs(forget=[ForgetItem(sha256=s, bpd_before=None, bpd_after=None, quantile_before=None,
                                             quantile_after=None, d=None, excluded=False, reason=None)
                                  for s in r.forget.sha256]),
            metrics={"reference_stats": {"remember": {"tamed": {"mu": 2.0, "sigma": 0.25, "n": len(remember)}}}},
            history=[], timing=Timing(wall_seconds=time.monotonic() - began),
        )
        for r in requests
    }
    phase("reporting")
    return PipelineResult(sha, met, total, reports, {k: "<html></html>" for k in reports})


def _state(iteration: int) -> dict[str, Any]:
    return {"iteration": iteration, "weights": torch.full((2,), float(iteration))}


def install(step_seconds: float = 0.0) -> None:
    """Replace the real pipeline in this process."""
    global STEP_SECONDS
    import taming.pipeline

    STEP_SECONDS = step_seconds
    taming.pipeline.run_requests = run_requests  # type: ignore[assignment]
