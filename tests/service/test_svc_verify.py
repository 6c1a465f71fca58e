"""`POST /v1/verify` on a real (tiny) model: the warm process, the version's cached statistics, and the same
verdict as `taming verify` on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from svc_api import Api
from svc_media import png

from app.settings import Settings

SIZE = 16


@pytest.fixture
def tiny_model(tmp_path: Path) -> dict[str, Any]:
    """A seeded tiny Glow (ActNorm initialised on noise) and its remember and query images as PNG files."""
    import torch

    from taming.checkpoint import save_checkpoint
    from taming.glow import Glow, GlowConfig

    torch.manual_seed(0)
    model = Glow(GlowConfig(in_channel=1, img_size=SIZE, n_flow=2, n_block=2, hidden=8, n_bits=5))
    with torch.no_grad():
        model(torch.rand(16, 1, SIZE, SIZE) - 0.5)
    path = tmp_path / "tiny.safetensors"
    sha = save_checkpoint(model, path)
    folders = {"remember": [png(SIZE, seed=i) for i in range(12)],
               "query": [png(SIZE, seed=100 + i) for i in range(3)] + [png(SIZE, level=2)]}
    for name, blobs in folders.items():
        (tmp_path / name).mkdir()
        for i, blob in enumerate(blobs):
            (tmp_path / name / f"{i:02d}.png").write_bytes(blob)
    return {"path": path, "sha256": sha, "remember": tmp_path / "remember", "query": tmp_path / "query"}


def _files(folder: Path, field: str) -> list[Any]:
    return [(field, (p.name, p.read_bytes(), "image/png")) for p in sorted(folder.iterdir())]


def _register(api: Api, m: dict[str, Any]) -> str:
    files = [("checkpoint", ("tiny.safetensors", m["path"].read_bytes(), "application/octet-stream")),
             *_files(m["remember"], "remember")]
    r = api.client.post("/v1/models", headers=api.h("admin"), data={"name": "tiny"}, files=files)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_verify_service_caches_statistics_per_version(settings: Settings, tiny_model: dict[str, Any],
                                                      tmp_path: Path) -> None:
    from app.storage import get_storage
    from rules.verify_protocol import VerifyAsk
    from worker import version_stats
    from worker.verify_server import VerifyService

    storage = get_storage(settings)
    storage.put_bytes("checkpoints/m/v1.safetensors", tiny_model["path"].read_bytes())
    keys = [f"remember/m/{p.name}" for p in sorted(tiny_model["remember"].iterdir())]
    for key, p in zip(keys, sorted(tiny_model["remember"].iterdir()), strict=True):
        storage.put_bytes(key, p.read_bytes())
    request = VerifyAsk.model_validate({"model_id": "m", "version": 1, "sha256": tiny_model["sha256"],
               "checkpoint_key": "checkpoints/m/v1.safetensors", "remember_keys": keys,
               "image_size": SIZE, "channels": 1, "delta": 1.0, "epsilon": None,
               "images": [{"path": str(p), "name": p.name, "counted": True}
                          for p in sorted(tiny_model["query"].iterdir())[:3]]})
    first = VerifyService(settings).handle(request).model_dump()
    stored = version_stats.read(storage, "m", 1, tiny_model["sha256"])
    assert first["stats_source"] == "reference_set" and stored is not None and stored["n"] == 12
    verdict = first["verdict"]
    assert verdict["threshold"] == pytest.approx(stored["mu"] + 1.0 * stored["sigma"])
    for item in verdict["images"]:
        assert item["d"] == pytest.approx((item["bpd"] - verdict["threshold"]) / stored["sigma"])
        assert item["reached"] == (item["d"] >= -0.15)
    assert verdict["reached"] == all(i["reached"] for i in verdict["images"])

    # A version whose job stored its statistics: a new process reads them instead of measuring again.
    version_stats.write(storage, "m", 1, tiny_model["sha256"], {**stored, "mu": stored["mu"] - 100}, "run")
    again = VerifyService(settings).handle(request).model_dump()
    assert again["stats_source"] == "run" and again["verdict"]["remember"]["mu"] == pytest.approx(stored["mu"] - 100)
    assert again["verdict"]["reached"] is True  # μ_R far below every image: all past the threshold
    # Statistics of another checkpoint under the same key are not trusted.
    assert version_stats.read(storage, "m", 1, "0" * 64) is None


def test_verify_over_http_matches_the_command_line(api: Api, tiny_model: dict[str, Any]) -> None:
    from taming.cli import verify_command

    model_id = _register(api, tiny_model)
    data = {"model_id": model_id, "delta": "1"}
    r = api.client.post("/v1/verify", headers=api.h("auditor"), data=data, files=_files(tiny_model["query"], "images"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["remember"]["source"] == "reference_set" and body["counted"] == 3
    assert [i["counted"] for i in body["images"]] == [True, True, True, False]  # the flat image carries no identity
    assert api.storage.exists(f"stats/{model_id}/v1.json")

    cli = CliRunner().invoke(verify_command, ["--model", str(tiny_model["path"]), "--images",
                                              str(tiny_model["query"]), "--remember", str(tiny_model["remember"]),
                                              "--delta", "1", "--json"])
    assert cli.exit_code == (0 if body["reached"] else 1), cli.output
    local = json.loads(cli.output)
    assert local["reached"] == body["reached"] and local["threshold"] == pytest.approx(body["threshold"])
    for mine, theirs in zip(local["images"], body["images"], strict=True):
        assert (mine["reached"], mine["counted"]) == (theirs["reached"], theirs["counted"])
        assert mine["d"] == pytest.approx(theirs["d"])


def test_a_line_out_of_protocol_gets_a_typed_refusal_with_its_id(settings: Settings) -> None:
    import json

    from worker.verify_server import VerifyService, answer

    out = answer(VerifyService(settings), json.dumps({"id": 7, "model_id": "m", "version": 1}))
    assert out.id == 7 and not out.ok and out.code == "bad_request"
    assert out.message is not None and "sha256" in out.message  # names what is missing
    assert answer(VerifyService(settings), "not json").id is None
