"""Our reproduction of the paper's Table 1 (and Table 2's ablation) on the shipped AT&T model.

For each of 5 training identities: forget its 7 training images (D_F), hold out its 3 others (D'_F), remember
the other 34 identities' training images (D_R), their held-out images (remember_holdout) and 5 unseen
identities (D_R^id). Prints one markdown row per run and whether each of the issue's bars holds.

    .venv/bin/python bench/table1.py [--people 1,8,15,22,29] [--ablation] [--max-iterations 800]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from att_sets import MODEL, att_sets

from taming.pipeline import Request, run_requests
from taming.tame import TameConfig

HEADER = ("| person | loss | met | iters | wall s | q_B(D_F) | q_T(D_F) | removed | QD(D'_F) | shift D'_F σ "
          "| shift others' held-out σ | QD(D_R) | QD(D_R^id) | QD(D_R^NN) | BPD(D_R) change "
          "| D_F's rise in discrete bpd |")


def run(person: int, config: TameConfig, cache: Path, model: Path = MODEL, out: Path | None = None) -> dict:
    """Forget one trained identity; the report. The tamed checkpoint is kept only when `out` is given."""
    sets = att_sets(person)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_requests(model, sets["trained"], [Request(f"p{person}", sets["forget"], sets["holdout"])],
                              config, out or Path(tmp) / "tamed.safetensors",
                              remember_holdout=sets["remember_holdout"], unseen=sets["unseen"], cache_dir=cache)
    return result.reports[f"p{person}"].as_json()


def _share(share: float | None) -> str:
    """How much of D_F's mean-bpd rise the importance-weighted (discrete) bpd keeps."""
    return "—" if share is None else f"{share:.0%}"


def row(person: int, label: str, report: dict) -> tuple[str, list[str]]:
    m = report["metrics"]
    qd, mq, shift = m["quantile_drop"], m["mean_quantile"], m["bpd_shift_sigma"]
    removed = qd["forget"] / mq["forget"]["before"] if mq["forget"]["before"] > 0 else float("nan")
    bpd_change = (m["bpd_remember"]["after"] - m["bpd_remember"]["before"]) / m["bpd_remember"]["before"]
    stop = report["stopping"]
    cells = [str(person), label, "yes" if stop["criterion_met"] else "no", str(stop["iterations"]),
             f"{report['timing']['wall_seconds']:.0f}", f"{mq['forget']['before']:.3f}",
             f"{mq['forget']['after']:.1e}", f"{removed:.1%}", f"{qd['forget_holdout']:.3f}",
             f"{shift['forget_holdout']:.2f}", f"{shift['remember_holdout']:.2f}", f"{qd['remember']:.4f}",
             f"{qd['remember_unseen']:.4f}", f"{qd['remember_nearest']:.4f}", f"{bpd_change:+.2%}",
             _share(m["discrete_likelihood"]["forget"]["share_of_rise"])]
    failures = []
    if not (stop["criterion_met"] and stop["iterations"] <= 300):
        failures.append("criterion within 300 iterations")
    if mq["forget"]["after"] > 1e-3 or removed < 0.9:
        failures.append("q_T(D_F) <= 1e-3 and >= 90% of q_B removed")
    if shift["forget_holdout"] < 1 or shift["forget_holdout"] < 3 * shift["remember_holdout"]:
        failures.append("held-out shift >= 1 σ and >= 3x others'")
    if qd["remember"] > 0.01 or qd["remember_unseen"] > 0.01 or qd["remember_nearest"] > 0.03:
        failures.append("QD of remember sets")
    if abs(bpd_change) >= 0.01:
        failures.append("BPD(D_R) change < 1%")
    return "| " + " | ".join(cells) + " |", failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", default="1,8,15,22,29")
    parser.add_argument("--ablation", action="store_true", help="also run alpha=1, gamma=0 on the first person")
    parser.add_argument("--max-iterations", type=int, default=800)
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args()
    cache = Path(tempfile.gettempdir()) / "taming-bench-cache"
    people = [int(p) for p in args.people.split(",")]
    print(HEADER)
    print("|" + "|".join(["---"] * (HEADER.count("|") - 1)) + "|")
    failed = []
    runs = [(p, "full", TameConfig(max_iterations=args.max_iterations)) for p in people]
    if args.ablation:
        runs.append((people[0], "α=1, γ=0", TameConfig(alpha=1.0, gamma=0.0, max_iterations=args.max_iterations)))
    for person, label, config in runs:
        started = time.perf_counter()
        line, failures = row(person, label, run(person, config, cache, args.model))
        print(line, flush=True)
        if label == "full" and failures:
            failed.append(f"person {person}: " + "; ".join(failures))
        print(f"<!-- person {person} {label}: {time.perf_counter() - started:.0f} s -->", file=sys.stderr)
    print("\nall bars hold" if not failed else "\nbars not met:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
