"""`POST /v1/verify`: likelihood quantiles of given images under one model version.

Likelihoods need torch, which the API process never imports, so the computation runs in a child
process: `python -m console verify --model CKPT --images DIR --remember PATH --json`, which prints
`{"images": [{"name", "bpd", "quantile"}, ...], ...}` on stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fastapi import UploadFile
from sqlalchemy.orm import Session

from app import registry, revisions, uploads
from app.errors import ApiError
from app.settings import Settings
from app.storage import Storage


def verify(session: Session, storage: Storage, settings: Settings, model_id: str, version: int | None,
           images: list[UploadFile]) -> dict[str, Any]:
    model = registry.get_model(session, model_id)
    row = registry.get_version(session, model_id, version or model.current_version)
    groups = {"images": images}
    uploads.check_caps(groups, settings)
    hashes = uploads.hash_all(groups)
    incoming = uploads.inspect_all(groups, hashes, model.image_size, model.channels, settings)
    with tempfile.TemporaryDirectory(prefix="taming-verify-") as tmp:
        work = Path(tmp)
        checkpoint = work / "model.safetensors"
        storage.download(row.checkpoint_key, checkpoint)
        remember = _download_remember(storage, revisions.live_keys(session, storage, model), work / "remember")
        (work / "images").mkdir()
        for item in incoming:
            item.upload.file.seek(0)
            (work / "images" / f"{item.index:04d}{item.info.ext}").write_bytes(item.upload.file.read())
        result = _run(checkpoint, work / "images", remember, settings.verify_timeout_seconds)
    for item, out in zip(incoming, result.get("images", []), strict=False):
        out.update({"name": item.name, "sha256": item.sha256, "excluded_reason": item.info.excluded_reason})
    return {"model_id": model.id, "version": row.version, "sha256": row.sha256, **result}


def _download_remember(storage: Storage, keys: list[str], folder: Path) -> Path:
    folder.mkdir()
    for key in keys:
        storage.download(key, folder / key.rsplit("/", 1)[-1])
    npz = folder / "remember.npz"
    return npz if npz.exists() else folder


def _run(checkpoint: Path, images: Path, remember: Path, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "console", "verify", "--model", str(checkpoint), "--images", str(images),
           "--remember", str(remember), "--json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ApiError(503, "verify_timeout", f"the likelihood computation took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
        raise ApiError(503, "verify_unavailable", f"the likelihood computation failed: {tail[0]}")
    try:
        parsed = json.loads(done.stdout)
        assert isinstance(parsed, dict)
        return parsed
    except (ValueError, AssertionError):
        raise ApiError(503, "verify_unavailable", "the likelihood computation printed no JSON object") from None
