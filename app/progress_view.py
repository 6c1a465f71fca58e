"""How `taming submit --wait` shows a job's progress: a bar on a terminal, plain lines in a CI log.

A finished job reads as done (its bar full, "done in N iterations"), not as stalled at N of max_iterations:
most runs stop early, when the stop criterion is met.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

import click

PLAIN_EVERY_SECONDS = 10.0


class View(Protocol):
    def show(self, job: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def describe(job: dict[str, Any]) -> str:
    """One line: state, phase, iteration of the cap (or done), max |d| or the attribute share, ETA."""
    progress = job.get("progress") or {}
    iteration, cap = int(progress.get("iteration") or 0), progress.get("max_iterations")
    parts = [job["state"]]
    if progress.get("phase") and job["state"] == "running":
        parts.append(str(progress["phase"]))
    if job["state"] == "succeeded":
        parts.append(f"done in {iteration} iterations")
    elif iteration or job["state"] == "running":
        parts.append(f"iteration {iteration}/{cap}" if cap else f"iteration {iteration}")
    if progress.get("max_abs_d") is not None:
        parts.append(f"max|d| {progress['max_abs_d']:.3f}")
    if progress.get("share") is not None:
        parts.append(f"share {progress['share']:.3f}")
    if job["state"] == "running" and progress.get("eta_seconds") is not None:
        parts.append(f"ETA {int(progress['eta_seconds'])} s")
    return ", ".join(parts)


class PlainLines:
    """A line when the state or phase changes, else at most one every PLAIN_EVERY_SECONDS."""

    def __init__(self) -> None:
        self.last_key: tuple[Any, ...] | None = None
        self.last_line = ""
        self.last_time = 0.0

    def show(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        key = (job["state"], progress.get("phase"))
        line = f"job {job['id']}: {describe(job)}"
        due = time.monotonic() - self.last_time >= PLAIN_EVERY_SECONDS and line != self.last_line
        if key != self.last_key or due:
            click.echo(line, err=True)
            self.last_key, self.last_line, self.last_time = key, line, time.monotonic()

    def close(self) -> None:
        pass


class Bar:
    """A tqdm bar over iterations; full when the job succeeded, however early it stopped."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="it", desc="queued", dynamic_ncols=True, file=sys.stderr)

    def show(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        iteration = int(progress.get("iteration") or 0)
        cap = progress.get("max_iterations")
        if job["state"] == "succeeded":
            cap = max(iteration, 1)  # done: the bar is full
        if cap and self.bar.total != cap:
            self.bar.total = cap
        self.bar.n = iteration if job["state"] != "succeeded" else cap or iteration
        self.bar.set_description(job["state"] if not progress.get("phase") else f"{job['state']} ({progress['phase']})")
        extra = {}
        if progress.get("max_abs_d") is not None:
            extra["max|d|"] = f"{progress['max_abs_d']:.3f}"
        if progress.get("share") is not None:
            extra["share"] = f"{progress['share']:.3f}"
        self.bar.set_postfix(extra, refresh=True)

    def close(self) -> None:
        self.bar.close()


def view_for_stderr() -> View:
    return Bar() if sys.stderr.isatty() else PlainLines()
