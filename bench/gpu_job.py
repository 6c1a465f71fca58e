"""One real erasure through the worker, embedded mode, on the GPU when there is one (CPU otherwise).

The shipped AT&T model and its remember set are registered, a forget_identity job with the demo person's 7 photos
(and 3 held out) is queued as the API queues it, and the worker's own entry point (`worker.runner.handle_doorbell`,
what the Celery task calls) runs it in this process: lease, download, taming, confirmation, evaluation, reports,
new version. Prints the outcome and the report's timing, and writes them as JSON to --out.

    python bench/gpu_job.py [--max-iterations 100] [--precision tf32] [--out job.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs_direct import job_row, register_model, report, submit_forget

from app.migrate import upgrade
from app.settings import Settings

MODELS = Path(__file__).resolve().parents[1] / "models" / "att32"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-iterations", type=int, default=100, help="the shipped model's person 1 takes ~80")
    parser.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="taming-gpu-job-") as var:
        settings = Settings(var_dir=Path(var), device=args.device, precision=args.precision)
        upgrade(settings)
        model_id = register_model(settings, MODELS / "base.safetensors", MODELS / "remember.npz", "att32")
        images = {field: [p.read_bytes() for p in sorted((MODELS / "demo" / field).glob("*.png"))]
                  for field in ("forget", "holdout")}
        job_id = submit_forget(settings, model_id, images, {"max_iterations": args.max_iterations}, "gpu-check")
        print(f"model {model_id} registered, job {job_id} queued; the worker runs it now", flush=True)
        from worker.runner import handle_doorbell  # imports torch

        started = time.perf_counter()
        outcome = handle_doorbell(job_id, settings)
        wall = time.perf_counter() - started
        job = job_row(settings, job_id)
        figures = {"outcome": outcome, "state": job.state, "error": job.error, "version": job.version,
                   "doorbell_seconds": round(wall, 2)}
        if job.state == "succeeded":
            rep = report(settings, job_id)
            figures.update(iterations=rep["stopping"]["iterations"], criterion_met=rep["stopping"]["criterion_met"],
                           timing=rep["timing"])
    print(json.dumps(figures, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2))
    sys.exit(0 if figures["state"] == "succeeded" else 1)


if __name__ == "__main__":
    main()
