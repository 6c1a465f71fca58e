"""Job metrics read from the database at scrape time: the job rows are the truth, and the workers that ran
the jobs may be other processes on other machines, so nothing is counted in a process's memory.

- `taming_job_duration_seconds{kind,state}`: started → finished, for every job that ran and ended.
- `taming_job_iterations_per_second{kind}`: the taming loop's pace of each finished run (its final progress).
- `taming_job_queue_wait_seconds{kind}`: submitted → started, for every job that started.
- `taming_queue_age_seconds`: how long the oldest queued job has waited (0 when none waits).
- `taming_run_jobs`: jobs per taming run (how many requests a coalesced run carried), over ended runs.

Histograms over all jobs ever finished (counters never go down), computed in one pass over the terminal rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import TERMINAL_STATES, Job

DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
PACE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
WAIT_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 14400)
RUN_JOBS_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8)


class _Histogram:
    """Observations grouped by label values, turned into one Prometheus histogram family."""

    def __init__(self, name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.buckets = name, doc, labels, buckets
        self.values: dict[tuple[str, ...], list[float]] = defaultdict(list)

    def observe(self, labels: tuple[str, ...], value: float | None) -> None:
        if value is not None and value >= 0:
            self.values[labels].append(value)

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, values in sorted(self.values.items()):
            cumulative = [(str(float(b)), float(sum(v <= b for v in values))) for b in self.buckets]
            family.add_metric(list(labels), [*cumulative, ("+Inf", float(len(values)))], sum_value=sum(values))
        return family


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    start, end = _aware(start), _aware(end)
    return (end - start).total_seconds() if start is not None and end is not None else None


class JobCollector:
    """A collector over one database session (made for one scrape)."""

    def __init__(self, session: Session, now: datetime | None = None) -> None:
        self.session, self.now = session, now or datetime.now(UTC)

    def collect(self) -> Iterator[Metric]:
        duration = _Histogram("taming_job_duration_seconds", "Seconds from a job's start to its end",
                              ["kind", "state"], DURATION_BUCKETS)
        pace = _Histogram("taming_job_iterations_per_second", "Taming iterations per second of each finished run",
                          ["kind"], PACE_BUCKETS)
        wait = _Histogram("taming_job_queue_wait_seconds", "Seconds a job waited in the queue before it started",
                          ["kind"], WAIT_BUCKETS)
        runs: dict[str, int] = defaultdict(int)
        rows = self.session.execute(select(Job.kind, Job.state, Job.created_at, Job.started_at, Job.finished_at,
                                           Job.progress, Job.run_id).where(Job.state.in_(TERMINAL_STATES)))
        for kind, state, created, started, finished, progress, run_id in rows:
            duration.observe((kind, state), _seconds(started, finished))
            wait.observe((kind,), _seconds(created, started))
            if state != "cancelled":
                pace.observe((kind,), (progress or {}).get("iterations_per_second"))
            if run_id and state != "cancelled":  # a cancelled job's run went round again without it
                runs[run_id] += 1
        yield from (duration.family(), pace.family(), wait.family(), self._queue_age(), _run_jobs(runs.values()))

    def _queue_age(self) -> GaugeMetricFamily:
        oldest = self.session.scalar(select(func.min(Job.created_at)).where(Job.state == "queued"))
        age = _seconds(oldest, self.now) if oldest is not None else 0.0
        return GaugeMetricFamily("taming_queue_age_seconds", "Age of the oldest queued job (0: none waits)",
                                 value=max(0.0, age or 0.0))


def _run_jobs(sizes: Iterable[int]) -> HistogramMetricFamily:
    runs = _Histogram("taming_run_jobs", "Jobs carried by one taming run (requests coalesced into it)", [],
                      RUN_JOBS_BUCKETS)
    for size in sizes:
        runs.observe((), float(size))
    return runs.family()
