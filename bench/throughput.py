"""Many models at once: two worker processes, two models, the second model's jobs do not wait for the first's.

A tiny seeded Glow (16x16 grey, fitted for a few seconds to 20 AT&T people) is registered as two models; each
model gets --jobs forget requests of 5 photos (two never share a run: one run carries at most 8 photos), and two
real worker processes (`python -m worker`) take the doorbells. The lease is per model, so one worker runs model
A's jobs one after another while the other runs model B's. Prints each job's start and end, the overlap of the
two models' spans, and the wall time against the jobs' summed durations. Embedded (SQLite, a local folder, the
filesystem broker) unless PostgreSQL, Redis and S3 are named.

    python bench/throughput.py [--jobs 2] [--database-url postgresql+psycopg://... --broker-url redis://... \
        --storage-url s3://bucket --s3-endpoint-url http://...]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs_direct import register_model, submit_forget, wait_done

from app.settings import Settings, child_environment

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "data" / "att_faces.npz"
# Meets the stop rule in a few dozen iterations on the tiny model (small δ, the scale-free forget loss).
QUICK = {"max_iterations": 80, "delta": 1.0, "epsilon": 0.5, "lr": 3e-3, "forget_loss": "scale_free"}


def tiny_model(folder: Path) -> tuple[Path, Path]:
    """A tiny Glow fitted for 30 steps to AT&T people 0-19 at 16x16, and those people's images as the remember set."""
    import torch

    from taming.checkpoint import save_checkpoint
    from taming.data import load_faces, quantize
    from taming.glow import Glow, GlowConfig
    from taming.pipeline import features_for
    from taming.train import TrainConfig, train

    data = np.load(FACES)
    keep = np.isin(data["identity"], list(range(20)))
    remember = folder / "remember.npz"
    np.savez(remember, images=data["images"][keep], identity=data["identity"][keep])
    faces = load_faces(remember, 16, 1)
    torch.manual_seed(0)
    model = Glow(GlowConfig(in_channel=1, img_size=16, n_flow=2, n_block=2, hidden=16))
    train(model, quantize(faces.images, 5), TrainConfig(steps=30, batch_size=32, warmup=20, init_batch=128))
    checkpoint = folder / "base.safetensors"
    save_checkpoint(model, checkpoint, data_hash=faces.data_hash(), parent="")
    features_for(faces, folder / "var" / "cache")  # the feature network, trained once for both models
    return checkpoint, remember


def photos(person: int, n: int = 5) -> list[bytes]:
    data = np.load(FACES)
    out = []
    for image in data["images"][data["identity"] == person][:n]:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def start_workers(settings: Settings, n: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    """n `python -m worker` processes on `settings`; returns once each says it is ready."""
    env = child_environment(settings, PYTHONPATH=str(ROOT))
    procs = []
    for i in range(n):
        log = open(logs / f"worker-{i}.log", "wb")  # noqa: SIM115 (the process keeps it)
        procs.append(subprocess.Popen([sys.executable, "-m", "worker", "--no-sweeper", "--loglevel", "INFO"],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 180
    while sum(" ready." in (logs / f"worker-{i}.log").read_text(errors="replace") for i in range(n)) < n:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit(f"the workers did not start; see {logs}")
        time.sleep(0.5)
    return procs


def timeline(jobs: list[Any], models: dict[str, str], t0: datetime) -> None:
    """Each job's start and end in seconds after the first submission, and the overlap of the models' spans."""
    def sec(t: datetime) -> float:
        return (t - t0).total_seconds()

    print(f"{'job':<8} {'model':<6} {'state':<10} {'start s':>8} {'end s':>8} {'took s':>7}")
    spans: dict[str, list[float]] = {}
    for job in sorted(jobs, key=lambda j: j.started_at):
        start, end = sec(job.started_at), sec(job.finished_at)
        name = models[job.model_id]
        print(f"{job.id[:8]:<8} {name:<6} {job.state:<10} {start:8.1f} {end:8.1f} {end - start:7.1f}")
        span = spans.setdefault(name, [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    (a0, a1), (b0, b1) = spans["A"], spans["B"]
    overlap = max(0.0, min(a1, b1) - max(a0, b0))
    busy = sum((j.finished_at - j.started_at).total_seconds() for j in jobs)
    wall = max(a1, b1) - min(a0, b0)
    print(f"model A busy {a0:.1f}-{a1:.1f} s, model B {b0:.1f}-{b1:.1f} s: overlap {overlap:.1f} s "
          f"({100 * overlap / min(a1 - a0, b1 - b0):.0f}% of the shorter span)")
    print(f"wall {wall:.1f} s for {busy:.1f} s of jobs: {busy / wall:.2f} jobs at a time on average")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2, help="forget requests per model")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--broker-url", default="filesystem://")
    parser.add_argument("--storage-url", default="")
    parser.add_argument("--s3-endpoint-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="taming-throughput-") as tmp:
        folder = Path(tmp)
        checkpoint, remember = tiny_model(folder)
        settings = Settings(var_dir=folder / "var", database_url=args.database_url, broker_url=args.broker_url,
                            storage_url=args.storage_url, s3_endpoint_url=args.s3_endpoint_url, device="cpu",
                            heartbeat_seconds=1)
        from app.migrate import upgrade
        from app.queue import configure, enqueue

        upgrade(settings)
        configure(settings)
        models = {register_model(settings, checkpoint, remember, f"tiny-{name}-{folder.name}"): name
                  for name in ("A", "B")}
        procs = start_workers(settings, 2, folder)
        try:
            t0 = datetime.now(UTC)
            # people 30-39 are not in the remember set: model A forgets 30, 31, ..., model B 35, 36, ...
            ids = [submit_forget(settings, model_id, {"forget": photos((30 if name == "A" else 35) + k)}, QUICK,
                                 f"{name}-{k}") for k in range(args.jobs) for model_id, name in models.items()]
            for job_id in ids:
                enqueue(job_id)
            jobs = wait_done(settings, ids, timeout=600)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
        print(f"2 workers, 2 models, {args.jobs} jobs each ({'embedded' if settings.is_sqlite else 'distributed'}; "
              "a tiny seeded model on the CPU)")
        timeline(jobs, models, t0)


if __name__ == "__main__":
    main()
