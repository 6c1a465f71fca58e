"""`taming submit`: post a job, optionally wait for it, and turn the outcome into an exit status."""

from __future__ import annotations

import json
from typing import Any

import click

from app.client import ApiClient, ApiFailure, expand, wait_with_progress
from app.settings import get_settings


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`k=v` pairs; values are read as JSON when they parse (numbers, booleans), else kept as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not K=V", param_hint="--param")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def run_submit(kind: str, fields: dict[str, tuple[str, ...]], *, url: str | None, key: str | None, model_id: str,
               subject_ref: str, params: tuple[str, ...], idempotency_key: str | None, wait: bool) -> int:
    settings = get_settings()
    client = ApiClient(url or settings.api_url, key or settings.api_key)
    files = {name: expand(paths) for name, paths in fields.items() if paths}
    try:
        job = client.submit(kind, model_id, subject_ref, files, parse_params(params), idempotency_key)
        click.echo(f"job {job['id']} {job['state']}", err=True)
        for upload in job.get("uploads", []):
            if upload.get("excluded_reason"):
                click.echo(f"  {upload['name']}: left out ({upload['excluded_reason']})", err=True)
        if not wait:
            click.echo(job["id"])
            return 0
        job = wait_with_progress(client, job["id"])
        return outcome(client, job)
    except ApiFailure as exc:
        click.echo(f"error: {exc}", err=True)
        return 1


def outcome(client: ApiClient, job: dict[str, Any]) -> int:
    """0 only when the job succeeded and its report certifies the stop criterion."""
    click.echo(job["id"])
    if job["state"] != "succeeded":
        click.echo(f"job {job['state']}: {job.get('error') or ''}", err=True)
        return 1
    met = bool(client.report(job["id"]).get("stopping", {}).get("criterion_met"))
    click.echo(f"succeeded: version {job.get('version')}, criterion met: {met}", err=True)
    return 0 if met else 1
