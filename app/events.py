"""Server-sent events for one job: poll its row every second, send what changed, end when it ends.

A stream holds no database session between polls: each read opens a short one and closes it. The streams of one
job share their reads (`Snapshots`): a row read less than a poll ago is served from memory, so a hundred streams
on one job cost about one short query a second, not a hundred, nor a hundred pooled connections held for hours.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth import visible_job
from app.db import new_session
from app.models import TERMINAL_STATES, ApiKey, Job
from app.schemas import JobOut
from app.settings import Settings

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


class Snapshots:
    """The latest row of each streamed job, shared by its streams (one API process; thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rows: dict[str, tuple[float, JobOut | None]] = {}
        self._guard = threading.Lock()
        self._reading: dict[str, threading.Lock] = {}

    def fresh(self, job_id: str, max_age: float) -> tuple[float, JobOut | None] | None:
        """The row as last read, when it was read less than max_age seconds ago (no thread hop: in the loop)."""
        hit = self._rows.get(job_id)
        return hit if hit is not None and time.monotonic() - hit[0] < max_age else None

    def read(self, job_id: str, max_age: float) -> JobOut | None:
        """The row, read from the database unless another stream read it meanwhile (in a worker thread)."""
        with self._guard:
            lock = self._reading.setdefault(job_id, threading.Lock())
        with lock:  # streams that woke together wait for one read, not one each
            hit = self.fresh(job_id, max_age)
            if hit is not None:
                return hit[1]
            with new_session(self.settings) as session:
                row = session.get(Job, job_id)
                job = JobOut.of(row) if row is not None else None
            with self._guard:
                self._rows[job_id] = (time.monotonic(), job)
                self._forget_stale(max_age)
            return job

    def _forget_stale(self, max_age: float) -> None:
        cutoff = time.monotonic() - 100 * max_age  # no stream has asked for these for a long while
        for key in [k for k, (at, _) in self._rows.items() if at < cutoff]:
            del self._rows[key]
            self._reading.pop(key, None)


async def _snapshot(request: Request, job_id: str, poll: float) -> JobOut | None:
    snapshots: Snapshots = request.app.state.snapshots
    hit = snapshots.fresh(job_id, 0.9 * poll)
    if hit is not None:
        return hit[1]
    return await run_in_threadpool(snapshots.read, job_id, 0.9 * poll)


def response(request: Request, key: ApiKey, job_id: str) -> StreamingResponse:
    """The event stream of a job this key may see (404 otherwise), checked in a session closed at once."""
    with new_session(request.app.state.settings) as session:
        job_id = visible_job(session, key, job_id).id
    return StreamingResponse(stream(request, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def stream(request: Request, job_id: str, poll: float | None = None) -> AsyncIterator[str]:
    """The events of one job until it ends (or the client goes away), one short session per poll."""
    poll = POLL_SECONDS if poll is None else poll
    last: tuple[str, str] | None = None
    quiet_since = time.monotonic()
    first = True
    while not await request.is_disconnected():
        job = await _snapshot(request, job_id, poll)
        if job is None:
            return
        seen = (job.state, json.dumps(job.progress.model_dump(), sort_keys=True))
        if seen != last:
            event = "progress" if last is not None and last[0] == job.state else "state"
            yield f"event: {event}\ndata: {job.model_dump_json()}\n\n"
            last, quiet_since = seen, time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"  # proxies drop silent connections
            quiet_since = time.monotonic()
        if job.state in TERMINAL_STATES:
            yield f"event: end\ndata: {json.dumps({'state': job.state})}\n\n"
            return
        # after the first, a random phase: streams opened together then mostly find the row read by another
        await asyncio.sleep(poll * (random.uniform(0.5, 1.5) if first else 1.0))
        first = False
