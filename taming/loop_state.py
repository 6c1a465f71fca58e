"""A run's mutable loop state: what a resumable state saves and restores, and the roll-back of step 10 of
DESIGN.md section 4 (a non-finite loss restores the last good state with half the learning rate)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from taming.config import TameConfig
from taming.glow import Glow


class TamingError(RuntimeError):
    """A run that cannot go on (repeated non-finite losses); the message is for a person."""


@dataclass
class Loop:
    """Mutable state of one run: what `state()` saves and `resume` restores."""

    iteration: int = 0
    lr: float = 5e-5
    nan_events: int = 0
    elapsed: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    mu: float = float("nan")  # μ_R and σ_R as last estimated
    sigma: float = float("nan")
    sigma0: float = float("nan")  # σ_R of the base model: the unit of the anchored remember loss
    tracked: Tensor = field(default_factory=lambda: torch.zeros(0))  # [K] latest bpd of each forget image
    cursor: int = 0  # where the rotating re-measurement of tracked estimates goes on
    window: Tensor = field(default_factory=lambda: torch.zeros(0))  # rolling remember bpd (stats_rule "rolling")
    slot: int = 0  # where the next remember bpd goes in the window
    refused_at: int = -(10**9)  # iteration of the last stop candidate refused on fresh statistics
    # the last confirmation's μ_R, σ_R (certifying estimator), the loop's own μ_R, σ_R then, and its iteration
    certified: tuple[float, float, float, float, int] | None = None


def snapshot(model: Glow, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}


def recover(model: Glow, good: dict[str, Any], loop: Loop, config: TameConfig) -> torch.optim.Optimizer:
    """Roll back to the last good state with half the learning rate, or give up."""
    loop.nan_events += 1
    if loop.nan_events > config.max_nan_events:
        raise TamingError(
            f"the loss became non-finite {loop.nan_events} times (last at iteration {loop.iteration}); "
            "the model was left unchanged — try a smaller learning rate"
        )
    model.load_state_dict(good["model"])
    loop.lr /= 2
    optimizer = torch.optim.Adam(model.parameters(), lr=loop.lr)
    optimizer.load_state_dict(good["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = loop.lr
    return optimizer


def save_state(loop: Loop, model: Glow, optimizer: torch.optim.Optimizer, gen: torch.Generator) -> dict[str, Any]:
    """Resumable state; plain tensors and values only, so torch.load(weights_only=True) reads it."""
    return {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # Adam updates its moments in place
        "rng": gen.get_state(),
        "iteration": loop.iteration,
        "lr": loop.lr,
        "nan_events": loop.nan_events,
        "elapsed": loop.elapsed,
        "history": list(loop.history),
        "mu": loop.mu,
        "sigma": loop.sigma,
        "sigma0": loop.sigma0,
        "tracked": loop.tracked.clone(),
        "cursor": loop.cursor,
        "window": loop.window.clone(),
        "slot": loop.slot,
        "certified": list(loop.certified) if loop.certified is not None else None,
        "refused_at": loop.refused_at,
    }


def restore_state(state: dict[str, Any], model: Glow, optimizer: torch.optim.Optimizer, gen: torch.Generator) -> Loop:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = state["lr"]
    gen.set_state(state["rng"])
    loop = Loop(state["iteration"], state["lr"], state["nan_events"], state["elapsed"], list(state["history"]),
                 state["mu"], state["sigma"], state.get("sigma0", state["sigma"]))
    if "tracked" in state:
        loop.tracked, loop.cursor = state["tracked"].clone(), int(state["cursor"])
        loop.window, loop.slot = state["window"].clone(), int(state["slot"])
    loop.refused_at = int(state.get("refused_at", loop.refused_at))
    if state.get("certified") is not None:
        mu, sigma, loop_mu, loop_sigma, at = state["certified"]
        loop.certified = (float(mu), float(sigma), float(loop_mu), float(loop_sigma), int(at))
    return loop
