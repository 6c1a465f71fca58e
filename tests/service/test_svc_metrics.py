"""`GET /metrics`: job duration, pace, queue wait and age, jobs per run (from the rows), verify latency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from svc_api import Api, CannedVerifier
from svc_media import png

from app.db import session_scope
from app.models import Job


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _job(api: Api, model_id: str, **values: Any) -> None:
    job = api.submit(model_id).json()
    with session_scope(api.settings) as session:
        row = session.get(Job, job["id"])
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)


def test_job_metrics_come_from_the_rows(api: Api) -> None:
    model = api.register_model()["id"]
    now = datetime.now(UTC)
    t0 = now - timedelta(hours=1)
    for pace in (2.0, 4.0):  # two requests coalesced into one run of 60 s, after 10 s in the queue
        _job(api, model, state="succeeded", created_at=t0, started_at=t0 + timedelta(seconds=10),
             finished_at=t0 + timedelta(seconds=70), run_id="run-a", progress={"iterations_per_second": pace})
    _job(api, model, kind="rebalance_attribute", state="failed", created_at=t0, started_at=t0,
         finished_at=t0 + timedelta(seconds=400), run_id="run-b", progress={})
    _job(api, model, created_at=now - timedelta(seconds=100))  # still queued
    m = _samples(api.client.get("/metrics").text)
    forget = (("kind", "forget_identity"),)
    assert m["taming_job_duration_seconds_count", (*forget, ("state", "succeeded"))] == 2
    assert m["taming_job_duration_seconds_sum", (*forget, ("state", "succeeded"))] == 120
    assert m["taming_job_duration_seconds_bucket", (*forget, ("le", "30.0"), ("state", "succeeded"))] == 0
    assert m["taming_job_duration_seconds_bucket", (*forget, ("le", "60.0"), ("state", "succeeded"))] == 2
    rebalance = (("kind", "rebalance_attribute"), ("state", "failed"))
    assert m["taming_job_duration_seconds_sum", rebalance] == 400
    assert m["taming_job_iterations_per_second_sum", forget] == 6.0
    assert m["taming_job_queue_wait_seconds_sum", forget] == 20
    assert m["taming_run_jobs_count", ()] == 2 and m["taming_run_jobs_sum", ()] == 3  # runs of 2 and 1 jobs
    assert 100 <= m["taming_queue_age_seconds", ()] < 160


def test_verify_latency_is_counted_by_verdict(api: Api) -> None:
    api.app.state.verifier = CannedVerifier(bpd=5.0)
    model = api.register_model()["id"]
    r = api.client.post("/v1/verify", headers=api.h("auditor"), data={"model_id": model},
                        files=[("images", ("me.png", png(32), "image/png"))])
    assert r.status_code == 200
    m = _samples(api.client.get("/metrics").text)
    assert m["taming_verify_seconds_count", (("outcome", "forgotten"),)] >= 1
