"""The client commands for CI pipelines and people: `taming submit`, `taming jobs`, `taming report`.

Exit status (documented in the README; a pipeline branches on it):

    0  the job succeeded and its report certifies the stop criterion (or, without --wait, it was accepted)
    1  the job failed, or it succeeded without its stop criterion met
    2  bad usage: an option, a path, an image folder, or a request the service refused as invalid (4xx)
    3  the job was cancelled
    4  --timeout passed while the job was still queued or running (it goes on; `taming jobs show` follows it)
    5  the service could not be reached, or answered with a server error (5xx, 429): try again later

Every failure is one line on stderr, never a traceback. stdout carries only what a script reads: the
job id, or with --json the final job.
"""

from __future__ import annotations

import functools
import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

import click

from app.client import ApiClient, ApiFailure, BadInput, expand, wait_with_progress

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_TIMEOUT, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5
OPTION_OF = {"forget": "--images", "holdout": "--holdout", "positive": "--positive", "negative": "--negative"}


def failure_code(exc: ApiFailure) -> int:
    """Usage (2) for a request the service refused, unavailable (5) for no answer or a server error."""
    if exc.status is None or exc.status >= 500 or exc.status == 429:
        return EXIT_UNAVAILABLE
    return EXIT_USAGE


def one_line_errors(fn: Callable[..., int]) -> Callable[..., None]:
    """Run a command body; turn its outcome into the exit status and any failure into one line."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            code = fn(*args, **kwargs)
        except BadInput as exc:
            click.echo(f"error: {exc}", err=True)
            code = EXIT_USAGE
        except ApiFailure as exc:
            click.echo(f"error: {exc}", err=True)
            code = failure_code(exc)
        except OSError as exc:  # a file that vanished or cannot be read
            click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            code = EXIT_USAGE
        sys.exit(code)

    return run


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`k=v` pairs; values are read as JSON when they parse (numbers, booleans), else kept as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BadInput(f"--param {pair!r} is not K=V")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def make_client(api: str | None, key: str | None) -> ApiClient:
    from app.settings import get_settings

    settings = get_settings()
    key = key or settings.api_key
    if not key:
        raise BadInput("no API key: pass --key or set TAMING_API_KEY")
    return ApiClient(api or settings.api_url, key)


def connection_options(fn: Any) -> Any:
    fn = click.option("--key", default=None, help="API key (default: TAMING_API_KEY).")(fn)
    return click.option("--api", "--url", "api", default=None, metavar="URL",
                        help="Service base URL (default: TAMING_API_URL).")(fn)


def emit(job: dict[str, Any], as_json: bool) -> None:
    click.echo(json.dumps(job, indent=2) if as_json else job["id"])


def outcome(client: ApiClient, job: dict[str, Any]) -> int:
    """0 only when the job succeeded and its report certifies the stop criterion; else the documented code."""
    if job["state"] == "cancelled":
        click.echo(f"job {job['id']} was cancelled", err=True)
        return EXIT_CANCELLED
    if job["state"] == "failed":
        click.echo(f"job {job['id']} failed: {job.get('error') or 'no reason given'}", err=True)
        return EXIT_FAILED
    if job["state"] != "succeeded":
        click.echo(f"job {job['id']} is still {job['state']} (timed out waiting)", err=True)
        return EXIT_TIMEOUT
    met = bool((client.report(job["id"]).get("stopping") or {}).get("criterion_met"))
    click.echo(f"job {job['id']} succeeded: version {job.get('version')}, stop criterion met: {met}", err=True)
    return EXIT_OK if met else EXIT_FAILED


def run_submit(kind: str, files: dict[str, list[str]], parameters: dict[str, Any], *, api: str | None,
               key: str | None, model_id: str, subject_ref: str | None, params: tuple[str, ...],
               idempotency_key: str | None, callback_url: str | None, wait: bool, timeout: float | None,
               as_json: bool) -> int:
    """Post the job; with `wait`, follow it to its end and turn the outcome into the exit status."""
    expanded = {name: expand(paths, OPTION_OF.get(name, name)) for name, paths in files.items() if paths}
    params_all = {**parse_params(params), **parameters}
    client = make_client(api, key)
    subject_ref = subject_ref or f"cli-{uuid.uuid4().hex[:12]}"
    job = client.submit(kind, model_id, subject_ref, expanded, params_all, idempotency_key, callback_url)
    click.echo(f"job {job['id']} {job['state']} (subject {job['subject_ref']})", err=True)
    for upload in job.get("uploads", []):
        if upload.get("excluded_reason"):
            click.echo(f"  {upload['name']}: left out ({upload['excluded_reason']})", err=True)
    if wait:
        job = wait_with_progress(client, job["id"], timeout=timeout if timeout is not None else 24 * 3600)
    emit(job, as_json)
    return outcome(client, job) if wait else EXIT_OK


def submit_options(fn: Any) -> Any:
    options = [
        click.option("--model", "model_id", required=True, help="Model id."),
        click.option("--subject-ref", default=None, help="Your ticket id for this request (default: cli-<random>)."),
        click.option("--param", "params", multiple=True, metavar="K=V", help="A job parameter, e.g. delta=4."),
        click.option("--idempotency-key", default=None, help="Makes a retried submission return the same job."),
        click.option("--callback-url", default=None, help="Where the signed webhooks of this job go."),
        click.option("--wait", is_flag=True, help="Follow the job to its end; the exit status says how it ended."),
        click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="S",
                     help="With --wait: give up after S seconds (exit 4)."),
        click.option("--json", "as_json", is_flag=True, help="Print the (final) job as JSON on stdout."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return connection_options(fn)


@click.group()
def submit() -> None:
    """Submit a job to a running service (a client for CI pipelines; see the exit statuses in the README)."""


@submit.command("forget")
@submit_options
@click.option("--images", "--forget", "images", multiple=True, required=True,
              help="The person's images: a file or folder (repeatable).")
@click.option("--holdout", multiple=True, help="More images of the person, for the report (file or folder).")
@one_line_errors
def submit_forget(images: tuple[str, ...], holdout: tuple[str, ...], **common: Any) -> int:
    """Ask the service to forget one person (GDPR erasure)."""
    return run_submit("forget_identity", {"forget": list(images), "holdout": list(holdout)}, {}, **common)


@submit.command("rebalance")
@submit_options
@click.option("--positive", "--images", "positive", multiple=True, required=True,
              help="Images with the attribute (file or folder, repeatable).")
@click.option("--negative", multiple=True, required=True, help="Images without it (file or folder, repeatable).")
@click.option("--target-share", type=click.FloatRange(0, 1), default=None, help="The attribute's target share.")
@click.option("--direction", type=click.Choice(["decrease", "increase"]), default=None)
@click.option("--strategy", type=click.Choice(["push_negatives", "pull_positives"]), default=None,
              help="How an increase works.")
@click.option("--classifier", "classifier_file", default=None, help="An attribute classifier to upload "
              "(from `taming classifier train`); refused (exit 2) below 75% by-person accuracy.")
@click.option("--classifier-id", default=None, help="A stored classifier (POST /v1/classifiers).")
@one_line_errors
def submit_rebalance(positive: tuple[str, ...], negative: tuple[str, ...], target_share: float | None,
                     direction: str | None, strategy: str | None, classifier_file: str | None,
                     classifier_id: str | None, **common: Any) -> int:
    """Ask the service to rebalance an attribute among the model's samples."""
    extra = {k: v for k, v in (("target_share", target_share), ("direction", direction), ("strategy", strategy),
                               ("classifier_id", classifier_id)) if v is not None}
    if "target_share" not in extra and not any(p.startswith("target_share=") for p in common["params"]):
        raise BadInput("a rebalance needs --target-share")
    files = {"positive": list(positive), "negative": list(negative),
             "classifier": [classifier_file] if classifier_file else []}
    return run_submit("rebalance_attribute", files, extra, **common)
