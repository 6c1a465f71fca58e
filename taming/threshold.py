"""The threshold of Algorithm 1: μ_R, σ_R of the remember images, d(x) of the forget images and the verdict."""

from __future__ import annotations

import torch
from torch import Tensor

from taming.config import TameConfig
from taming.glow import Glow
from taming.likelihood import estimate


def bpd_of(model: Glow, images_q: Tensor, gen: torch.Generator, draws: int = 1, estimator: str = "mean") -> Tensor:
    """bpd of quantized images [N, C, H, W] over `draws` draws taken from `gen` -> [N] (float64, CPU)."""
    return estimate(model, images_q, model.config.n_bits, draws, estimator, gen=gen)


def remember_bpd(model: Glow, remember_q: Tensor, gen: torch.Generator, n: int, draws: int = 1,
                 estimator: str = "mean") -> Tensor:
    """bpd of up to n random remember images under `model` -> [n] (float64)."""
    idx = torch.randperm(len(remember_q), generator=gen)[:n]
    return bpd_of(model, remember_q[idx], gen, draws, estimator)


def remember_stats(model: Glow, remember_q: Tensor, gen: torch.Generator, n: int, draws: int = 1,
                   estimator: str = "mean") -> tuple[float, float]:
    """μ_R, σ_R: mean and std of bpd over up to n remember images under `model`."""
    values = remember_bpd(model, remember_q, gen, n, draws, estimator)
    return values.mean().item(), values.std().item()


def distances(bpd_forget: Tensor, mu: float, sigma: float, config: TameConfig) -> Tensor:
    """d(x) = (bpd_T(x) - t) / σ_R with t = μ_R + δ·σ_R."""
    return (bpd_forget - (mu + config.delta * sigma)) / sigma


def confirmed(d: Tensor, config: TameConfig) -> bool:
    """Every forget image at or past the threshold (d ≥ -ε; mirrored for δ < 0)."""
    if config.delta >= 0:
        return bool((d >= -config.eps).all())
    return bool((d <= config.eps).all())
