"""Server-sent events for one job: poll its row every second, send what changed, end when it ends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from app.db import new_session
from app.models import TERMINAL_STATES, Job
from app.schemas import JobOut

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


def _snapshot(request: Request, job_id: str) -> JobOut | None:
    with new_session(request.app.state.settings) as session:
        job = session.get(Job, job_id)
        return JobOut.of(job) if job is not None else None


async def stream(request: Request, job_id: str, poll: float = POLL_SECONDS) -> AsyncIterator[str]:
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
