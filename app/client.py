"""A small HTTP client of the API, used by `taming submit`, `taming jobs`, `taming demo` (and usable by scripts).

Every failure is an `ApiFailure` with a one-line message: the API's own `error.message` when it answered,
or what went wrong on the way when it did not (`status` is then None). Nothing here prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from rules.jobs import TERMINAL_STATES

TERMINAL = TERMINAL_STATES
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm")


class ApiFailure(RuntimeError):
    """The API answered with an error (`status` its HTTP status), or could not be reached (`status` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BadInput(ValueError):
    """A path or value given to the client cannot be used (the caller's to fix)."""


def expand(paths: Iterable[str | Path], what: str = "images") -> list[Path]:
    """Files as given, folders replaced by the images inside them (sorted); BadInput for a missing path."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise BadInput(f"{what}: no .png, .jpg or .pgm images in {path}")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise BadInput(f"{what}: no such file or folder: {path}")
    return out


class ApiClient:
    def __init__(self, url: str, key: str | None, http: httpx.Client | None = None, timeout: float = 300) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url
        self.http = http or httpx.Client(base_url=url, timeout=timeout)
        self.http.headers.update(headers)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            raise BadInput(f"{self.url} is not a valid service URL (http://host:port)") from None
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise ApiFailure(f"cannot reach the service at {self.url}: {reason}") from None
        if response.is_error:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300] or response.reason_phrase
            raise ApiFailure(f"HTTP {response.status_code}: {message}", response.status_code)
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def register_model(self, name: str, checkpoint: Path, remember: list[Path], args: Path | None = None) -> Any:
        with ExitStack() as stack:
            files = [("checkpoint", (checkpoint.name, stack.enter_context(checkpoint.open("rb"))))]
            files += [("remember", (p.name, stack.enter_context(p.open("rb")))) for p in remember]
            if args is not None:
                files.append(("args", (args.name, stack.enter_context(args.open("rb")))))
            return self._call("POST", "/v1/models", data={"name": name}, files=files)

    def submit(self, kind: str, model_id: str, subject_ref: str, files: dict[str, list[Path]],
               parameters: dict[str, Any] | None = None, idempotency_key: str | None = None,
               callback_url: str | None = None) -> Any:
        data = {"kind": kind, "model_id": model_id, "subject_ref": subject_ref,
                "parameters": json.dumps(parameters or {})}
        if callback_url:
            data["callback_url"] = callback_url
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with ExitStack() as stack:
            parts = [(field, (p.name, stack.enter_context(p.open("rb")))) for field, ps in files.items() for p in ps]
            return self._call("POST", "/v1/jobs", data=data, files=parts, headers=headers)

    def job(self, job_id: str) -> Any:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def jobs(self, **filters: Any) -> Any:
        """One page of `GET /v1/jobs` (filters: status, kind, model_id, cursor, limit)."""
        return self._call("GET", "/v1/jobs", params={k: v for k, v in filters.items() if v is not None})

    def cancel(self, job_id: str) -> Any:
        return self._call("POST", f"/v1/jobs/{job_id}:cancel")

    def report(self, job_id: str) -> Any:
        return self._call("GET", f"/v1/jobs/{job_id}/report")

    def report_html(self, job_id: str) -> str:
        return str(self._call("GET", f"/v1/jobs/{job_id}/report.html"))

    def wait(self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
             timeout: float = 24 * 3600, poll: float = 1.0, outage: float = 60.0) -> dict[str, Any]:
        """Poll until the job ends or `timeout` seconds pass; returns the last job seen.

        A service that stops answering for less than `outage` seconds (a restart) is waited for.
        """
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        unreachable_since: float | None = None
        while True:
            try:
                last = dict(self.job(job_id))
                unreachable_since = None
            except ApiFailure as exc:
                transient = exc.status is None or exc.status >= 500
                if not transient or last is None:
                    raise
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > outage:
                    raise
            if on_progress is not None and unreachable_since is None:
                on_progress(last)
            assert last is not None
            if last["state"] in TERMINAL or time.monotonic() > deadline:
                return last
            time.sleep(poll)


def wait_with_progress(client: ApiClient, job_id: str, timeout: float = 24 * 3600) -> dict[str, Any]:
    """`client.wait` showing progress on stderr: a bar on a terminal, plain lines otherwise."""
    from app.progress_view import view_for_stderr

    view = view_for_stderr()
    try:
        return client.wait(job_id, view.show, timeout=timeout)
    finally:
        view.close()
