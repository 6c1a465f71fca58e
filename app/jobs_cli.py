"""`taming jobs list|show|cancel` and `taming report JOB --out DIR`: the rest of the client (exit statuses as
in app/submit.py: 0 done, 2 bad usage or refused, 5 service unavailable)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from app.client import BadInput
from app.progress_view import describe
from app.submit import EXIT_OK, connection_options, emit, make_client, one_line_errors


def due_text(job: dict[str, Any], now: datetime | None = None) -> str:
    """The GDPR deadline as people read it: `due 2025-02-14 (12 days left)`, `erased in time (due …)`, `overdue`.

    Only a succeeded erasure meets it; a failed or cancelled one still owes the person an answer.
    """
    if not job.get("due_at"):
        return "-"
    due = datetime.fromisoformat(job["due_at"])
    if job["state"] == "succeeded":
        finished = datetime.fromisoformat(job.get("finished_at") or job["created_at"])
        return f"erased {'in time' if finished <= due else 'late'} (due {due.date()})"
    prefix = "not erased, " if job["state"] in ("failed", "cancelled") else ""
    days = (due - (now or datetime.now(UTC))).total_seconds() / 86400
    if days < 0:
        return f"{prefix}overdue by {int(-days) + 1} days"
    return f"{prefix}due {due.date()} ({int(days)} days left)"


@click.group()
def jobs() -> None:
    """List, show and cancel jobs on a running service."""


@jobs.command("list")
@connection_options
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]), default=None)
@click.option("--kind", type=click.Choice(["forget_identity", "rebalance_attribute"]), default=None)
@click.option("--model", "model_id", default=None, help="Only this model's jobs.")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON (with next_cursor).")
@one_line_errors
def jobs_list(api: str | None, key: str | None, state: str | None, kind: str | None, model_id: str | None,
              limit: int, as_json: bool) -> int:
    """Jobs, newest first: id, state and progress, kind, subject, GDPR due date."""
    page = make_client(api, key).jobs(status=state, kind=kind, model_id=model_id, limit=limit)
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return EXIT_OK
    for job in page["items"]:
        click.echo(f"{job['id']}  {job['kind']:<19}  {job['subject_ref'][:24]:<24}  {due_text(job):<30}  "
                   f"{describe(job)}")
    if not page["items"]:
        click.echo("no jobs", err=True)
    return EXIT_OK


@jobs.command("show")
@connection_options
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@one_line_errors
def jobs_show(api: str | None, key: str | None, job_id: str, as_json: bool) -> int:
    """One job: state, progress, GDPR due date, error."""
    job = make_client(api, key).job(job_id)
    if as_json:
        emit(job, True)
        return EXIT_OK
    lines = [f"job        {job['id']}", f"kind       {job['kind']}", f"subject    {job['subject_ref']}",
             f"model      {job['model_id']}", f"state      {describe(job)}", f"gdpr       {due_text(job)}",
             f"created    {job['created_at']}", f"finished   {job.get('finished_at') or '-'}",
             f"version    {job.get('version') or '-'}"]
    if job.get("error"):
        lines.append(f"error      {job['error']}")
    click.echo("\n".join(lines))
    return EXIT_OK


@jobs.command("cancel")
@connection_options
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@one_line_errors
def jobs_cancel(api: str | None, key: str | None, job_id: str, as_json: bool) -> int:
    """Cancel a job: a queued one ends at once, a running one at its next iteration."""
    job = make_client(api, key).cancel(job_id)
    click.echo(f"job {job['id']}: {job['state']}{' (stopping)' if job['state'] == 'running' else ''}", err=True)
    emit(job, as_json)
    return EXIT_OK


@click.command()
@connection_options
@click.argument("job_id")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for JOB.json and JOB.html (created if missing).")
@one_line_errors
def report(api: str | None, key: str | None, job_id: str, out_dir: Path) -> int:
    """Download a job's audit report: the JSON and the HTML page with figures."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"--out: {out_dir} is a file, not a folder")
    client = make_client(api, key)
    data, html = client.report(job_id), client.report_html(job_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{job_id}.json").write_text(json.dumps(data, indent=2))
    (out_dir / f"{job_id}.html").write_text(html)
    click.echo(out_dir / f"{job_id}.json")
    click.echo(out_dir / f"{job_id}.html")
    met = (data.get("stopping") or {}).get("criterion_met")
    click.echo(f"stop criterion met: {met}", err=True)
    return EXIT_OK
