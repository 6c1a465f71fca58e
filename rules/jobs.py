"""A job's states, kinds and phases: the one definition the API, the worker and the CI client read (torch-free).

StrEnum members compare and serialise as their strings, so the database columns and the JSON stay plain text.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    FORGET = "forget_identity"
    REBALANCE = "rebalance_attribute"


JOB_STATES = tuple(JobState)
TERMINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
JOB_KINDS = tuple(JobKind)
# The library's phases of a run (taming.pipeline.run_requests `on_phase`), in order; an ended job reads DONE.
PHASES = ("loading", "features", "taming", "confirming", "evaluating", "reporting")
DONE = "done"


def finished(progress: dict[str, Any] | None, now: datetime, iterations: int | None = None) -> dict[str, Any]:
    """The progress of a job that ended: phase `done`, `done: true`, the last phase's seconds added.

    iterations: the run's final iteration when it ran; the bar then reads iterations/iterations (the cap
    stays in `iteration_cap`). A job that failed keeps the phase it failed in as `failed_phase`.
    """
    out = dict(progress or {})
    last = out.get("phase")
    seconds = dict(out.get("phase_seconds") or {})
    started = out.get("phase_started_at")
    if last in PHASES and isinstance(started, str):
        seconds[last] = round(seconds.get(last, 0.0) + max(0.0, (now - datetime.fromisoformat(started))
                                                           .total_seconds()), 3)
    out.update(phase=DONE, done=True, phase_seconds=seconds, phase_started_at=now.isoformat(), eta_seconds=0.0,
               eta_cap_seconds=None, eta_basis=None)
    if last in PHASES:
        out["last_phase"] = last
    if iterations is not None:
        out["iteration_cap"] = out.get("max_iterations")
        out["iteration"] = out["max_iterations"] = iterations
    return out
