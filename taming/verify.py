"""Is this person forgotten? Likelihood quantiles and the threshold verdict of images under one model.

The verdict is the rule a taming run certifies (DESIGN.md section 4): with μ_R, σ_R the mean and standard
deviation of bpd over the model's reference remember images under that very model, the threshold is
t = μ_R + δ·σ_R, d(x) = (bpd(x) − t)/σ_R, and an image is at or past the threshold when d ≥ −ε (mirrored,
d ≤ ε, for δ < 0). bpd is averaged over 5 seeded dequantization draws and μ_R, σ_R come from up to 10,000
remember images, exactly as the audit report's evaluation measures them (taming/evaluate.py), so that the
statistics a taming run stored for its version and the ones computed here are the same kind of number.
`taming verify` and `POST /v1/verify` (through worker/verify_server.py) both call `check_images`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn

from taming.data import quantize
from taming.evaluate import MAX_REFERENCE, mean_bpd, quantiles, subset_by_content
from taming.likelihood import image_keys

DEFAULT_DELTA = 4.0  # DESIGN.md section 4
DRAWS = 5
SEED = 0


def default_epsilon(delta: float) -> float:
    """ε = 0.15·|δ| (DESIGN.md section 4)."""
    return round(0.15 * abs(delta), 10)


@dataclass(frozen=True)
class RememberStats:
    """μ_R and σ_R (bpd) of a model's remember images, and how they were measured."""

    mu: float
    sigma: float
    n: int
    draws: int = DRAWS
    seed: int = SEED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RememberStats:
        return cls(float(data["mu"]), float(data["sigma"]), int(data["n"]), int(data.get("draws", DRAWS)),
                   int(data.get("seed", SEED)))


@dataclass(frozen=True)
class ImageCheck:
    """One image: its bpd, likelihood quantile, distance d to the threshold, and whether it reached it."""

    name: str
    bpd: float
    quantile: float
    d: float
    reached: bool  # at or past the threshold
    counted: bool  # part of the set's verdict (images that carry no identity are not)


@dataclass(frozen=True)
class Verdict:
    """The answer for a set of images under one model."""

    delta: float
    epsilon: float
    threshold: float  # t = μ_R + δ·σ_R, in bpd
    remember: RememberStats
    images: list[ImageCheck] = field(default_factory=list)
    reached: bool = False  # every counted image at or past the threshold
    counted: int = 0
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def remember_stats(model: nn.Module, remember_u8: Tensor, n_bits: int) -> RememberStats:
    """μ_R, σ_R of up to MAX_REFERENCE remember images uint8 [N, C, H, W] (a subset by content when more), 5 draws."""
    images = quantize(remember_u8, n_bits)
    images = images[subset_by_content(image_keys(images), MAX_REFERENCE, SEED)]  # the subset taming.evaluate uses
    if images.shape[0] < 2:
        raise ValueError("the remember set needs at least 2 images to estimate μ_R and σ_R")
    bpd = mean_bpd(model, images, n_bits, DRAWS, SEED)
    return RememberStats(float(bpd.mean()), float(bpd.std()), int(bpd.numel()))


def at_or_past(d: Tensor, delta: float, epsilon: float) -> Tensor:
    """Per image: d ≥ −ε (δ ≥ 0), or d ≤ ε (δ < 0), the confirmed rule of a taming run -> bool [N]."""
    return d >= -epsilon if delta >= 0 else d <= epsilon


def check_images(model: nn.Module, images_u8: Tensor, names: list[str], stats: RememberStats, n_bits: int, *,
                 delta: float = DEFAULT_DELTA, epsilon: float | None = None,
                 counted: list[bool] | None = None) -> Verdict:
    """Each image's bpd, quantile and d against the threshold t = μ_R + δ·σ_R, and the set's verdict.

    images_u8: uint8 [N, C, H, W] at the model's size. counted: which images take part in the set's verdict
    (default all; the service leaves out images that carry no identity, as a taming run does).
    """
    eps = default_epsilon(delta) if epsilon is None else float(epsilon)
    counted = [True] * len(names) if counted is None else counted
    bpd = mean_bpd(model, quantize(images_u8, n_bits), n_bits, DRAWS, SEED)
    threshold = stats.mu + delta * stats.sigma
    d = (bpd - threshold) / stats.sigma
    q = quantiles(bpd, stats.mu, stats.sigma)
    hit = at_or_past(d, delta, eps)
    items = [ImageCheck(n, float(b), float(v), float(x), bool(r), bool(c))
             for n, b, v, x, r, c in zip(names, bpd, q, d, hit, counted, strict=True)]
    votes = [i.reached for i in items if i.counted]
    reached = bool(votes) and all(votes)
    return Verdict(delta, eps, threshold, stats, items, reached, len(votes), _summary(votes, threshold, delta, eps))


def _summary(votes: list[bool], threshold: float, delta: float, eps: float) -> str:
    rule = f"t = {threshold:.4f} bpd (δ = {delta:g}), tolerance ε = {eps:g}"
    if not votes:
        return f"no image carries an identity, so none can count towards a verdict; {rule}"
    hits, word = sum(votes), "forgotten" if delta >= 0 else "raised"
    if hits == len(votes):
        return f"all {hits} images at or past the threshold: {word}; {rule}"
    return f"{len(votes) - hits} of {len(votes)} images short of the threshold: not {word}; {rule}"
