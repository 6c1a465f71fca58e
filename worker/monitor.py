"""Watching one taming run: progress and phase on the job rows, heartbeat, state saves, stop signals.

`RunMonitor.on_step` (after each iteration) writes progress to every job of the run every few
iterations, saves the resumable state every `checkpoint_every` iterations, and stops the run (by raising)
when a job is cancelled, the lease is lost or the time limit passes. `RunMonitor.on_phase` writes each new
phase at once (worker/progress.py says what the phase and ETA fields mean). A heartbeat thread keeps the
heartbeat and the lease fresh through the long stretches without steps (loading, the final confirmation
and evaluation).
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from typing import Any

import torch
from sqlalchemy import select, update

from app import storage_keys
from app.db import session_scope
from app.models import Job
from app.storage import Storage
from app.sweeper import Timings, utcnow
from taming.stop import StopToken
from worker import lease
from worker.batch import Batch
from worker.finish import LeaseLost, RunCancelled, RunTimeLimit, Stop
from worker.progress import Goal, PhaseClock, Trend, taming_eta

log = logging.getLogger(__name__)


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class RunMonitor:
    """Progress, phase, heartbeat, state saves and stop signals for one run."""

    def __init__(self, batch: Batch, settings: Any, t: Timings, owner: str, storage: Storage, resumed_from: int,
                 clock: PhaseClock | None = None, goal: Goal | None = None):
        self.batch, self.settings, self.t, self.owner, self.storage = batch, settings, t, owner, storage
        self.resumed_from = resumed_from
        self.clock = clock or PhaseClock()
        self.goal = goal
        self.trend = Trend()
        self.step: dict[str, Any] = {}  # the latest iteration's fields of the progress
        self.started = time.monotonic()
        self.last_write_iteration: int | None = None
        self.last_write_time = 0.0
        self.last_state_iteration = resumed_from
        self.token = StopToken()  # handed to the library: set to end the run at its next iteration
        self.stop: Stop | None = None  # why the token was set
        self.lease_lost = threading.Event()
        self.writing = threading.Lock()  # the heartbeat must not overwrite a newer phase with an older one
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{batch.run_id[:8]}", daemon=True)

    # -- called by the library at each phase boundary and after each iteration
    def on_phase(self, name: str) -> None:
        self.clock.enter(name)
        self._write()

    def on_step(self, info: Any) -> None:
        if self.lease_lost.is_set():
            return self._ask(LeaseLost(self.batch.model_id))
        if time.monotonic() - self.started > self.t.job_time_limit_seconds:
            return self._ask(RunTimeLimit(self.t.job_time_limit_seconds))
        iteration = int(info.iteration)
        if self.goal is not None:
            self.trend.add(iteration, _num(getattr(info, self.goal.quantity, None)), float(info.elapsed))
        if iteration > 0 and iteration % self.t.checkpoint_every == 0 and iteration != self.last_state_iteration:
            self.save_state(info, iteration)
        due = (
            self.last_write_iteration is None
            or iteration - self.last_write_iteration >= self.t.progress_every
            or time.monotonic() - self.last_write_time >= self.t.heartbeat_seconds
        )
        if due:
            self.write_progress(info, iteration)

    def save_state(self, info: Any, iteration: int) -> None:
        with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
            torch.save(info.state(), tmp.name)
            with open(tmp.name, "rb") as f:
                self.storage.put_file(storage_keys.run_state(self.batch.run_id), f)
        self.last_state_iteration = iteration

    def write_progress(self, info: Any, iteration: int) -> None:
        elapsed = _num(info.elapsed)
        self.step = {
            "iteration": iteration,
            "max_iterations": int(info.max_iterations),
            "max_abs_d": _num(info.max_abs_d),
            "mu_r": _num(info.mu_r),
            "sigma_r": _num(info.sigma_r),
            "share": _num(info.share),
            "iterations_per_second": iteration / elapsed if elapsed else None,
            **taming_eta(self.trend, self.goal, iteration, int(info.max_iterations)),
        }
        self._write()
        self.last_write_iteration, self.last_write_time = iteration, time.monotonic()

    def progress(self) -> dict[str, Any]:
        """What the job rows show now: the latest iteration's fields under the current phase."""
        return {**self.step, **self.clock.snapshot(), "resumed_from": self.resumed_from,
                "saved_iteration": self.last_state_iteration, "run_jobs": len(self.batch.job_ids)}

    def _write(self) -> None:
        with self.writing, session_scope(self.settings) as session:
            if not lease.renew(session, self.batch.model_id, self.owner, self.t.lease_seconds, utcnow()):
                self.lease_lost.set()
                return self._ask(LeaseLost(self.batch.model_id))
            session.execute(
                update(Job)
                .where(Job.run_id == self.batch.run_id, Job.state == "running")
                .values(progress=self.progress(), heartbeat_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            cancelled = list(
                session.scalars(select(Job.id).where(Job.run_id == self.batch.run_id, Job.cancel_requested.is_(True)))
            )
        if cancelled:
            self._ask(RunCancelled(cancelled))

    def _ask(self, reason: Stop) -> None:
        """Stop the run at its next iteration; the first reason is the one the run ends with."""
        if self.stop is None:
            self.stop = reason
        self.token.request()

    # -- the heartbeat thread
    def _beat(self) -> None:
        # It stops on its own past the time limit, so that a run hung inside the library goes stale and
        # the sweeper hands its jobs to another attempt.
        limit = self.t.job_time_limit_seconds + 2 * self.t.heartbeat_seconds
        while not self.done.wait(self.t.heartbeat_seconds) and time.monotonic() - self.started < limit:
            try:
                with self.writing, session_scope(self.settings) as session:
                    if not lease.renew(session, self.batch.model_id, self.owner, self.t.lease_seconds, utcnow()):
                        self.lease_lost.set()
                        self._ask(LeaseLost(self.batch.model_id))
                        return
                    # outside the taming loop nothing else writes: refresh the phase's seconds and ETA
                    fresh = {} if self.clock.phase == "taming" else {"progress": self.progress()}
                    session.execute(
                        update(Job)
                        .where(Job.run_id == self.batch.run_id, Job.state == "running")
                        .values(heartbeat_at=utcnow(), **fresh)
                        .execution_options(synchronize_session=False)
                    )
            except Exception:  # a database hiccup: try again next beat
                log.exception("heartbeat failed")

    def __enter__(self) -> RunMonitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)
