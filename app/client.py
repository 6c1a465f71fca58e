"""A small HTTP client of the API, used by `taming submit` and `taming demo` (and usable by scripts)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm")


class ApiFailure(RuntimeError):
    """The API answered with an error; the message is its `error.message`."""


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders replaced by the images inside them (sorted)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(path)
    return out


class ApiClient:
    def __init__(self, url: str, key: str | None, http: httpx.Client | None = None, timeout: float = 300) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = http or httpx.Client(base_url=url, timeout=timeout)
        self.http.headers.update(headers)

    def _check(self, response: httpx.Response) -> Any:
        if response.is_error:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise ApiFailure(f"HTTP {response.status_code}: {message}")
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def register_model(self, name: str, checkpoint: Path, remember: list[Path], args: Path | None = None) -> Any:
        with ExitStack() as stack:
            files = [("checkpoint", (checkpoint.name, stack.enter_context(checkpoint.open("rb"))))]
            files += [("remember", (p.name, stack.enter_context(p.open("rb")))) for p in remember]
            if args is not None:
                files.append(("args", (args.name, stack.enter_context(args.open("rb")))))
            return self._check(self.http.post("/v1/models", data={"name": name}, files=files))

    def submit(self, kind: str, model_id: str, subject_ref: str, files: dict[str, list[Path]],
               parameters: dict[str, Any] | None = None, idempotency_key: str | None = None) -> Any:
        data = {"kind": kind, "model_id": model_id, "subject_ref": subject_ref,
                "parameters": json.dumps(parameters or {})}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with ExitStack() as stack:
            parts = [(field, (p.name, stack.enter_context(p.open("rb")))) for field, ps in files.items() for p in ps]
            return self._check(self.http.post("/v1/jobs", data=data, files=parts, headers=headers))

    def job(self, job_id: str) -> Any:
        return self._check(self.http.get(f"/v1/jobs/{job_id}"))

    def report(self, job_id: str) -> Any:
        return self._check(self.http.get(f"/v1/jobs/{job_id}/report"))

    def report_html(self, job_id: str) -> str:
        return str(self._check(self.http.get(f"/v1/jobs/{job_id}/report.html")))

    def wait(self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
             timeout: float = 24 * 3600, poll: float = 1.0) -> dict[str, Any]:
        """Poll until the job ends (or `timeout` seconds pass); returns the last job seen."""
        deadline = time.monotonic() + timeout
        while True:
            job = dict(self.job(job_id))
            if on_progress is not None:
                on_progress(job)
            if job["state"] in TERMINAL or time.monotonic() > deadline:
                return job
            time.sleep(poll)


def wait_with_progress(client: ApiClient, job_id: str, timeout: float = 24 * 3600) -> dict[str, Any]:
    """`client.wait` with a tqdm bar over iterations, showing max |d| (or the attribute share)."""
    from tqdm import tqdm

    bar = tqdm(total=None, unit="it", desc="queued", dynamic_ncols=True)

    def show(job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        if progress.get("max_iterations") and bar.total != progress["max_iterations"]:
            bar.total = progress["max_iterations"]
        bar.n = int(progress.get("iteration") or 0)
        bar.set_description(job["state"])
        extra = {}
        if progress.get("max_abs_d") is not None:
            extra["max|d|"] = f"{progress['max_abs_d']:.3f}"
        if progress.get("share") is not None:
            extra["share"] = f"{progress['share']:.3f}"
        bar.set_postfix(extra, refresh=True)

    try:
        return client.wait(job_id, show, timeout=timeout)
    finally:
        bar.close()
