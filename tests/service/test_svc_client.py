"""Checkpoint uploads (safetensors header, rosinality conversion), verify, and the `taming submit` client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from svc_api import Api
from svc_media import checkpoint, png

import app.checkpoints
import app.verify
from app.client import ApiClient, ApiFailure, expand
from app.submit import outcome, parse_params


def test_rosinality_state_dict_is_converted(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def fake_convert(state: Path, args: Path, out: Path) -> None:  # the real one runs torch in a child
        calls.append(json.loads(args.read_text()))
        out.write_bytes(checkpoint(16, 1))

    monkeypatch.setattr(app.registry, "convert_rosinality", fake_convert)
    files = [("checkpoint", ("model.pt", b"PK\x03\x04 a torch zip", "application/octet-stream")),
             ("args", ("args.json", json.dumps({"n_flow": 2, "img_size": 16}).encode(), "application/json")),
             ("remember", ("r.png", png(16), "image/png"))]
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "ros"}, files=files)
    assert r.status_code == 201, r.text
    assert calls == [{"n_flow": 2, "img_size": 16}] and r.json()["image_size"] == 16


def test_conversion_failure_is_a_422(tmp_path: Path) -> None:
    with pytest.raises(app.checkpoints.CheckpointProblem):
        app.checkpoints.convert_rosinality(tmp_path / "missing.pt", tmp_path / "args.json", tmp_path / "o")


def test_wrong_format_metadata(api: Api) -> None:
    blob = checkpoint().replace(b"taming-glow/1", b"taming-glow/9")
    files = [("checkpoint", ("c", blob, "x")), ("remember", ("r.png", png(16), "image/png"))]
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "m"}, files=files)
    assert r.status_code == 422 and "taming-glow/9" in r.json()["error"]["message"]


def test_npz_remember_set(api: Api) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((2, 1, 16, 16), dtype=np.uint8))
    files = [("checkpoint", ("c", checkpoint(), "x")), ("remember", ("r.npz", buf.getvalue(), "x"))]
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "npz"}, files=files)
    assert r.status_code == 201, r.text
    assert api.storage.list(f"remember/{r.json()['id']}/") == [f"remember/{r.json()['id']}/remember.npz"]


def test_verify(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(ckpt: Path, images: Path, remember: Path, timeout: float) -> dict[str, Any]:
        seen.update(ckpt=ckpt.read_bytes()[8:9], images=sorted(p.name for p in images.iterdir()),
                    remember=sorted(p.name for p in remember.iterdir()))
        return {"images": [{"bpd": 5.0, "quantile": 0.01}]}

    monkeypatch.setattr(app.verify, "_run", fake_run)
    model = api.register_model()
    files = [("images", ("me.png", png(32), "image/png"))]
    r = api.client.post("/v1/verify", headers=api.h("auditor"), data={"model_id": model["id"]}, files=files)
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["quantile"] == 0.01 and r.json()["images"][0]["name"] == "me.png"
    assert seen == {"ckpt": b"{", "images": ["0000.png"], "remember": ["00000.png", "00001.png", "00002.png"]}


def test_submit_client_and_exit_status(api: Api, tmp_path: Path) -> None:
    model = api.register_model()
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png(32, seed=i))
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    api.client.headers.clear()
    client = ApiClient("http://testserver", api.keys["operator"], http=api.client)
    job = client.submit("forget_identity", model["id"], "t", {"forget": expand([tmp_path / "imgs"])},
                        parse_params(("delta=3", "forget_loss=scale_free")))
    assert job["parameters"]["delta"] == 3 and job["parameters"]["forget_loss"] == "scale_free"
    assert len(job["uploads"]) == 2
    assert outcome(client, job) == 4  # still queued: not a success (the timed-out status)
    with pytest.raises(ApiFailure, match="no model"):
        client.submit("forget_identity", "x" * 32, "t", {"forget": expand([tmp_path / "imgs"])})
