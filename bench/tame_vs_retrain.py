"""Wall time to tame one identity vs. retraining the base model from scratch to the same BPD on D_R.

Same machine, same run: (1) one erasure through the whole pipeline on the shipped AT&T model, the way the
service runs it (the model's whole training set goes in as the remember set; the person leaves it by image
match); (2) a fresh Glow of the same architecture trained by the base model's own recipe (`taming train`'s
defaults) on D_R, without the person, until its BPD on D_R reaches the tamed model's, checked every 100 steps
(the recipe's learning rate is constant, so training past its 1500 steps is the same recipe, longer; the
time of those checks is not counted as the retraining's).
Two ratios are printed: against the whole erasure (taming, confirmation, audit evaluation, reports) and,
on the last line, against the taming run itself (Algorithm 1 with its confirmation: what produces the
model a retraining would produce). Goal: at least 20x.

    .venv/bin/python bench/tame_vs_retrain.py [--person 1] [--max-steps 3000] [--method improved]
    .venv/bin/python bench/tame_vs_retrain.py --data lfw --model var/lfw/base.safetensors --person Colin_Powell \
        --max-steps 10000

On LFW the BPD of D_R is measured on a fixed seeded subset of 2,048 of its images (the whole of D_R every 100
steps would cost more than the training), for the tamed model and the retraining alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from att_sets import MODEL
from methods import att_sets_for, lfw_sets_for

from rules.method import DEFAULT_METHOD
from taming.checkpoint import load_checkpoint
from taming.data import quantize
from taming.glow import Glow
from taming.likelihood import mean_bpd
from taming.pipeline import Request, features_for, prepare_version, run_requests, without_forgotten_people
from taming.tame import method_config
from taming.train import TrainConfig, train

SUBSET = 2048


class Reached(Exception):
    """Raised from the training callback once the target BPD is reached."""


def retrain(base: Glow, images: torch.Tensor, remember: torch.Tensor, target: float,
            max_steps: int) -> tuple[float, dict[str, float | None], bool]:
    """Train a fresh model by the base model's recipe until its BPD on `remember` reaches `target`."""
    n_bits = base.config.n_bits
    torch.manual_seed(0)
    fresh = Glow(base.config)
    d_r_q = quantize(images, n_bits)
    recipe = replace(TrainConfig(), steps=max_steps)
    assert not recipe.cosine, "a longer cosine schedule would not be the same recipe"
    started = time.perf_counter()
    reached: dict[str, float | None] = {"step": None, "bpd": float("nan")}
    measuring = [0.0]  # the checks every 100 steps are the benchmark's, not the retraining's: their time is left out

    def on_step(step: object) -> None:
        if step.step % 100 == 0:  # type: ignore[attr-defined]
            checked = time.perf_counter()
            bpd = float(mean_bpd(fresh, remember, n_bits, draws=1).mean())
            measuring[0] += time.perf_counter() - checked
            reached.update(step=step.step, bpd=bpd)  # type: ignore[attr-defined]
            if bpd <= target:
                raise Reached

    try:
        train(fresh, d_r_q, recipe, on_step=on_step)
        capped = True
    except Reached:
        capped = False
    return time.perf_counter() - started - measuring[0], reached, capped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=["att", "lfw"], default="att")
    parser.add_argument("--person", default="1")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--lfw-sets", type=Path, default=Path("var/lfw"))
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--max-steps", type=int, default=3000)
    args = parser.parse_args()
    base, _ = load_checkpoint(args.model)
    size, channels = base.config.img_size, base.config.in_channel
    sets = (att_sets_for(args.person, size, channels) if args.data == "att"
            else lfw_sets_for(args.person, args.lfw_sets, size, channels))
    request = Request("p", sets["forget"], sets["holdout"] if len(sets["holdout"]) else None)
    d_r = without_forgotten_people(sets["trained"], [request])
    gen = torch.Generator().manual_seed(0)
    remember = quantize(d_r.images[torch.randperm(len(d_r), generator=gen)[:SUBSET]], base.config.n_bits)
    with tempfile.TemporaryDirectory() as tmp:
        # the feature network (once per model) and the base model's figures of the reference set (once per
        # version: every job carries its tamed model's forward) are measured before the first erasure
        started = time.perf_counter()
        features_for(sets["trained"], Path(tmp))
        features_s = time.perf_counter() - started
        started = time.perf_counter()
        prepare_version(args.model, sets["trained"], Path(tmp))
        prepare_s = time.perf_counter() - started
        started = time.perf_counter()
        result = run_requests(args.model, sets["trained"], [request], method_config(args.method),
                              Path(tmp) / "t.safetensors", cache_dir=Path(tmp))
        erasure_s = time.perf_counter() - started
        tamed, _ = load_checkpoint(Path(tmp) / "t.safetensors")
    report = result.reports["p"].as_json()
    tame_s = report["timing"]["tame_seconds"]
    target = float(mean_bpd(tamed, remember, base.config.n_bits, draws=1).mean())
    print(f"feature network (once per model, cached): {features_s:.1f} s; the base model's figures of the "
          f"reference set (once per version): {prepare_s:.1f} s")
    print(f"erasure ({args.method}): {erasure_s:.1f} s wall, of which the taming run {tame_s:.1f} s "
          f"({result.iterations} iterations, criterion met {result.criterion_met}); BPD(D_R) after {target:.4f}")

    retrain_s, reached, capped = retrain(base, d_r.images, remember, target, args.max_steps)
    more = "more than " if capped else ""
    print(f"retrain: {more}{retrain_s:.1f} s ({reached['step']} steps, at most {args.max_steps}; "
          f"BPD(D_R) {reached['bpd']:.4f})")
    print(f"retrain / whole erasure = {more}{retrain_s / erasure_s:.1f}x (a version's first erasure, which also "
          f"measures the base model's figures: {more}{retrain_s / (erasure_s + prepare_s):.1f}x)")
    print(f"retrain / tame = {more}{retrain_s / tame_s:.1f}x")


if __name__ == "__main__":
    main()
