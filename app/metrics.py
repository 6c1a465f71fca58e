"""Prometheus metrics: request counts and latency per route template and verify latency (this process),
jobs by state and the job metrics of app/job_metrics.py (read from the database at scrape)."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.job_metrics import JobCollector
from app.models import JOB_STATES, Job

REQUESTS = Counter("taming_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("taming_http_request_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
JOBS = Gauge("taming_jobs", "Jobs by state", ["state"])
VERIFY_SECONDS = Histogram("taming_verify_seconds", "POST /v1/verify: seconds per call, by verdict", ["outcome"],
                           buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60))


class Metrics:
    """Counts every HTTP request under its route template (`/v1/jobs/{job_id}`), not its raw path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)


def render(session: Session) -> tuple[bytes, str]:
    counts = {state: n for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state))}
    for state in JOB_STATES:
        JOBS.labels(state).set(counts.get(state, 0))
    from_rows = CollectorRegistry(auto_describe=False)
    from_rows.register(JobCollector(session))
    return generate_latest() + generate_latest(from_rows), CONTENT_TYPE_LATEST
