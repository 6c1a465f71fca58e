"""The attribute's share among a model's samples, corrected for the classifier's errors, with a 95% interval.

A classifier that misses some positives (sensitivity Se < 1) and flags some negatives (specificity Sp < 1) sees
an observed share q = Se·p + (1 − Sp)·(1 − p) of a true share p. The Rogan–Gladen estimator inverts it:

    p = (q + Sp − 1) / (Se + Sp − 1), clipped to [0, 1].

Its 95% interval is the delta method over the three sources of error: q from N samples (binomial), Se and Sp
from the classifier's out-of-fold counts (binomial over its n_pos positive and n_neg negative test images):

    Var(p) ≈ [q(1 − q)/N + p²·Se(1 − Se)/n_pos + (1 − p)²·Sp(1 − Sp)/n_neg] / (Se + Sp − 1)².

The samples come from fixed, seeded latents at a temperature (default 0.7), so that two measurements of a model
during a run differ by what the model learnt, not by which latents were drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from taming.glow import Glow

DEFAULT_SAMPLES = 1000
DEFAULT_TEMPERATURE = 0.7
DEFAULT_SEED = 12345
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class ErrorRates:
    """A classifier's measured sensitivity and specificity and the test counts behind them."""

    sensitivity: float
    specificity: float
    n_positive: int
    n_negative: int

    @property
    def informedness(self) -> float:
        """Se + Sp − 1: 0 for a classifier no better than a coin, 1 for a perfect one."""
        return self.sensitivity + self.specificity - 1


@dataclass(frozen=True)
class ShareEstimate:
    """The corrected share of samples with the attribute and its 95% interval (all in [0, 1])."""

    share: float
    low: float
    high: float
    observed: float  # fraction the classifier called positive, uncorrected
    samples: int
    temperature: float
    seed: int

    def contains(self, value: float) -> bool:
        """Whether `value` lies inside the 95% interval."""
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def rogan_gladen(observed: float, rates: ErrorRates) -> float:
    """The true share from an observed one, clipped to [0, 1]; ValueError for an uninformative classifier."""
    j = rates.informedness
    if j <= 0:
        raise ValueError(f"the classifier is no better than chance (sensitivity + specificity - 1 = {j:.3f})")
    return min(1.0, max(0.0, (observed + rates.specificity - 1) / j))


def corrected_share(observed: float, samples: int, rates: ErrorRates, temperature: float = DEFAULT_TEMPERATURE,
                    seed: int = DEFAULT_SEED, z: float = Z_95) -> ShareEstimate:
    """Rogan–Gladen share of `observed` (a fraction of `samples` images) with its delta-method interval."""
    if samples < 1:
        raise ValueError("a share needs at least one sample")
    p = rogan_gladen(observed, rates)
    j = rates.informedness
    se, sp = rates.sensitivity, rates.specificity
    var = (observed * (1 - observed) / samples
           + p**2 * se * (1 - se) / max(1, rates.n_positive)
           + (1 - p) ** 2 * sp * (1 - sp) / max(1, rates.n_negative)) / j**2
    half = z * math.sqrt(var)
    return ShareEstimate(p, max(0.0, p - half), min(1.0, p + half), observed, samples, temperature, seed)


def fixed_latents(model: Glow, samples: int = DEFAULT_SAMPLES, temperature: float = DEFAULT_TEMPERATURE,
                  seed: int = DEFAULT_SEED) -> list[Tensor]:
    """The seeded latents every measurement of a run reuses."""
    return model.latents(samples, temperature, seed)


def samples_of(model: Glow, latents: list[Tensor], batch: int = 250) -> Tensor:
    """Model-space samples [N, C, H, W] of `latents`, decoded in chunks (on the CPU)."""
    n = latents[0].shape[0]
    return torch.cat([model.sample(min(batch, n - i), z=[z[i : i + batch] for z in latents]).cpu()
                      for i in range(0, n, batch)])


class ShareMeter:
    """Measures a model's corrected share on fixed latents with one classifier (its `predict` -> bool [N])."""

    def __init__(self, predict: Callable[[Tensor], Tensor], rates: ErrorRates, latents: list[Tensor],
                 temperature: float = DEFAULT_TEMPERATURE, seed: int = DEFAULT_SEED):
        self.predict, self.rates, self.latents = predict, rates, latents
        self.temperature, self.seed = temperature, seed

    @classmethod
    def for_model(cls, model: Glow, predict: Callable[[Tensor], Tensor], rates: ErrorRates,
                  samples: int = DEFAULT_SAMPLES, temperature: float = DEFAULT_TEMPERATURE,
                  seed: int = DEFAULT_SEED) -> ShareMeter:
        """A meter on `samples` seeded latents of `model`'s shape."""
        return cls(predict, rates, fixed_latents(model, samples, temperature, seed), temperature, seed)

    def __call__(self, model: Glow) -> ShareEstimate:
        return self.measure(samples_of(model, self.latents))

    def measure(self, images: Tensor) -> ShareEstimate:
        """The corrected share among samples [N, C, H, W] already drawn from this meter's latents."""
        observed = float(self.predict(images).float().mean())
        return corrected_share(observed, len(images), self.rates, self.temperature, self.seed)
