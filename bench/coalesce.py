"""Coalescing: wall time of 8 single-person forget jobs submitted together vs. one of them alone.

    python bench/coalesce.py [--people 8] [--photos 1] [--max-iterations 800] [--method improved]

Same model, same process, same run: a fresh embedded stack (SQLite + local folder, no broker: the
worker's runner is called directly), the shipped AT&T model with its remember set, default parameters, then
  1. one job (person 1's first --photos training photos) alone,
  2. eight such jobs (persons 2..9) queued together, which the worker runs as one taming run while the
     union fits what the method converges (rules/method.py: 8 images for the paper's random batches, 80 for
     batches of the images farthest below the threshold), and one after another beyond that.
Prints both wall times and their ratio (the goal is under 2.5x; running them one by one would be ~8x).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_stack import embedded_stack, submit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--photos", type=int, default=1, help="training photos per request (1-7)")
    parser.add_argument("--max-iterations", type=int, default=800)
    parser.add_argument("--method", default=None, help="a method of rules/method.py (default: the default)")
    args = parser.parse_args()

    from app.db import session_scope
    from app.models import Job
    from worker.runner import handle_doorbell

    stack = embedded_stack()
    params = {"max_iterations": args.max_iterations, **({"method": args.method} if args.method else {})}

    def run(people: list[int]) -> tuple[float, list[Job]]:
        ids = [submit(stack, p, range(1, args.photos + 1), params) for p in people]
        t = time.perf_counter()
        handle_doorbell(ids[0], stack.settings)
        wall = time.perf_counter() - t
        with session_scope(stack.settings) as s:
            return wall, [s.get(Job, i) for i in ids]

    alone, (single,) = run([1])
    together, jobs = run(list(range(2, 2 + args.people)))
    for label, batch in (("alone", [single]), ("together", jobs)):
        states = {j.state for j in batch}
        iters = {j.progress.get("iteration") for j in batch}
        print(f"{label:>9}: states {sorted(states)}, runs {len({j.run_id for j in batch})}, iterations {sorted(iters)}")
        for j in batch:
            if j.state != "succeeded":
                print(f"           {j.id[:8]}: {j.error}")
    print(f"one job alone:             {alone:7.1f} s")
    print(f"{args.people} jobs together:          {together:7.1f} s")
    print(f"ratio:                     {together / alone:7.2f}x  (goal < 2.5x; one by one would be ~{args.people}x)")


if __name__ == "__main__":
    main()
