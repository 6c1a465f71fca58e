"""`python -m worker.verify_server`: the warm process behind `POST /v1/verify`.

The API never imports torch, so it keeps one of these as a child (app/verify.py) and speaks JSON lines
with it: one request per line on stdin, one answer per line on the process's original stdout (whatever
else writes to stdout is sent to stderr, so that the channel stays clean). The first line it writes is
`{"ready": true}`, once torch and the library are imported. Models stay loaded and remember statistics
stay in memory, both keyed by the checkpoint's SHA-256; the statistics are also shared through the object
store (worker/version_stats.py). It exits when stdin closes, i.e. when the API goes away.

Request: rules.verify_protocol.VerifyAsk; answer: VerifyAnswer (a verdict, or `ok: false` with a code and message).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from app.settings import Settings, get_settings
from app.storage import get_storage
from rules.verify_protocol import ImageRef, VerdictOut, VerifyAnswer, VerifyAsk
from taming.checkpoint import CheckpointError, load_checkpoint
from taming.data import DataError, FaceSet, load_faces, to_square
from taming.glow import Glow
from taming.verify import RememberStats, check_images, remember_stats
from worker import version_stats
from worker.execute import pick_device

log = logging.getLogger(__name__)
MAX_MODELS = 4  # loaded models kept warm, least recently used dropped first


class RequestProblem(ValueError):
    """A request the process cannot answer; `code` and the message go back to the API."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class VerifyService:
    """Answers verify requests with models and statistics cached by checkpoint SHA-256."""

    def __init__(self, settings: Settings) -> None:
        self.storage = get_storage(settings)
        self.device = pick_device(settings.device)
        self.cache_dir = Path(settings.var_dir) / "cache" / "verify"
        self.models: OrderedDict[str, Glow] = OrderedDict()
        self.stats: dict[str, tuple[RememberStats, str]] = {}

    def handle(self, req: VerifyAsk) -> VerifyAnswer:
        started = time.perf_counter()
        model = self.model(req.sha256, req.checkpoint_key)
        stats, source = self.stats_for(req, model)
        images, names, counted = _load_images(req.images, model.config.img_size, model.config.in_channel)
        verdict = check_images(model, images, names, stats, model.config.n_bits, delta=req.delta,
                               epsilon=req.epsilon, counted=counted)
        return VerifyAnswer(id=req.id, ok=True, verdict=VerdictOut.model_validate(verdict.to_dict()),
                            stats_source=source, seconds=time.perf_counter() - started)

    def model(self, sha256: str, checkpoint_key: str) -> Glow:
        if sha256 in self.models:
            self.models.move_to_end(sha256)
            return self.models[sha256]
        path = self.cache_dir / f"{sha256}.safetensors"
        if not path.exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            self.storage.download(checkpoint_key, tmp)
            tmp.replace(path)
        try:
            model = load_checkpoint(path, expected_sha256=sha256)[0].to(self.device)
        except CheckpointError:
            path.unlink(missing_ok=True)  # a bad copy must not stay cached
            raise RequestProblem("invalid_checkpoint", "the stored checkpoint does not match its SHA-256") from None
        self.models[sha256] = model
        while len(self.models) > MAX_MODELS:
            self.models.popitem(last=False)
        return model

    def stats_for(self, req: VerifyAsk, model: Glow) -> tuple[RememberStats, str]:
        """This version's μ_R, σ_R: from memory, else the object store, else computed once and stored."""
        sha = req.sha256
        if sha in self.stats:
            return self.stats[sha]
        stored = version_stats.read(self.storage, req.model_id, req.version, sha)
        if stored is not None:
            found = RememberStats.from_dict(stored), str(stored.get("source", "run"))
        else:
            stats = remember_stats(model, self._remember(req).images, model.config.n_bits)
            version_stats.write(self.storage, req.model_id, req.version, sha, stats.to_dict(),
                                "reference_set")
            found = stats, "reference_set"
        self.stats[sha] = found
        return found

    def _remember(self, req: VerifyAsk) -> FaceSet:
        """The live remember-set revision's reference images (their keys come with the request)."""
        with tempfile.TemporaryDirectory(prefix="taming-verify-remember-") as tmp:
            folder = Path(tmp)
            paths = []
            for i, key in enumerate(req.remember_keys):
                paths.append(folder / f"{i:06d}{Path(key).suffix.lower()}")
                self.storage.download(key, paths[-1])
            source = paths[0] if len(paths) == 1 and paths[0].suffix == ".npz" else folder
            return load_faces(source, req.image_size, req.channels)


def _load_images(items: list[ImageRef], size: int, channels: int) -> tuple[torch.Tensor, list[str], list[bool]]:
    arrays = []
    for item in items:
        try:
            with Image.open(item.path) as img:
                arrays.append(to_square(img, size, channels))
        except (UnidentifiedImageError, OSError, DataError) as exc:
            raise RequestProblem("invalid_image", f"{item.name}: {exc}") from None
    if not arrays:
        raise RequestProblem("no_images", "no images to verify")
    images = torch.from_numpy(np.stack(arrays))
    return images, [i.name for i in items], [i.counted for i in items]


def answer(service: VerifyService, line: str) -> VerifyAnswer:
    """One request line -> one answer (never raises: the process must outlive a bad request)."""
    try:
        req = VerifyAsk.model_validate_json(line)
    except ValidationError as exc:
        return VerifyAnswer(id=_ident(line), ok=False, code="bad_request", message=f"not a verify request: {exc}")
    try:
        return service.handle(req)
    except RequestProblem as exc:
        return VerifyAnswer(id=req.id, ok=False, code=exc.code, message=str(exc))
    except (DataError, ValueError) as exc:
        return VerifyAnswer(id=req.id, ok=False, code="invalid_data", message=str(exc))
    except KeyError as exc:
        return VerifyAnswer(id=req.id, ok=False, code="missing_object", message=f"not in storage: {exc}")
    except Exception:
        log.exception("verify request failed")
        return VerifyAnswer(id=req.id, ok=False, code="verify_failed", message="the likelihood computation failed")


def _ident(line: str) -> int | None:
    """The id of a request that failed validation, so that the API can still match the answer."""
    try:
        ident = json.loads(line).get("id")
    except (ValueError, AttributeError):
        return None
    return ident if isinstance(ident, int) else None


def serve(channel: TextIO, requests: TextIO, settings: Settings) -> None:
    service = VerifyService(settings)
    channel.write(json.dumps({"ready": True}) + "\n")
    channel.flush()
    for line in requests:
        if line.strip():
            channel.write(answer(service, line).model_dump_json() + "\n")
            channel.flush()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s verify-server: %(message)s")
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # a stray print (or a library's) must not corrupt the answers
    sys.stdout = sys.stderr
    serve(channel, sys.stdin, get_settings())


if __name__ == "__main__":
    main()
