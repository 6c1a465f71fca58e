"""Algorithm 1 of "Taming Normalizing Flows" (Malnick, Avidan, Fried, WACV 2024), as DESIGN.md section 4.

`tame` fine-tunes a copy of a Glow so that the bpd of the forget images D_F rises to the threshold
t = μ_R + δ·σ_R of the remember images D_R, while a remember loss keeps D_R's bpd distribution where the
frozen base model has it. Everything is in bits per dimension of n-bit images.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from taming.data import dequantize
from taming.glow import INFERENCE_BATCH, Glow
from taming.losses import forget_loss, remember_loss, total_loss


class TamingError(RuntimeError):
    """A run that cannot go on (repeated non-finite losses); the message is for a person."""


@dataclass(frozen=True)
class TameConfig:
    delta: float = 4.0  # threshold in σ_R; negative pulls images towards higher likelihood
    epsilon: float | None = None  # stop tolerance on d; None means 0.15·|δ|
    alpha: float = 0.6  # weight of the forget loss
    gamma: float = 0.6  # weight of the KL terms inside the remember loss
    lr: float = 5e-5
    forget_batch: int = 8
    remember_batch: int = 8
    max_iterations: int = 800
    stats_every: int = 10  # re-estimate μ_R, σ_R every this many iterations
    stats_images: int = 1024
    confirm_draws: int = 5
    forget_loss: str = "paper"  # or "scale_free": sigmoid((Δ / (δ·σ_R))^2)
    seed: int = 0
    max_nan_events: int = 3
    target_share: float | None = None  # rebalancing: stop when the attribute's share reaches this
    direction: str = "decrease"  # rebalancing: whether the share should fall or rise to the target
    share_every: int = 10

    @property
    def eps(self) -> float:
        return self.epsilon if self.epsilon is not None else 0.15 * abs(self.delta)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "epsilon": self.eps}


@dataclass
class StepInfo:
    """What `on_step` sees after each iteration; `state()` gives the resumable state."""

    iteration: int
    max_iterations: int
    max_abs_d: float
    mu_r: float
    sigma_r: float
    share: float | None
    losses: dict[str, float]
    elapsed: float
    eta_seconds: float | None
    state: Callable[[], dict[str, Any]]


@dataclass
class TameResult:
    model: Glow
    criterion_met: bool  # the confirmed verdict
    iterations: int
    reason: str
    d: Tensor  # [K] final d of every forget image, on fresh statistics
    bpd_forget: Tensor  # [K] final bpd of the forget images, averaged over confirm_draws
    mu_r: float
    sigma_r: float
    share: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0


@dataclass
class _Loop:
    """Mutable state of one run: what `state()` saves and `resume` restores."""

    iteration: int = 0
    lr: float = 5e-5
    nan_events: int = 0
    elapsed: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    mu: float = float("nan")  # μ_R and σ_R as last estimated
    sigma: float = float("nan")


@torch.inference_mode()
def bpd_of(model: Glow, images_q: Tensor, gen: torch.Generator, draws: int = 1,
           batch: int = INFERENCE_BATCH) -> Tensor:
    """bpd of quantized images [N, C, H, W] averaged over `draws` dequantization draws -> [N] (CPU)."""
    device = next(model.parameters()).device
    n_bits = model.config.n_bits
    out = torch.zeros(len(images_q))
    for _ in range(draws):
        for i in range(0, len(images_q), batch):
            x = dequantize(images_q[i : i + batch], n_bits, gen).to(device)
            out[i : i + batch] += model.bpd(x).float().cpu()
    return out / draws


def remember_stats(model: Glow, remember_q: Tensor, gen: torch.Generator, n: int) -> tuple[float, float]:
    """μ_R, σ_R: mean and std of bpd over up to n remember images under `model`."""
    idx = torch.randperm(len(remember_q), generator=gen)[:n]
    values = bpd_of(model, remember_q[idx], gen)
    return values.mean().item(), values.std().item()


def distances(bpd_forget: Tensor, mu: float, sigma: float, config: TameConfig) -> Tensor:
    """d(x) = (bpd_T(x) - t) / σ_R with t = μ_R + δ·σ_R."""
    return (bpd_forget - (mu + config.delta * sigma)) / sigma


def confirmed(d: Tensor, config: TameConfig) -> bool:
    """Every forget image at or past the threshold (d ≥ -ε; mirrored for δ < 0)."""
    if config.delta >= 0:
        return bool((d >= -config.eps).all())
    return bool((d <= config.eps).all())


def tame(
    tamed: Glow,
    base: Glow,
    forget_q: Tensor,
    remember_q: Tensor,
    config: TameConfig,
    on_step: Callable[[StepInfo], None] | None = None,
    resume: dict[str, Any] | None = None,
    share_fn: Callable[[Glow], float] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> TameResult:
    """Run Algorithm 1 on `tamed` (modified in place; `base` is never touched).

    forget_q [K, C, H, W] and remember_q [N, C, H, W] are quantized images (taming.data.quantize) and
    must not share a person (DESIGN.md section 4, step 8). `share_fn(model)`, with `config.target_share`,
    turns the run into attribute rebalancing: it stops when the share reaches the target. `on_phase` hears
    "confirming" when a stop is being confirmed on fresh statistics and "taming" when an unconfirmed one
    goes on iterating.
    """
    base.eval()
    tamed.requires_grad_(True)
    n_bits = tamed.config.n_bits
    device = next(tamed.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    loop = _Loop(lr=config.lr)
    optimizer: torch.optim.Optimizer = torch.optim.Adam(tamed.parameters(), lr=config.lr)
    if resume is not None:
        loop = _restore(resume, tamed, optimizer, gen)
    good = _snapshot(tamed, optimizer)
    start = time.perf_counter() - loop.elapsed
    if resume is None:
        loop.mu, loop.sigma = remember_stats(tamed, remember_q, gen, config.stats_images)
    mu, sigma = loop.mu, loop.sigma
    share = share_fn(tamed) if share_fn is not None else None
    while True:
        it = loop.iteration
        if it and it % config.stats_every == 0:
            mu, sigma = loop.mu, loop.sigma = remember_stats(tamed, remember_q, gen, config.stats_images)
            good = _snapshot(tamed, optimizer)
        if share_fn is not None and it and it % config.share_every == 0:
            share = share_fn(tamed)
        forget_idx = _forget_batch(len(forget_q), config.forget_batch, gen)
        remember_idx = torch.randint(len(remember_q), (config.remember_batch,), generator=gen)
        x = dequantize(torch.cat([forget_q[forget_idx], remember_q[remember_idx]]), n_bits, gen).to(device)
        bpd = tamed.bpd(x)  # one forward pass carries both batches
        bpd_f, bpd_r = bpd[: len(forget_idx)], bpd[len(forget_idx) :]
        d_all = _check_distances(tamed, forget_q, forget_idx, bpd_f, mu, sigma, config, gen)
        max_abs_d = d_all.abs().max().item()
        if _should_stop(d_all, share, config) or it >= config.max_iterations:
            if on_phase is not None:
                on_phase("confirming")
            final = _confirm(tamed, forget_q, remember_q, config, gen)
            met = _share_reached(share, config) if share is not None else confirmed(final[0], config)
            if met or it >= config.max_iterations:
                reason = _reason(met, it >= config.max_iterations)
                break
            mu, sigma = loop.mu, loop.sigma = final[2], final[3]  # not confirmed: go on with the fresh statistics
            if on_phase is not None:
                on_phase("taming")
        with torch.no_grad():
            bpd_b = base.bpd(x[len(forget_idx) :])
        l_f = forget_loss(bpd_f, mu + config.delta * sigma, _scale(config, sigma))
        l_r = remember_loss(bpd_r, bpd_b, config.gamma)
        loss = total_loss(l_f, l_r, config.alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(tamed.parameters(), float("inf"))
        if not (math.isfinite(loss.item()) and math.isfinite(grad_norm.item())):
            optimizer = _recover(tamed, good, loop, config)
            continue
        optimizer.step()
        loop.iteration += 1
        loop.elapsed = time.perf_counter() - start
        record = {"iteration": float(loop.iteration), "loss": loss.item(), "forget_loss": l_f.item(),
                  "remember_loss": l_r.item(), "max_abs_d": max_abs_d, "mu_r": mu, "sigma_r": sigma,
                  "lr": loop.lr, **({"share": share} if share is not None else {})}
        loop.history.append(record)
        if on_step is not None:
            on_step(_info(loop, config, max_abs_d, mu, sigma, share, record, tamed, optimizer, gen))
    d_final, bpd_final, mu, sigma = final
    return TameResult(tamed, met, loop.iteration, reason, d_final, bpd_final, mu, sigma, share, loop.history,
                      time.perf_counter() - start)


def _reason(met: bool, capped: bool) -> str:
    if met and not capped:
        return "stop criterion met and confirmed on fresh statistics"
    if met:
        return "iteration cap reached with every forget image at or past the threshold on fresh statistics"
    return "iteration cap reached before every forget image reached the threshold"


def _forget_batch(k: int, size: int, gen: torch.Generator) -> Tensor:
    """All of D_F when it is no larger than the batch, else a random batch."""
    return torch.arange(k) if k <= size else torch.randperm(k, generator=gen)[:size]


def _check_distances(model: Glow, forget_q: Tensor, idx: Tensor, bpd_f: Tensor, mu: float, sigma: float,
                     config: TameConfig, gen: torch.Generator) -> Tensor:
    """d on all of D_F before the step: reuse the training forward when it covered all of D_F."""
    if len(idx) == len(forget_q):
        return distances(bpd_f.detach().float().cpu(), mu, sigma, config)
    return distances(bpd_of(model, forget_q, gen), mu, sigma, config)


def _should_stop(d: Tensor, share: float | None, config: TameConfig) -> bool:
    if config.target_share is not None and share is not None:
        return _share_reached(share, config)
    return bool((d.abs() < config.eps).all())


def _share_reached(share: float, config: TameConfig) -> bool:
    assert config.target_share is not None
    return share <= config.target_share if config.direction == "decrease" else share >= config.target_share


def _confirm(model: Glow, forget_q: Tensor, remember_q: Tensor, config: TameConfig,
             gen: torch.Generator) -> tuple[Tensor, Tensor, float, float]:
    """Fresh μ_R, σ_R and the forget images' bpd averaged over several draws -> (d, bpd, μ_R, σ_R)."""
    mu, sigma = remember_stats(model, remember_q, gen, config.stats_images)
    bpd = bpd_of(model, forget_q, gen, draws=config.confirm_draws)
    return distances(bpd, mu, sigma, config), bpd, mu, sigma


