"""Cost of one taming iteration relative to one maximum-likelihood training step on the same batch size.

Both run on the shipped AT&T model (person 1's 7 photos), timed step by step in one run, with a training batch
of as many images as a taming step passes through the model (the paper: 7 forget + 8 remember = 15; `improved`:
7 forget photos × 4 draws + 12 remember = 40). Prints the median step (the frozen base model's forward included)
and the mean, which also carries the μ_R, σ_R refresh every 10 iterations (the paper) or the rolling statistics
and tracked re-measurements (`improved`). Goal: mean ratio ≤ 1.3.

    .venv/bin/python bench/step_cost.py [--steps 60] [--method improved]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from att_sets import MODEL, att_sets

from rules.method import METHOD_NAMES
from taming.checkpoint import load_checkpoint
from taming.config import method_config
from taming.data import quantize
from taming.tame import tame
from taming.train import TrainConfig, train


def step_times(run: object) -> list[float]:
    stamps: list[float] = []

    def on_step(*_: object) -> None:
        stamps.append(time.perf_counter())

    run(on_step)  # type: ignore[operator]
    return [b - a for a, b in itertools.pairwise(stamps)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--method", default="paper", choices=METHOD_NAMES)
    args = parser.parse_args()
    base, _ = load_checkpoint(MODEL)
    sets = att_sets(1)
    forget, remember = quantize(sets["forget"].images, 5), quantize(sets["remember"].images, 5)
    # an unreachable threshold keeps taming iterating for exactly --steps iterations
    config = method_config(args.method, delta=1e6, max_iterations=args.steps)
    images = config.forget_draws * config.forget_batch_for(len(forget)) + config.remember_batch_for(len(forget))
    tame_dt = step_times(lambda cb: tame(copy.deepcopy(base), base, forget, remember, config, on_step=cb))
    train_cfg = TrainConfig(steps=args.steps, batch_size=images, lr=5e-5, warmup=1)
    train_dt = step_times(lambda cb: train(copy.deepcopy(base), remember, train_cfg, on_step=cb, resume=_state(base)))
    for name, dt in (("taming iteration", tame_dt), ("training step", train_dt)):
        print(f"{name:<17} median {statistics.median(dt) * 1e3:7.1f} ms   mean {statistics.mean(dt) * 1e3:7.1f} ms")
    print(f"method {args.method}, {images} images a step, threads {torch.get_num_threads()}")
    print(f"ratio (mean, with the statistics' upkeep) {statistics.mean(tame_dt) / statistics.mean(train_dt):.2f}x")
    print(f"ratio (median step) {statistics.median(tame_dt) / statistics.median(train_dt):.2f}x")


def _state(model: torch.nn.Module) -> dict:
    """Start training from the trained weights, as a resumed run (no data-dependent init)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 0,
            "rng": torch.Generator().manual_seed(0).get_state()}


if __name__ == "__main__":
    main()
