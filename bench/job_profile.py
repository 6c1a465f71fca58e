"""Where a whole erasure's time goes: seconds per phase of one job through the worker, and per stage inside them.

A fresh embedded stack (bench/service_stack.py), the shipped AT&T model, one forget job (person 1: 7 photos, 3
held out) run by the worker's runner as the service runs it: download and load, features, taming (with its
confirmation), evaluation (the paper's sets, the discrete-likelihood check, the generation evidence, figures)
and reports, then the upload of the checkpoint and reports. Prints each phase's seconds (the job's progress),
each stage's (the report's timing.stages) and the share of the job's wall time spent outside the taming loop.
Goal: evaluation and reports at most 25% of the job's wall time.

    .venv/bin/python bench/job_profile.py [--method improved] [--person 1] [--runs 2]

The second run on the same version shows the caches at work (the base model's figures and samples are
measured once per version).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_stack import embedded_stack, submit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default=None)
    parser.add_argument("--person", type=int, default=1)
    parser.add_argument("--runs", type=int, default=2, help="jobs one after another on the same model")
    args = parser.parse_args()

    from app.db import session_scope
    from app.models import Job
    from app.storage import get_storage
    from worker.runner import handle_doorbell

    stack = embedded_stack()
    params = {**({"method": args.method} if args.method else {})}
    for run in range(args.runs):
        job_id = submit(stack, args.person + run, range(1, 8), params, holdout=range(8, 11))
        started = time.perf_counter()
        handle_doorbell(job_id, stack.settings)
        wall = time.perf_counter() - started
        with session_scope(stack.settings) as s:
            job = s.get(Job, job_id)
            assert job is not None
            phases, state, error = dict(job.progress.get("phase_seconds") or {}), job.state, job.error
        report = json.loads(get_storage(stack.settings).get_bytes(f"reports/{job_id}.json"))
        timing = report["timing"]
        stages = timing.get("stages", {})
        taming = timing["tame_seconds"]
        print(f"\njob {run + 1} (person {args.person + run}): {state}{' ' + error if error else ''}, "
              f"{report['stopping']['iterations']} iterations, {wall:.1f} s wall")
        print("  phase        s   " + "  ".join(f"{k} {v:.1f}" for k, v in phases.items()))
        print("  stage        s   " + "  ".join(f"{k} {v:.1f}" for k, v in stages.items()))
        print(f"  taming loop {taming - timing.get('confirm_seconds', 0):.1f} s, {timing.get('confirmations')} "
              f"confirmations {timing.get('confirm_seconds', 0):.1f} s; outside the taming run {wall - taming:.1f} s = "
              f"{(wall - taming) / wall:.0%} of the job (goal <= 25%)")


if __name__ == "__main__":
    main()
