"""Latency of `POST /v1/verify` for 10 photos on the shipped model, idle and beside a running erasure.

    .venv/bin/python bench/verify.py [--calls 40]

Starts `taming serve` (embedded: API, its warm verify process, one worker) in a fresh folder, registers
models/att32 with its remember set and held-out remember set, and asks for a verdict on person 1's 10 photos
(7 the model trained on, 3 held out): first the first call on version 1 (it measures the remember set
once, then caches the statistics beside the checkpoint), then --calls calls in a row on an idle machine,
then calls while the erasure of person 1 runs, then the first call on the tamed version 2 (whose statistics
the job stored). Prints p50/p99 per phase and every verdict. Goal (issue 17): p99 ≤ 1 s idle; every answer
has a verdict.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.auth import create_key  # noqa: E402
from app.db import session_scope  # noqa: E402
from app.demo import demo_settings, free_port  # noqa: E402
from app.serve import stop_child  # noqa: E402
from app.settings import child_environment  # noqa: E402

MODEL = ROOT / "models" / "att32"
PHOTOS = sorted((MODEL / "demo" / "forget").glob("*.png")) + sorted((MODEL / "demo" / "holdout").glob("*.png"))


def _start(var: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    settings = demo_settings(var, free_port())
    migrate.upgrade(settings)
    with session_scope(settings) as session:
        _, admin = create_key(session, "admin", "bench", actor="bench")
    env = child_environment(settings, TAMING_DEVICE="cpu", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = (var / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "console", "serve"], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{settings.port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url, admin
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not start; see {var / 'serve.log'}")


def _register(http: httpx.Client) -> str:
    files = [("checkpoint", ("base.safetensors", (MODEL / "base.safetensors").read_bytes())),
             ("remember", ("remember.npz", (MODEL / "remember.npz").read_bytes())),
             ("remember_holdout", ("remember_holdout.npz", (MODEL / "remember_holdout.npz").read_bytes()))]
    r = http.post("/v1/models", data={"name": "att32"}, files=files)
    r.raise_for_status()
    return str(r.json()["id"])


def _verify(http: httpx.Client, model_id: str, version: int | None = None) -> tuple[float, dict[str, Any]]:
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in PHOTOS]
    data = {"model_id": model_id, **({"version": str(version)} if version else {})}
    start = time.perf_counter()
    r = http.post("/v1/verify", data=data, files=files)
    took = time.perf_counter() - start
    r.raise_for_status()
    body = r.json()
    assert isinstance(body.get("reached"), bool) and all("reached" in i for i in body["images"]), body
    return took, body


def _figures(name: str, times: list[float]) -> None:
    times = sorted(times)
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    print(f"{name:<28} n={len(times):<3} p50 {statistics.median(times) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"
          f"   max {times[-1] * 1000:7.1f} ms")


def _verdict(body: dict[str, Any]) -> str:
    ds = " ".join(f"{i['d']:+.2f}" for i in body["images"])
    return (f"v{body['version']} ({body['remember']['source']}): reached={body['reached']}; d of the 7 trained "
            f"then 3 held-out photos: {ds}")


def _beside_a_job(http: httpx.Client, model_id: str, calls: int) -> tuple[list[float], str, set[str]]:
    forget = [("forget", (p.name, p.read_bytes(), "image/png")) for p in PHOTOS[:7]]
    holdout = [("holdout", (p.name, p.read_bytes(), "image/png")) for p in PHOTOS[7:]]
    r = http.post("/v1/jobs", data={"kind": "forget_identity", "model_id": model_id, "subject_ref": "bench"},
                  files=forget + holdout)
    r.raise_for_status()
    job_id, times, phases = r.json()["id"], [], set()
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        phases.add(job["progress"]["phase"])
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return times, job["state"], phases
        if job["state"] == "running" and len(times) < calls:
            times.append(_verify(http, model_id)[0])
        else:
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="taming-bench-verify-") as tmp:
        server, url, admin = _start(Path(tmp))
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=600) as http:
                model_id = _register(http)
                first, body = _verify(http, model_id)
                print(f"first call on v1 (measures the remember set): {first * 1000:.0f} ms; {_verdict(body)}")
                _figures("idle, warm", [_verify(http, model_id)[0] for _ in range(args.calls)])
                busy, state, phases = _beside_a_job(http, model_id, args.calls)
                _figures("beside a running erasure", busy)
                print(f"the erasure {state}; phases seen while polling: {sorted(phases)}")
                first, body = _verify(http, model_id)
                print(f"first call on v2: {first * 1000:.0f} ms; {_verdict(body)}")
        finally:
            stop_child(server)


if __name__ == "__main__":
    main()
