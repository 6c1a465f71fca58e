"""One taming run for several AT&T people at once (a coalesced run, without the service), and how it converges.

Calls `taming.pipeline.run_requests` (the worker's code path) with one request per person (their 7 trained
photos) on the shipped model, and prints every 50 iterations the spread of the forget images' tracked d (the
stop's estimate, in σ_R: the worst, the 5th percentile, the median, the 95th) and how many are still short of
−ε; then whether each request was confirmed, its certified q_T and BPD(D_R) before and after. `bench/coalesce.py`
runs the same through the service and times it; this script shows why a run does or does not converge.

    OMP_NUM_THREADS=1 .venv/bin/python bench/union_run.py --people 1,2,3,4,5,6,7,8 [--set forget_pull=0.03 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from att_sets import MODEL, att_sets

from taming.pipeline import Request, run_requests
from taming.tame import StepInfo, method_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", default="1,2,3,4,5,6,7,8")
    parser.add_argument("--method", default="improved")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    config = method_config(args.method, **overrides)
    people = [int(p) for p in args.people.split(",")]
    sets = {p: att_sets(p) for p in people}
    requests = [Request(str(p), sets[p]["forget"], sets[p]["holdout"]) for p in people]

    def on_step(info: StepInfo) -> None:
        if info.iteration % 50:
            return
        state = info.state()
        d = ((state["tracked"] - (state["mu"] + config.delta * state["sigma"])) / state["sigma"]).float()
        q = torch.quantile(d, torch.tensor([0.0, 0.05, 0.5, 0.95])).tolist()
        print(f"iteration {info.iteration}: d worst {q[0]:.2f}, p5 {q[1]:.2f}, median {q[2]:.2f}, p95 {q[3]:.2f}; "
              f"{int((d < -config.eps).sum())}/{len(d)} short of -ε; {info.elapsed:.0f} s", flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_requests(MODEL, sets[people[0]]["trained"], requests, config, Path(tmp) / "tamed.safetensors",
                              on_step=on_step, cache_dir=Path(tempfile.gettempdir()) / "taming-bench-cache")
    print(f"{len(people)} requests, {sum(len(r.forget) for r in requests)} photos, {args.method} {args.set}: "
          f"confirmed {result.criterion_met} in {result.iterations} iterations, "
          f"{time.perf_counter() - started:.0f} s")
    for key, typed in result.reports.items():
        report = typed.as_json()
        m = report["metrics"]
        bpd = m["bpd_remember"]
        print(f"person {key}: confirmed {report['stopping']['criterion_met']}, q_T(D_F) certified "
              f"{m['certificate']['mean_quantile_after']:.1e}, BPD(D_R) {bpd['before']:.4f} -> {bpd['after']:.4f}")


if __name__ == "__main__":
    main()
