"""Algorithm 1 of "Taming Normalizing Flows" (Malnick, Avidan, Fried, WACV 2024), as DESIGN.md section 4, and the
project's improved method beside it.

`tame` fine-tunes a copy of a Glow so that the bpd of the forget images D_F rises to the threshold
t = μ_R + δ·σ_R of the remember images D_R, while a remember loss keeps D_R where the frozen base model has it.
Everything is in bits per dimension of n-bit images. `method_config("paper")` is the paper's method; the other
presets change one thing each (README, "The method, measured"):

- forget_draws > 1: the forget loss on the importance-weighted (discrete) bpd of each image over a few
  dequantization draws, so that an uneven density inside the images' quantization bins earns nothing;
- batch_policy "lowest": the forget batch is the images farthest below the threshold (by tracked estimates),
  so every image of a large D_F converges, not a random 8 of them;
- stop_rule "tracked": stop candidates from those tracked per-image estimates (one-sided, as the certificate),
  not from every image on one draw before each step;
- certify "discrete": the confirmation and the certificate on the importance-weighted bpd of D_F against
  remember statistics measured the same way;
- remember_loss "anchored" and near_fraction > 0: the remember loss holds each remember image's bpd to the base
  model's (instead of training further on D_R), with part of every remember batch drawn from the identities
  nearest to the person.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from taming.config import TameConfig, method_config
from taming.confirm import Final, measure_stop
from taming.data import dequantize
from taming.device import to_device
from taming.glow import Glow
from taming.likelihood import importance_weighted_bpd
from taming.loop_state import Loop, TamingError, recover, restore_state, save_state, snapshot
from taming.losses import anchor_loss, forget_loss, mean_rise, remember_loss, shortfall, symmetric_kl_loss, total_loss
from taming.sample_anchor import SampleAnchor
from taming.stop import StopToken
from taming.threshold import bpd_of, confirmed, distances, remember_bpd, remember_stats

# Re-exported: the loop's configuration and threshold live in their own modules.
__all__ = ["StepInfo", "TameConfig", "TameResult", "TamingError", "bpd_of", "confirmed", "distances",
           "method_config", "remember_stats", "tame"]


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
    bpd_forget: Tensor  # [K] final bpd of the forget images (config.estimator over confirm_draws draws)
    mu_r: float
    sigma_r: float
    share: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0
    confirm_seconds: float = 0.0  # of wall_seconds, spent confirming stops on fresh statistics
    confirmations: int = 0  # stops confirmed or refused on fresh statistics (the cap's final measurement included)
    screened: int = 0  # of the confirmations, those refused on the forget images alone (taming.confirm)
    stopped: bool = False  # ended early by its StopToken: nothing of it is final (d and bpd_forget are NaN)


@dataclass
class _Pass:
    """One forward pass: forget bpd [B_f] (discrete over the draws when > 1, with gradient), the forget images'
    unevenness [B_f] (mean − discrete bpd over the draws; 0 for one draw), remember bpd [B_r] and remember x."""

    forget: Tensor
    uneven: Tensor
    remember: Tensor
    x_remember: Tensor


def tame(
    tamed: Glow,
    base: Glow,
    forget_q: Tensor,
    remember_q: Tensor,
    config: TameConfig,
    on_step: Callable[[StepInfo], None] | None = None,
    resume: dict[str, Any] | None = None,
    share_fn: Callable[[Glow], float] | None = None,
    near: Tensor | None = None,
    on_phase: Callable[[str], None] | None = None,
    share_stop: Callable[[float], bool] | None = None,
    stop: StopToken | None = None,
) -> TameResult:
    """Run the taming loop on `tamed` (modified in place; `base` is never touched).

    forget_q [K, C, H, W] and remember_q [N, C, H, W] are quantized images (taming.data.quantize) and must not share
    a person (DESIGN.md section 4, step 8). near: indices into remember_q of the images of the identities nearest
    to the person (used when config.near_fraction > 0). `share_fn(model)`, with `config.target_share`, turns the run
    into attribute rebalancing: it stops when the share reaches the target. `on_phase` hears "confirming" when a stop
    is being confirmed on fresh statistics and "taming" when an unconfirmed one goes on iterating. `share_stop(share)`
    decides whether a measured share has reached the target in place of the plain comparison (taming.rebalance: an
    interval). `stop` (taming.stop) ends the run before its next iteration, with a result marked `stopped`.
    """
    run = _Run(tamed, base, forget_q, remember_q, config, near)
    run.restore(resume) if resume is not None else run.begin()
    share = share_fn(tamed) if share_fn is not None else None
    while True:
        if stop is not None and stop.requested:
            return _stopped(run, share)
        it = run.loop.iteration
        run.refresh(it)
        if share_fn is not None and it and it % config.share_every == 0:
            share = share_fn(tamed)
        forget_idx, remember_idx = run.batch()
        fwd = run.forward(forget_idx, remember_idx)
        d_all = run.check(forget_idx, fwd.forget)
        max_abs_d = d_all.abs().max().item()
        capped = it >= config.max_iterations
        if run.candidate(d_all, share, share_stop) or capped:
            met, final = _confirm(run, share, capped, share_stop, on_phase)
            if met or capped:
                break
        values = run.step(run.losses(fwd))
        if values is not None:
            record = run.record(values, max_abs_d, share)
            if on_step is not None:
                on_step(run.info(max_abs_d, share, record))
    return _result(run, met, capped, final, share)


def _result(run: _Run, met: bool, capped: bool, final: Final, share: float | None) -> TameResult:
    return TameResult(run.tamed, met, run.loop.iteration, _reason(met, capped), final.d, final.bpd, final.mu,
                      final.sigma, share, run.loop.history, time.perf_counter() - run.start, run.confirm_seconds,
                      run.confirmations, run.screened)


def _stopped(run: _Run, share: float | None) -> TameResult:
    nan = torch.full((len(run.forget_q),), math.nan, dtype=torch.float64)
    return TameResult(run.tamed, False, run.loop.iteration, "stopped by the caller", nan, nan.clone(), run.loop.mu,
                      run.loop.sigma, share, run.loop.history, time.perf_counter() - run.start, run.confirm_seconds,
                      run.confirmations, stopped=True)


def _confirm(run: _Run, share: float | None, capped: bool, share_stop: Callable[[float], bool] | None,
             on_phase: Callable[[str], None] | None) -> tuple[bool, Final]:
    """Confirm a stop on fresh statistics; an unconfirmed one goes on iterating with them."""
    if on_phase is not None:
        on_phase("confirming")
    final = run.confirm(screen=share is None and not capped)
    met = _share_reached(share, run.config, share_stop) if share is not None else confirmed(final.d, run.config)
    if not (met or capped):
        run.adopt(final)
        run.loop.refused_at = run.loop.iteration
        if on_phase is not None:
            on_phase("taming")
    return met, final


class _Run:
    """One run's models, data, optimizer and loop state; each method is one step of Algorithm 1."""

    def __init__(self, tamed: Glow, base: Glow, forget_q: Tensor, remember_q: Tensor, config: TameConfig,
                 near: Tensor | None) -> None:
        config.check()
        base.eval()
        tamed.requires_grad_(True)
        self.tamed, self.base, self.forget_q, self.remember_q, self.config = tamed, base, forget_q, remember_q, config
        self.near = near if near is not None and len(near) else None
        # remember images drawn at random per step (the rest come from the nearest identities)
        self.remember_size = config.remember_batch_for(len(forget_q))
        self.n_random = self.remember_size - (round(config.near_fraction * self.remember_size)
                                              if self.near is not None else 0)
        self.device = next(tamed.parameters()).device
        self.gen = torch.Generator().manual_seed(config.seed)
        lr = config.lr_for(len(forget_q))
        self.loop = Loop(lr=lr, tracked=torch.full((len(forget_q),), float("nan"), dtype=torch.float64))
        self.optimizer: torch.optim.Optimizer = torch.optim.Adam(tamed.parameters(), lr=lr)
        self.good = snapshot(tamed, self.optimizer)
        self.anchor = SampleAnchor(base) if config.sample_anchor > 0 else None
        self.start = time.perf_counter()
        self.confirm_seconds = 0.0
        self.confirmations = 0
        self.screened = 0  # of the confirmations, those refused on the forget images alone

    def begin(self) -> None:
        values = remember_bpd(self.tamed, self.remember_q, self.gen, self.config.stats_images)
        self.loop.mu, self.loop.sigma = values.mean().item(), values.std().item()
        self.loop.sigma0 = self.loop.sigma
        if self.config.stats_rule == "rolling":
            self.loop.window = values.clone()

    def restore(self, state: dict[str, Any]) -> None:
        self.loop = restore_state(state, self.tamed, self.optimizer, self.gen)
        self.good = snapshot(self.tamed, self.optimizer)
        self.start = time.perf_counter() - self.loop.elapsed

    def refresh(self, it: int) -> None:
        """Every stats_every iterations: fresh μ_R, σ_R, a good state to roll back to, tracked estimates."""
        c = self.config
        if not it or it % c.stats_every:
            return
        if c.stats_rule != "rolling":
            self.loop.mu, self.loop.sigma = remember_stats(self.tamed, self.remember_q, self.gen, c.stats_images)
        self.good = snapshot(self.tamed, self.optimizer)
        if c.stop_rule == "tracked" or c.batch_policy == "lowest":
            self._remeasure()

    def _remeasure(self, chunk: int = 64) -> None:
        """Re-measure the tracked bpd of the next `chunk` forget images (all of them when D_F is small)."""
        k = len(self.forget_q)
        idx = torch.arange(self.loop.cursor, self.loop.cursor + min(chunk, k)) % k
        self.loop.cursor = int((self.loop.cursor + len(idx)) % k)
        estimator = "discrete" if self.config.forget_draws > 1 else "mean"
        self.loop.tracked[idx] = bpd_of(self.tamed, self.forget_q[idx], self.gen, self.config.forget_draws, estimator)

    def batch(self) -> tuple[Tensor, Tensor]:
        """(forget indices, remember indices) of this step."""
        c, k = self.config, len(self.forget_q)
        size = c.forget_batch_for(k)
        if k <= size:
            forget_idx = torch.arange(k)
        elif c.batch_policy == "lowest":
            forget_idx = _lowest(self.loop.tracked, self.loop.mu, self.loop.sigma, c, self.gen)
        else:
            forget_idx = torch.randperm(k, generator=self.gen)[:size]
        n_near = self.remember_size - self.n_random
        remember_idx = torch.randint(len(self.remember_q), (self.n_random,), generator=self.gen)
        if n_near:
            assert self.near is not None
            near = self.near[torch.randint(len(self.near), (n_near,), generator=self.gen)]
            remember_idx = torch.cat([remember_idx, near])
        return forget_idx, remember_idx

    def forward(self, forget_idx: Tensor, remember_idx: Tensor) -> _Pass:
        """One forward pass of the tamed model for both batches."""
        draws, n_bits = self.config.forget_draws, self.tamed.config.n_bits
        images = torch.cat([self.forget_q[forget_idx].repeat(draws, 1, 1, 1), self.remember_q[remember_idx]])
        x = to_device(dequantize(images, n_bits, self.gen), self.device)
        bpd = self.tamed.bpd(x)
        n_f = draws * len(forget_idx)
        per_draw = bpd[:n_f].view(draws, len(forget_idx))
        bpd_f = importance_weighted_bpd(per_draw, self.tamed.config.n_dims).float() if draws > 1 else per_draw[0]
        self.loop.tracked[forget_idx] = bpd_f.detach().double().cpu()
        if self.config.stats_rule == "rolling":
            self._roll(bpd[n_f : n_f + self.n_random].detach().double().cpu())
        return _Pass(bpd_f, per_draw.mean(0) - bpd_f, bpd[n_f:], x[n_f:])

    def _roll(self, values: Tensor) -> None:
        """μ_R, σ_R over a window of the remember bpd the steps measured anyway: no refresh pass at all. The
        window spans the last stats_images / remember_batch steps (128 by default); the learning rate is small
        and the remember loss holds D_R in place, so the statistics lag little (README, "Step cost")."""
        loop = self.loop
        idx = (torch.arange(len(values)) + loop.slot) % len(loop.window)
        loop.window[idx] = values
        loop.slot = int((loop.slot + len(values)) % len(loop.window))
        loop.mu, loop.sigma = loop.window.mean().item(), loop.window.std().item()

    def check(self, forget_idx: Tensor, bpd_f: Tensor) -> Tensor:
        """d of every forget image before the step (the paper: all of D_F on one draw; else tracked)."""
        c = self.config
        if c.stop_rule == "tracked":
            return distances(self.loop.tracked.nan_to_num(-math.inf), self.loop.mu, self.loop.sigma, c)
        if len(forget_idx) == len(self.forget_q):
            return distances(bpd_f.detach().double().cpu(), self.loop.mu, self.loop.sigma, c)
        return distances(bpd_of(self.tamed, self.forget_q, self.gen), self.loop.mu, self.loop.sigma, c)

    def candidate(self, d: Tensor, share: float | None, share_stop: Callable[[float], bool] | None) -> bool:
        """Whether this iteration's estimates ask for a stop (confirm_gap iterations after a refused one)."""
        if self.loop.iteration - self.loop.refused_at < self.config.confirm_gap:
            return False
        return _should_stop(d, share, self.config, share_stop)

    def confirm(self, screen: bool = False) -> Final:
        """The stop's measurement on fresh statistics (taming.confirm), timed and counted."""
        started = time.perf_counter()
        try:
            final, screened = measure_stop(self.tamed, self.forget_q, self.remember_q, self.gen, self.config,
                                           self.loop, screen)
            self.screened += screened
            return final
        finally:
            self.confirm_seconds += time.perf_counter() - started
            self.confirmations += 1

    def adopt(self, final: Final) -> None:
        self.loop.mu, self.loop.sigma = final.mu, final.sigma
        if self.config.stop_rule == "tracked":
            self.loop.tracked = final.bpd.clone()

    def losses(self, fwd: _Pass) -> dict[str, Tensor]:
        c, loop = self.config, self.loop
        with torch.no_grad():
            bpd_b = self.base.bpd(fwd.x_remember)
        threshold = loop.mu + c.delta * loop.sigma
        l_f = forget_loss(fwd.forget, threshold, _scale(c, loop.sigma))
        pull = c.pull_for(len(self.forget_q), loop.iteration)
        if pull > 0:
            l_f = l_f + pull * shortfall(fwd.forget, threshold, loop.sigma0, c.delta >= 0)
        if c.even_weight > 0:
            l_f = l_f + c.even_weight * fwd.uneven.mean() / loop.sigma0
        if c.forget_per_image:
            # a mean over a batch grown past forget_batch gives each image less pull against the remember loss
            l_f = l_f * max(1.0, len(fwd.forget) / c.forget_batch)
        if c.remember_loss == "anchored":
            l_r = ((1 - c.gamma) * anchor_loss(fwd.remember, bpd_b, loop.sigma0)
                   + c.gamma * symmetric_kl_loss(fwd.remember, bpd_b))
            if c.remember_pull > 0:
                l_r = l_r + c.remember_pull * mean_rise(fwd.remember, bpd_b, loop.sigma0)
        else:
            l_r = remember_loss(fwd.remember, bpd_b, c.gamma)
        if self.anchor is not None:
            l_r = l_r + c.sample_anchor * self.anchor.loss(self.tamed, self.gen, c.anchor_batch)
        return {"loss": total_loss(l_f, l_r, c.alpha), "forget_loss": l_f, "remember_loss": l_r}

    def step(self, losses: dict[str, Tensor]) -> dict[str, float] | None:
        """Adam step -> the losses' values; on a non-finite loss or gradient roll back instead and return None.

        The losses and the gradient norm come back from the device in one read (on a GPU each `.item()` waits
        for the device on its own), before the step: a non-finite one never reaches the weights."""
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.tamed.parameters(), float("inf"))
        read = torch.stack([*(v.detach() for v in losses.values()), grad_norm]).tolist()
        if not all(math.isfinite(v) for v in read):
            self.optimizer = recover(self.tamed, self.good, self.loop, self.config)
            return None
        self.optimizer.step()
        self.loop.iteration += 1
        self.loop.elapsed = time.perf_counter() - self.start
        return dict(zip(losses, read, strict=False))

    def record(self, values: dict[str, float], max_abs_d: float, share: float | None) -> dict[str, float]:
        """One iteration's entry of the history (the report's loss curves)."""
        loop = self.loop
        entry = {"iteration": float(loop.iteration), **values, "max_abs_d": max_abs_d, "mu_r": loop.mu,
                 "sigma_r": loop.sigma, "lr": loop.lr, **({"share": share} if share is not None else {})}
        loop.history.append(entry)
        return entry

    def info(self, max_abs_d: float, share: float | None, record: dict[str, float]) -> StepInfo:
        loop, config = self.loop, self.config
        per_it = loop.elapsed / max(1, loop.iteration)
        eta = per_it * (config.max_iterations - loop.iteration)
        losses = {k: record[k] for k in ("loss", "forget_loss", "remember_loss")}
        return StepInfo(loop.iteration, config.max_iterations, max_abs_d, loop.mu, loop.sigma, share, losses,
                        loop.elapsed, eta, lambda: save_state(loop, self.tamed, self.optimizer, self.gen))


