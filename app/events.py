"""Server-sent events for one job: poll its row every second, send what changed, end when it ends.

A stream holds no database session between polls: each poll opens a short one and closes it, so a hundred
open streams cost a hundred short queries a second, not a hundred pooled connections held for hours.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth import visible_job
from app.db import new_session
from app.models import TERMINAL_STATES, ApiKey, Job
from app.schemas import JobOut

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


def _snapshot(request: Request, job_id: str) -> JobOut | None:
    with new_session(request.app.state.settings) as session:
        job = session.get(Job, job_id)
        return JobOut.of(job) if job is not None else None


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
    while not await request.is_disconnected():
        job = await run_in_threadpool(_snapshot, request, job_id)
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
        await asyncio.sleep(poll)
