"""The embedded service end to end: `taming serve` (API + worker + sweeper) on the shipped AT&T model,
an erasure over HTTP, the whole service killed mid-job and started again; the job finishes, resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import migrate
from app.auth import create_key
from app.client import ApiClient
from app.db import session_scope
from app.demo import demo_settings, free_port
from app.settings import child_environment

pytestmark = pytest.mark.slow  # the whole service in processes, killed: `make test-all` and CI

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "att32"


def _serve(settings: Any, log: Path) -> subprocess.Popen[bytes]:
    env = child_environment(settings, TAMING_CHECKPOINT_EVERY="10", TAMING_STALE_AFTER_SECONDS="5",
                            TAMING_LEASE_SECONDS="5", TAMING_SWEEP_INTERVAL_SECONDS="1",
                            TAMING_HEARTBEAT_SECONDS="1", TAMING_DEVICE="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "console", "serve"], env=env, cwd=ROOT,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{settings.port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError(f"taming serve did not start: {log.read_text()[-2000:]}")


def _kill_all(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the API, its worker and everything they started, at once
    proc.wait(timeout=10)


def _wait(client: ApiClient, job_id: str, done: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if done(job):
            return dict(job)
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} stuck: {client.job(job_id)}")


def test_killing_the_whole_service_mid_job_loses_nothing(tmp_path: Path) -> None:
    settings = demo_settings(tmp_path / "var", free_port())
    migrate.upgrade(settings)
    with session_scope(settings) as session:
        _, admin = create_key(session, "admin", "admin")
        _, operator = create_key(session, "operator", "operator")
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{settings.port}"
    server = _serve(settings, log)
    try:
        model = ApiClient(url, admin).register_model("att32", MODEL / "base.safetensors", [MODEL / "remember.npz"])
        client = ApiClient(url, operator)
        forget = sorted((MODEL / "demo" / "forget").glob("*.png"))
        job = client.submit("forget_identity", model["id"], "ticket-1", {"forget": forget})
        saved = _wait(client, job["id"], lambda j: (j["progress"] or {}).get("iteration", 0) >= 12, 300)
        assert saved["state"] == "running"
        _kill_all(server)
        server = _serve(settings, log)
        final = _wait(client, job["id"], lambda j: j["state"] in ("succeeded", "failed", "cancelled"), 600)
        assert final["state"] == "succeeded", final["error"]
        assert final["attempts"] == 2 and final["version"] == 2
        report = client.report(job["id"])
        assert report["stopping"]["criterion_met"] is True
        assert report["job"]["resumed_from_iteration"] >= 10  # the second attempt did not start from zero
        versions = httpx.get(f"{url}/v1/models/{model['id']}/versions",
                             headers={"Authorization": f"Bearer {admin}"}).json()["items"]
        assert [(v["version"], v["parent"]) for v in versions] == [(1, None), (2, 1)]
        assert not list((settings.var_dir / "objects" / "uploads").rglob("*.png"))
    finally:
        if server.poll() is None:
            _kill_all(server)


def test_rosinality_upload_and_verify_run_the_real_library(tmp_path: Path) -> None:
    import json

    import torch
    from fastapi.testclient import TestClient

    from app.main import create_app
    from taming.checkpoint import load_checkpoint

    settings = demo_settings(tmp_path / "var", free_port())
    migrate.upgrade(settings)
    with session_scope(settings) as session:
        _, admin = create_key(session, "admin", "admin")
    glow, _ = load_checkpoint(MODEL / "base.safetensors")
    torch.save({"module." + k: v for k, v in glow.state_dict().items()}, tmp_path / "model.pt")
    c = glow.config
    args = {"n_flow": c.n_flow, "n_block": c.n_block, "affine": c.affine, "no_lu": not c.conv_lu,
            "n_bits": c.n_bits, "img_size": c.img_size}
    (tmp_path / "args.json").write_text(json.dumps(args))
    with TestClient(create_app(settings)) as http:
        client = ApiClient("http://testserver", admin, http=http)
        model = client.register_model("imported", tmp_path / "model.pt", [MODEL / "remember.npz"],
                                      args=tmp_path / "args.json")
        assert model["image_size"] == 32 and model["channels"] == 1
        photos = sorted((MODEL / "demo" / "forget").glob("*.png"))  # photos the base model trained on
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in photos]
        r = http.post("/v1/verify", headers={"Authorization": f"Bearer {admin}"}, data={"model_id": model["id"]},
                      files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    items = body["images"]
    assert [i["name"] for i in items] == [p.name for p in photos]
    assert all(0 < i["quantile"] < 1 and i["bpd"] > 0 for i in items)
    # the base model has forgotten nobody: the person's photos are far short of μ_R + 4σ_R
    assert body["reached"] is False and body["threshold"] > body["remember"]["mu"]
    assert all(not i["reached"] and i["d"] < -body["epsilon"] for i in items)