def _lowest(tracked: Tensor, mu: float, sigma: float, config: TameConfig, gen: torch.Generator) -> Tensor:
    """The forget batch farthest on the wrong side of the threshold; never-measured images first, ties random."""
    d = distances(tracked, mu, sigma, config)
    behind = (-d if config.delta >= 0 else d).nan_to_num(math.inf)
    jitter = torch.rand(len(d), generator=gen, dtype=torch.float64) * 1e-9
    return torch.argsort(behind + jitter, descending=True)[: config.forget_batch_for(len(d))]


def _reason(met: bool, capped: bool) -> str:
    if met and not capped:
        return "stop criterion met and confirmed on fresh statistics"
    if met:
        return "iteration cap reached with every forget image at or past the threshold on fresh statistics"
    return "iteration cap reached before every forget image reached the threshold"


def _should_stop(d: Tensor, share: float | None, config: TameConfig,
                 share_stop: Callable[[float], bool] | None = None) -> bool:
    if config.target_share is not None and share is not None:
        return _share_reached(share, config, share_stop)
    if config.stop_rule == "tracked":
        return confirmed(d, config)
    return bool((d.abs() < config.eps).all())


def _share_reached(share: float, config: TameConfig, share_stop: Callable[[float], bool] | None = None) -> bool:
    if share_stop is not None:
        return share_stop(share)
    assert config.target_share is not None
    return share <= config.target_share if config.direction == "decrease" else share >= config.target_share


def _scale(config: TameConfig, sigma: float) -> float:
    if config.forget_loss == "scale_free":
        return abs(config.delta) * sigma
    return 1.0