def _scale(config: TameConfig, sigma: float) -> float:
    if config.forget_loss == "scale_free":
        return abs(config.delta) * sigma
    if config.forget_loss != "paper":
        raise ValueError(f"forget_loss must be 'paper' or 'scale_free', not {config.forget_loss!r}")
    return 1.0


def _snapshot(model: Glow, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}


def _recover(model: Glow, good: dict[str, Any], loop: _Loop, config: TameConfig) -> torch.optim.Optimizer:
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


def _info(loop: _Loop, config: TameConfig, max_abs_d: float, mu: float, sigma: float, share: float | None,
          record: dict[str, float], model: Glow, optimizer: torch.optim.Optimizer, gen: torch.Generator) -> StepInfo:
    per_it = loop.elapsed / max(1, loop.iteration)
    eta = per_it * (config.max_iterations - loop.iteration)
    losses = {k: record[k] for k in ("loss", "forget_loss", "remember_loss")}
    return StepInfo(loop.iteration, config.max_iterations, max_abs_d, mu, sigma, share, losses, loop.elapsed, eta,
                    lambda: _state(loop, model, optimizer, gen))


def _state(loop: _Loop, model: Glow, optimizer: torch.optim.Optimizer, gen: torch.Generator) -> dict[str, Any]:
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
    }


def _restore(state: dict[str, Any], model: Glow, optimizer: torch.optim.Optimizer, gen: torch.Generator) -> _Loop:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = state["lr"]
    gen.set_state(state["rng"])
    return _Loop(state["iteration"], state["lr"], state["nan_events"], state["elapsed"], list(state["history"]),
                 state["mu"], state["sigma"])
