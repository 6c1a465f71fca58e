"""`POST /v1/verify`: images against a model version's threshold, and the verdict ("is this person forgotten?").

Likelihoods need torch, which the API process never imports, so the API keeps one warm child process,
`python -m worker.verify_server`, started on first use (or at start-up, `TAMING_VERIFY_PRESTART`), and
speaks JSON lines with it over a pipe. The child keeps models and each version's remember statistics
loaded; requests go to it one at a time. A child that dies is started again on the next request; one that
overruns `verify_timeout_seconds` is killed, so that a stuck computation never blocks the next caller.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import UploadFile
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app import metrics, registry, revisions, uploads
from app.errors import ApiError
from app.schemas import RememberStatsOut, VerifyImage, VerifyOut
from app.settings import Settings, child_environment
from app.storage import Storage
from rules.verify_protocol import ImageRef, VerdictOut, VerifyAnswer, VerifyAsk

log = logging.getLogger(__name__)
STOP_GRACE_S = 5


class Verifier:
    """The API's warm verify process: one request at a time, restarted when it dies."""

    def __init__(self, settings: Settings, command: list[str] | None = None) -> None:
        self.settings = settings
        self.command = command or [sys.executable, "-m", "worker.verify_server"]
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ready = False
        self._ids = itertools.count(1)

    def start(self) -> None:
        """Start the child now (it imports torch while the API serves other requests)."""
        with self._lock:
            self._spawn_if_needed()

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its answer; ApiError 503 when busy, dead or too slow."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            raise ApiError(503, "verify_busy", f"other verify requests kept the service busy for {timeout:.0f} s",
                           headers={"Retry-After": "5"})
        try:
            self._spawn_if_needed()
            if not self._ready:
                self._ready = self._next_line(deadline) == {"ready": True}
                if not self._ready:
                    raise self._lost("the verify process did not start")
            ident = next(self._ids)
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({**request, "id": ident}) + "\n")
            self._proc.stdin.flush()
            answer = self._next_line(deadline)
            if answer is None or answer.get("id") != ident:
                raise self._lost("the verify process stopped")
            return answer
        except (BrokenPipeError, OSError):
            raise self._lost("the verify process stopped") from None
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the child: closing its stdin ends it; a child that lingers, or is busy with a request, is killed."""
        idle = self._lock.acquire(timeout=STOP_GRACE_S)
        try:
            self._stop(graceful=idle)
        finally:
            if idle:
                self._lock.release()

    def _spawn_if_needed(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._lines, self._ready = queue.Queue(), False
        self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env=child_environment(self.settings))
        threading.Thread(target=_pump, args=(self._proc, self._lines), name="verify-reader", daemon=True).start()

    def _next_line(self, deadline: float) -> dict[str, Any] | None:
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            self._stop(graceful=False)  # it is stuck computing: waiting for it helps nobody
            raise ApiError(503, "verify_timeout", "the likelihood computation took more than "
                           f"{self.settings.verify_timeout_seconds:.0f} s") from None
        if line is None:
            return None
        try:
            parsed = json.loads(line)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def _lost(self, message: str) -> ApiError:
        self._stop(graceful=False)
        return ApiError(503, "verify_unavailable", message)

    def _stop(self, graceful: bool = True) -> None:
        proc, self._proc, self._ready = self._proc, None, False
        if proc is None or proc.poll() is not None:
            return
        if graceful:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(STOP_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait()


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    """Move the child's answer lines into a queue (so that waiting for one can time out)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def verify(session: Session, storage: Storage, settings: Settings, verifier: Verifier, model_id: str,
           version: int | None, images: list[UploadFile], delta: float, epsilon: float | None) -> VerifyOut:
    """Check the uploads, hand them to the warm process, and shape its answer."""
    started = time.perf_counter()
    outcome = "error"
    try:
        result = _verify(session, storage, settings, verifier, model_id, version, images, delta, epsilon)
        outcome = "forgotten" if result.reached else "not_forgotten"
        return result
    finally:
        metrics.VERIFY_SECONDS.labels(outcome).observe(time.perf_counter() - started)


def _verify(session: Session, storage: Storage, settings: Settings, verifier: Verifier, model_id: str,
            version: int | None, images: list[UploadFile], delta: float, epsilon: float | None) -> VerifyOut:
    if delta == 0:
        raise ApiError(422, "invalid_parameters", "delta must not be 0")
    model = registry.get_model(session, model_id)
    row = registry.get_version(session, model_id, version or model.current_version)
    groups = {"images": images}
    uploads.check_caps(groups, settings)
    hashes = uploads.hash_all(groups)
    incoming = uploads.inspect_all(groups, hashes, model.image_size, model.channels, settings)
    with tempfile.TemporaryDirectory(prefix="taming-verify-") as tmp:
        items = []
        for item in incoming:
            path = Path(tmp) / f"{item.index:04d}{item.info.ext}"
            item.upload.file.seek(0)
            path.write_bytes(item.upload.file.read())
            items.append(ImageRef(path=str(path), name=item.name, counted=item.info.excluded_reason is None))
        request = VerifyAsk(model_id=model.id, version=row.version, sha256=row.sha256,
                            checkpoint_key=row.checkpoint_key,
                            remember_keys=revisions.live_keys(session, storage, model),
                            image_size=model.image_size, channels=model.channels, images=items, delta=delta,
                            epsilon=epsilon)
        answer = _read(verifier.ask(request.model_dump(mode="json"), settings.verify_timeout_seconds))
    if not answer.ok or answer.verdict is None:
        status = 422 if answer.code in ("invalid_image", "no_images", "invalid_data") else 503
        raise ApiError(status, answer.code or "verify_failed", answer.message or "")
    return _shape(answer.verdict, answer, model.id, row.version, row.sha256, incoming)


def _read(raw: dict[str, Any]) -> VerifyAnswer:
    try:
        return VerifyAnswer.model_validate(raw)
    except ValidationError:
        log.error("the verify process answered out of protocol: %.300s", raw)
        raise ApiError(503, "verify_unavailable", "the verify process answered out of protocol") from None


def _shape(verdict: VerdictOut, answer: VerifyAnswer, model_id: str, version: int, sha256: str,
           incoming: list[uploads.Incoming]) -> VerifyOut:
    images = [VerifyImage(**{**out.model_dump(), "name": item.name, "sha256": item.sha256,
                             "excluded_reason": item.info.excluded_reason})
              for item, out in zip(incoming, verdict.images, strict=True)]
    remember = RememberStatsOut(**{**verdict.remember.model_dump(), "source": answer.stats_source})
    return VerifyOut(model_id=model_id, version=version, sha256=sha256, delta=verdict.delta,
                     epsilon=verdict.epsilon, threshold=verdict.threshold, remember=remember, images=images,
                     reached=verdict.reached, counted=verdict.counted, summary=verdict.summary,
                     seconds=answer.seconds or 0.0)
