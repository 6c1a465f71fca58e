"""The parts of a job's report that the service writes, not the library: who submitted it, how it ended,
and the whole report of a job that failed before anything was measured.

A run that measured something (even one whose stop criterion was not met) gets the library's full report
(taming/report.py) with an `outcome` section added here; a job that failed earlier (bad inputs, a worker
that kept dying, a run cut off by its time limit) gets the small report below: the error, the phase it
failed in, its inputs' SHA-256s and its last progress. Both live at `reports/{job_id}.json|.html`, where
`GET /v1/jobs/{id}/report` finds them. Torch-free: the sweeper writes these too.
"""

from __future__ import annotations

import html
import json
from typing import Any

from sqlalchemy.orm import Session

from app import audit, storage_keys
from app.models import ApiKey, Job
from app.storage import Storage
from rules.report_schema import ForgetItem, Inputs, Outcome, Report, Stopping, Timing


def key_name(session: Session, key_id: str) -> str | None:
    """The submitting API key's name (keys are never deleted, only revoked)."""
    key = session.get(ApiKey, key_id)
    return key.name if key is not None else None


def job_section(job: Job, submitted_by_name: str | None) -> dict[str, Any]:
    """The report's `job` section as the service knows it (the worker adds its run's fields)."""
    return {
        "id": job.id, "kind": job.kind, "subject_ref": job.subject_ref, "submitted_by": job.submitted_by,
        "submitted_by_name": submitted_by_name,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "attempts": job.attempts,
    }


def audit_head(session: Session) -> dict[str, Any]:
    """The audit chain's head as the report is made (`GET /v1/audit/head`): a reader who pins it can later check
    with `taming audit verify --head` that the chain still holds it, and that nothing before it changed."""
    head = audit.head(session)
    return {"id": head.id, "hash": head.hash, "mac": head.mac} if head else {"id": 0, "hash": audit.GENESIS,
                                                                            "mac": None}


def outcome(state: str, error: str | None, phase: str | None, version: int | None) -> dict[str, Any]:
    """How the job ended: state, error, the phase it ended in, the version it created (None: none)."""
    return {"state": state, "error": error, "phase": phase, "version": version}


def failure_report(job: Job, submitted_by_name: str | None, error: str, phase: str | None,
                   job_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of a job that failed before its run measured anything (its stored JSON)."""
    progress = dict(job.progress or {})
    forget = [ForgetItem(sha256=u.get("sha256"), name=u.get("name"), excluded=bool(u.get("excluded_reason")),
                         reason=u.get("excluded_reason"), bpd_before=None, bpd_after=None, quantile_before=None,
                         quantile_after=None, d=None)
              for u in job.uploads or [] if u.get("field") in ("forget", "positive")]
    holdout = [{"sha256": u.get("sha256")} for u in job.uploads or [] if u.get("field") == "holdout"]
    return Report(
        job={**job_section(job, submitted_by_name), **(job_extra or {})},
        model={"id": job.model_id, "parent_version": job.base_version, "new_version": None},
        parameters=job.parameters or {},
        inputs=Inputs(forget=forget, holdout=holdout),
        stopping=Stopping(criterion_met=False, iterations=int(progress.get("iteration") or 0),
                          max_abs_d=progress.get("max_abs_d"), reason=error),
        metrics={}, history=[], timing=Timing(wall_seconds=None),  # nothing was measured
        outcome=Outcome(**outcome("failed", error, phase, None)),
        progress=progress,
    ).as_json()


def failure_html(report: dict[str, Any]) -> str:
    """A plain page for a failure report (there are no figures: nothing was measured)."""
    job, out = report["job"], report["outcome"]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in (
        ("job", job["id"]), ("kind", job["kind"]), ("subject", job["subject_ref"]),
        ("submitted by", f"{job.get('submitted_by_name') or ''} (key {job['submitted_by']})"),
        ("failed in phase", out["phase"] or "before it started"), ("error", out["error"]),
        ("forget images", len(report["inputs"]["forget"]))))
    body = json.dumps(report["inputs"], indent=2)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Taming report {html.escape(job['id'])}"
            f"</title></head><body><h1 style='color:#a00'>Failed: not certified</h1><table>{rows}</table>"
            f"<p>Nothing was measured; the model was not changed.</p><h2>Inputs</h2><pre>{html.escape(body)}"
            "</pre></body></html>")


def store(storage: Storage, job_id: str, report: dict[str, Any], page: str) -> str:
    """Write the JSON and HTML report; returns the JSON's key (the job's `report_key`)."""
    key = storage_keys.report(job_id)
    storage.put_bytes(key, json.dumps(report, indent=2, default=str).encode())
    storage.put_bytes(storage_keys.report(job_id, ".html"), page.encode())
    return key


def store_failure(session: Session, storage: Storage, job: Job, error: str) -> str:
    """Build and store the small report of a job that failed before its run measured anything."""
    progress = job.progress or {}
    phase = progress.get("last_phase") or (progress.get("phase") if progress.get("phase") != "done" else None)
    if phase is None and job.started_at is not None:
        phase = "loading"  # claimed by a worker, which had written no phase yet
    report = failure_report(job, key_name(session, job.submitted_by), error, phase,
                            {"audit_head": audit_head(session)})
    return store(storage, job.id, report, failure_html(report))
