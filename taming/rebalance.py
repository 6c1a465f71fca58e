"""Taming for a share: fewer (or more) samples with an attribute (the paper's section 4.2).

`decrease` pushes the images with the attribute towards the threshold (D_F = positives, D_R = negatives and any
other remembered images). `increase` has two ways, both selectable and measured in bench/rebalance_eyeglasses.py:

- "push_negatives": D_F = the images without the attribute, pushed down (δ > 0), D_R = the positives and others;
- "pull_positives": D_F = the positives, pulled *up* to a threshold below μ_R (δ < 0), D_R = the negatives and others.

The loop is taming.tame.tame itself: its `share_fn` hook measures the corrected share (taming.share) every
`share_every` iterations on fixed latents, and its `share_stop` hook stops the run when the target lies inside the
share's 95% interval, or when the interval has gone past the target. At the cap the run stops anyway and says so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from taming.data import FaceSet, quantize
from taming.features import FeatureSpace
from taming.glow import Glow
from taming.likelihood import mean_bpd
from taming.share import ShareEstimate, ShareMeter, samples_of
from taming.tame import StepInfo, TameConfig, TameResult, tame

DIRECTIONS = ("decrease", "increase")
INCREASE_STRATEGIES = ("push_negatives", "pull_positives")


@dataclass(frozen=True)
class Sides:
    """Which images a rebalance pushes (D_F) and which it keeps (D_R), and the sign of δ."""

    forget: FaceSet
    remember: FaceSet
    delta_sign: int  # +1: D_F pushed below the others' likelihood; -1: pulled above it
    strategy: str  # "push_positives" (decrease), "push_negatives" or "pull_positives" (increase)


def sides(positive: FaceSet, negative: FaceSet, direction: str, strategy: str = "push_negatives",
          others: FaceSet | None = None) -> Sides:
    """D_F and D_R of a rebalance; `others` (e.g. the model's reference set) join D_R, less any image of D_F."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'decrease' or 'increase', not {direction!r}")
    if direction == "increase" and strategy not in INCREASE_STRATEGIES:
        raise ValueError(f"an increase is one of {', '.join(INCREASE_STRATEGIES)}, not {strategy!r}")
    if direction == "decrease":
        forget, keep, sign, strategy = positive, negative, 1, "push_positives"
    elif strategy == "push_negatives":
        forget, keep, sign = negative, positive, 1
    else:
        forget, keep, sign = positive, negative, -1
    if others is not None and len(others):
        pushed = {img.numpy().tobytes() for img in forget.images}
        rest = others.subset(torch.tensor([img.numpy().tobytes() not in pushed for img in others.images]).numpy())
        keep = _concat(keep, rest)
    return Sides(forget, keep, sign, strategy)


def _concat(a: FaceSet, b: FaceSet) -> FaceSet:
    import numpy as np

    return FaceSet(torch.cat([a.images, b.images]), np.concatenate([a.identity, b.identity]), a.names + b.names,
                   a.sha256 + b.sha256, np.concatenate([a.image_index, b.image_index]))


def share_reached(estimate: ShareEstimate, target: float, direction: str, rule: str = "point") -> bool:
    """Whether a run may stop on this measurement.

    "point": the corrected share itself has reached the target. "interval": the target lies inside the 95%
    interval, or the whole interval is past it; with 300 monitor samples the interval is about ±0.12 wide, so
    this rule stops while the share is still up to that far short of the target (on AT&T eyeglasses every run
    stopped short of p0/2 or 1.5·p0).
    """
    if rule == "point":
        return estimate.share <= target if direction == "decrease" else estimate.share >= target
    if rule != "interval":
        raise ValueError(f"share_rule must be 'point' or 'interval', not {rule!r}")
    past = estimate.high < target if direction == "decrease" else estimate.low > target
    return estimate.contains(target) or past


@dataclass
class RebalanceResult:
    model: Glow
    reached: bool  # the last measured share's interval holds (or has passed) the target
    reason: str
    iterations: int
    target: float
    direction: str
    strategy: str
    before: ShareEstimate  # on the final meter's latents
    after: ShareEstimate
    trace: list[dict[str, Any]]  # {"iteration", share estimate...} every share_every iterations (running meter)
    tame: TameResult
    bpd: dict[str, dict[str, float]] = field(default_factory=dict)  # side -> {"before", "after", "change"}
    identity_kept: float | None = None  # fraction of samples whose nearest before-sample is their own
    samples_before: Tensor | None = None  # [N, C, H, W] model-space, the final meter's latents
    samples_after: Tensor | None = None
    config: TameConfig | None = None  # as run: δ with its sign, the target and the direction

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able summary (no tensors)."""
        return {"reached": self.reached, "reason": self.reason, "iterations": self.iterations,
                "target": self.target, "direction": self.direction, "strategy": self.strategy,
                "before": self.before.to_dict(), "after": self.after.to_dict(), "trace": self.trace,
                "bpd": self.bpd, "identity_kept": self.identity_kept}


class ShareRun:
    """The share side of one run: measure every share_every iterations, decide on the interval, keep the trace."""

    def __init__(self, meter: ShareMeter, target: float, direction: str,
                 on_share: Callable[[int, ShareEstimate], None] | None = None, rule: str = "point") -> None:
        self.meter, self.target, self.direction, self.on_share = meter, target, direction, on_share
        self.rule = rule
        self.trace: list[dict[str, Any]] = []
        self.iteration = 0  # the loop's, as on_step last reported it
        self.classifier: Any = None  # what `meter` classifies with, for the report (taming.attribute.Ensemble)

    def section(self, base: Glow, tamed: Glow, space: FeatureSpace | None) -> dict[str, Any]:
        """The report's metrics.attribute_share: the corrected shares before and after on the meter's latents, their
        intervals, the trace, and the fraction of samples keeping their identity."""
        before_x, after_x = samples_of(base, self.meter.latents), samples_of(tamed, self.meter.latents)
        before, after = self.meter.measure(before_x), self.meter.measure(after_x)
        acc = getattr(self.classifier, "accuracy", None)
        return {"before": before.share, "after": after.share, "target": self.target,
                "before_interval": [before.low, before.high], "after_interval": [after.low, after.high],
                "observed_before": before.observed, "observed_after": after.observed, "samples": after.samples,
                "temperature": after.temperature, "seed": after.seed, "direction": self.direction,
                "reached": self.stop(0.0), "trace": self.trace,
                "estimator": "Rogan-Gladen, 95% delta-method interval (samples and the classifier's error rates)",
                "classifier": None if acc is None else {"accuracy": acc.accuracy, "sensitivity": acc.sensitivity,
                                                        "specificity": acc.specificity, "grouping": acc.grouping,
                                                        "people": acc.people},
                "identity_kept": identity_kept(space, before_x, after_x) if space is not None else None}

    def share_fn(self, model: Glow) -> float:
        """tame()'s share_fn: the corrected share on the meter's fixed latents (the estimate kept in the trace)."""
        estimate = self.meter(model)
        self.trace.append({"iteration": self.iteration, **estimate.to_dict()})
        if self.on_share is not None:
            self.on_share(self.iteration, estimate)
        return estimate.share

    def last(self) -> ShareEstimate:
        return ShareEstimate(**{k: v for k, v in self.trace[-1].items() if k != "iteration"})

    def stop(self, _share: float) -> bool:
        """tame()'s share_stop: the last measurement reached the target (by the run's share_rule)."""
        return bool(self.trace) and share_reached(self.last(), self.target, self.direction, self.rule)

    def step(self, info: StepInfo) -> None:
        self.iteration = info.iteration


def rebalance(base: Glow, chosen: Sides, config: TameConfig, target: float, direction: str, meter: ShareMeter, *,
              final_meter: ShareMeter | None = None, space: FeatureSpace | None = None,
              on_step: Callable[[StepInfo], None] | None = None,
              on_share: Callable[[int, ShareEstimate], None] | None = None) -> RebalanceResult:
    """Tame a copy of `base` until the attribute's share reaches `target` (or the iteration cap).

    `meter` measures the share every config.share_every iterations; `final_meter` (default: `meter`) the share
    before and after, on which the report stands. δ's sign comes from `chosen`; its size from config.delta.
    `space` (a face embedding) gives the identity check: on the final latents, is each after-sample's nearest
    before-sample its own?
    """
    n_bits = base.config.n_bits
    config = run_config(config, chosen, target, direction)
    shares = ShareRun(meter, target, direction, on_share, config.share_rule)

    def step(info: StepInfo) -> None:
        shares.step(info)
        if on_step is not None:
            on_step(info)

    forget_q, remember_q = quantize(chosen.forget.images, n_bits), quantize(chosen.remember.images, n_bits)
    result = tame(copy.deepcopy(base), base, forget_q, remember_q, config, on_step=step, share_fn=shares.share_fn,
                  share_stop=shares.stop)
    final = final_meter or meter
    before_x, after_x = samples_of(base, final.latents), samples_of(result.model, final.latents)
    before, after = final.measure(before_x), final.measure(after_x)
    reached = shares.stop(shares.last().share)
    bpd = {"forget": _bpd_change(base, result.model, forget_q, n_bits),
           "remember": _bpd_change(base, result.model, remember_q, n_bits)}
    kept = identity_kept(space, before_x, after_x) if space is not None else None
    return RebalanceResult(result.model, reached, stop_reason(reached, result.iterations, target, config),
                           result.iterations, target, direction, chosen.strategy, before, after, shares.trace, result,
                           bpd, kept, before_x, after_x, config)


def run_config(config: TameConfig, chosen: Sides, target: float, direction: str) -> TameConfig:
    """The taming knobs of a rebalance: δ signed by the side pushed, the share target and direction."""
    return replace(config, delta=chosen.delta_sign * abs(config.delta), target_share=target, direction=direction)


def stop_reason(reached: bool, iterations: int, target: float, config: TameConfig) -> str:
    what = "share" if config.share_rule == "point" else "share's 95% interval"
    if reached:
        return f"the {what} reached the target {target:.3f} after {iterations} iterations"
    return f"iteration cap {config.max_iterations} reached before the {what} reached the target {target:.3f}"


def _bpd_change(base: Glow, tamed: Glow, images_q: Tensor, n_bits: int) -> dict[str, float]:
    """Mean bpd (5 dequantization draws, the same for both models) before and after, and the relative change."""
    before = float(mean_bpd(base, images_q, n_bits).mean())
    after = float(mean_bpd(tamed, images_q, n_bits).mean())
    return {"before": before, "after": after, "change": (after - before) / before}


def identity_kept(space: FeatureSpace, before: Tensor, after: Tensor) -> float:
    """Fraction of samples whose after-embedding's nearest before-embedding (cosine) is their own before-sample.

    before, after: model-space samples [N, C, H, W] of the same latents."""
    a = torch.nn.functional.normalize(space.embed(before), dim=1)
    b = torch.nn.functional.normalize(space.embed(after), dim=1)
    nearest = (b @ a.T).argmax(dim=1)
    return float((nearest == torch.arange(len(a))).float().mean())
