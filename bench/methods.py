"""The method, measured: the paper's method and each change of ours, alone and together, on the same people.

Every run goes through `taming.pipeline.run_requests` (the code path of `taming tame` and the worker) and prints
one markdown row with the columns of Table 1 plus the certificate, the discrete-likelihood check and the
generation evidence, then the bars each run misses.

    .venv/bin/python bench/methods.py --data att --people 1,8,15 --methods paper,discrete,converge,specific,improved
    .venv/bin/python bench/methods.py --data lfw --model var/lfw/base.safetensors --people George_W_Bush,...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from taming.pipeline import Request, run_requests
from taming.tame import method_config

COLUMNS = ("person", "method", "met", "iters", "wall s", "q_B(D_F)", "q_T(D_F) cert.", "QD(D'_F)",
           "shift D'_F σ (discrete)", "shift others' held-out σ", "QD(D_R)", "QD(D_R^id)", "QD(D_R^NN)",
           "BPD(D_R)", "rise kept", "gen. rate before → after", "others' max Δ")


def att_sets_for(person: str, size: int, channels: int) -> dict[str, Any]:
    from att_sets import att_sets

    return att_sets(int(person), size, channels)


def lfw_sets_for(person: str, folder: Path, size: int, channels: int) -> dict[str, Any]:
    from lfw_sets import load_split, write_person, write_sets

    from taming.data import load_faces

    if not (folder / "train.npz").exists() or not (folder / "people" / person).exists():
        split = load_split()
        if not (folder / "train.npz").exists():
            write_sets(split, folder)
        write_person(split, folder, person)
    load = lambda p: load_faces(p, size, channels)  # noqa: E731
    person_dir = folder / "people" / person
    return {"forget": load(person_dir / "forget"), "holdout": load(person_dir / "holdout"),
            "trained": load(folder / "train.npz"), "remember_holdout": load(folder / "holdout.npz"),
            "unseen": load(folder / "unseen.npz")}


def run(sets: dict[str, Any], model: Path, method: str, cache: Path, max_iterations: int,
        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    config = method_config(method, **{"max_iterations": max_iterations, **(overrides or {})})
    holdout = sets["holdout"] if len(sets["holdout"]) else None
    with tempfile.TemporaryDirectory() as tmp:
        result = run_requests(model, sets["trained"], [Request("p", sets["forget"], holdout)], config,
                              Path(tmp) / "tamed.safetensors", remember_holdout=sets["remember_holdout"],
                              unseen=sets["unseen"], cache_dir=cache)
    return result.reports["p"].as_json()


def _f(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def row(person: str, method: str, report: dict[str, Any], unseen_bar: float = 0.01) -> tuple[str, list[str]]:
    m, stop = report["metrics"], report["stopping"]
    qd, mq, shift = m["quantile_drop"], m["mean_quantile"], m["bpd_shift_sigma"]
    cert, dl, gen = m["certificate"], m["discrete_likelihood"], m.get("generation")
    bpd_change = (m["bpd_remember"]["after"] - m["bpd_remember"]["before"]) / m["bpd_remember"]["before"]
    held = (dl.get("forget_holdout") or {}).get("shift_sigma")
    rise = dl["forget"]["share_of_rise"]
    gen_cell = "—" if gen is None else (f"{gen['before']['rate']:.3f} → {gen['after']['rate']:.3f}"
                                        + ("" if gen["measurable"] else " (not measurable)"))
    cells = [person, method, "yes" if stop["criterion_met"] else "no", str(stop["iterations"]),
             f"{report['timing']['wall_seconds']:.0f}", f"{mq['forget']['before']:.3f}",
             _f(cert["mean_quantile_after"], ".1e"), _f(qd.get("forget_holdout"), ".3f"), _f(held, ".2f"),
             _f(shift.get("remember_holdout"), ".2f"), f"{qd['remember']:.4f}", _f(qd.get("remember_unseen"), ".4f"),
             _f(qd.get("remember_nearest"), ".4f"), f"{bpd_change:+.2%}", _f(rise, ".0%"), gen_cell,
             "—" if gen is None else f"{gen['others_max_change']:.3f}"]
    return "| " + " | ".join(cells) + " |", misses(report, held, bpd_change, rise, gen, unseen_bar)


def misses(report: dict[str, Any], held: float | None, bpd_change: float, rise: float | None,
           gen: dict[str, Any] | None, unseen_bar: float = 0.01) -> list[str]:
    """The bars of issue 10 a run misses (QD(D_R^id) <= 0.03 on AT&T, whose five unseen people decide it)."""
    m, stop = report["metrics"], report["stopping"]
    qd, shift = m["quantile_drop"], m["bpd_shift_sigma"]
    out = []
    if not (stop["criterion_met"] and stop["iterations"] <= 800):
        out.append("confirmed within 800 iterations")
    if (m["certificate"]["mean_quantile_after"] or 1) > 1e-3:
        out.append("q_T(D_F) <= 1e-3")
    others = shift.get("remember_holdout") or 0.0
    if held is not None and (held < 1 or held < 3 * others):
        out.append("held-out >= 1 σ and >= 3x others'")
    unseen, nearest = qd.get("remember_unseen") or 0.0, qd.get("remember_nearest") or 0.0
    if qd["remember"] > 0.01 or unseen > unseen_bar or nearest > 0.03:
        out.append("QD of remember sets")
    if abs(bpd_change) >= 0.01:
        out.append("BPD(D_R) within 1%")
    if rise is None or rise < 0.95:
        out.append("share_of_rise >= 0.95")
    if gen is not None and gen["measurable"] and ((gen["removed"] or 0) < 0.9 or gen["others_max_change"] > 0.02):
        out.append("generation rate down 90%, others within 2 points")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["att", "lfw"], default="att")
    parser.add_argument("--people", default="1,8,15,22,29")
    parser.add_argument("--methods", default="paper,improved")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--lfw-sets", type=Path, default=Path("var/lfw"))
    parser.add_argument("--max-iterations", type=int, default=800)
    parser.add_argument("--json", type=Path, default=None, help="append every report here (JSON lines)")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                        help="override a knob of every method (a variant; the method column names it)")
    args = parser.parse_args()
    from att_sets import MODEL

    from taming.checkpoint import read_metadata

    model = args.model or MODEL
    arch = json.loads(read_metadata(model)["config"])
    cache = Path(tempfile.gettempdir()) / "taming-bench-cache"
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    failed = []
    for person in args.people.split(","):
        sets = (att_sets_for(person, arch["img_size"], arch["in_channel"]) if args.data == "att"
                else lfw_sets_for(person, args.lfw_sets, arch["img_size"], arch["in_channel"]))
        for method in args.methods.split(","):
            started = time.perf_counter()
            report = run(sets, model, method, cache, args.max_iterations, overrides)
            label = "+".join([method, *args.set])
            line, missed = row(person, label, report, 0.03 if args.data == "att" else 0.01)
            print(line, flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps({"person": person, "method": label, "report": report}) + "\n")
            if missed:
                failed.append(f"{person} {label}: " + "; ".join(missed))
            timing = report["timing"]
            print(f"<!-- {person} {method}: {time.perf_counter() - started:.0f} s; {timing.get('confirmations')} "
                  f"confirmations ({timing.get('screened')} screened out), {timing.get('confirm_seconds') or 0:.0f} s; "
                  f"stages {timing.get('stages')} -->",
                  file=sys.stderr, flush=True)
    print("\nall bars hold" if not failed else "\nbars missed:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
