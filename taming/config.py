"""The taming run's configuration: the paper's knobs and ours, and the named methods (rules/method.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rules.method import DEFAULT_METHOD, knobs


@dataclass(frozen=True)
class TameConfig:
    delta: float = 4.0  # threshold in σ_R; negative pulls images towards higher likelihood
    epsilon: float | None = None  # stop tolerance on d; None means 0.15·|δ|
    alpha: float = 0.6  # weight of the forget loss
    gamma: float = 0.6  # weight of the KL terms inside the remember loss
    lr: float = 5e-5
    forget_batch: int = 8  # the smallest forget batch; forget_share grows it with D_F
    forget_share: float = 0.0  # forget batch = this share of D_F's images, between forget_batch and forget_batch_max
    forget_batch_max: int = 32
    forget_per_image: bool = False  # weigh the forget loss by batch / forget_batch: each image as in a batch of 8
    lr_with_batch: bool = False  # lr grows with the forget batch: lr · forget_batch_for(k) / forget_batch
    remember_batch: int = 8
    remember_with_batch: bool = False  # the remember batch grows with the forget batch, as lr_with_batch
    max_iterations: int = 800
    stats_every: int = 10  # re-estimate μ_R, σ_R every this many iterations
    stats_images: int = 1024
    confirm_draws: int = 5
    confirm_gap: int = 0  # iterations after a refused stop candidate before the next one is measured
    forget_loss: str = "paper"  # or "scale_free": sigmoid((Δ / (δ·σ_R))^2)
    seed: int = 0
    max_nan_events: int = 3
    target_share: float | None = None  # rebalancing: stop when the attribute's share reaches this
    direction: str = "decrease"  # rebalancing: whether the share should fall or rise to the target
    share_every: int = 10
    share_rule: str = "point"  # rebalancing: stop on the share itself ("point") or on its interval ("interval")
    method: str = "paper"  # the name the report gives; method_config() fills the knobs below
    forget_draws: int = 1  # dequantization draws per forget image in the loss (importance-weighted when > 1)
    batch_policy: str = "random"  # or "lowest": the forget images farthest below the threshold
    stop_rule: str = "paper"  # or "tracked"
    certify: str = "mean"  # or "discrete": confirm on the importance-weighted bpd
    certify_images: int = 1024  # remember images behind the confirmation's μ_R, σ_R
    remember_loss: str = "paper"  # or "anchored"
    remember_pull: float = 0.0  # anchored only: weight of the remember batch's mean bpd rise (in σ_R) in L_R
    forget_pull: float = 0.0  # weight of the forget images' mean shortfall (in σ_R) in L_F; see pull_for
    forget_pull_from: int = 0  # the iteration from which the pull acts: a rescue for runs that stall
    near_fraction: float = 0.0  # share of each remember batch drawn from the person's nearest identities
    even_weight: float = 0.0  # weight of the forget images' within-bin unevenness (mean − discrete bpd, in σ_R)
    sample_anchor: float = 0.0  # weight of the drift of samples of fixed latents in L_R (taming.sample_anchor)
    anchor_batch: int = 8  # latents decoded per step for it
    stats_rule: str = "refresh"  # or "rolling": μ_R, σ_R over the last stats_images remember bpd of the steps

    @property
    def eps(self) -> float:
        return self.epsilon if self.epsilon is not None else 0.15 * abs(self.delta)

    def forget_batch_for(self, k: int) -> int:
        """Forget images per step when D_F holds k: a fixed 8 leaves each of 100 photos out of 12 steps in 13."""
        grown = math.ceil(self.forget_share * k)
        return min(k, max(self.forget_batch, min(grown, self.forget_batch_max)))

    def remember_batch_for(self, k: int) -> int:
        """Remember images per step when D_F holds k: with remember_with_batch, remember_batch · forget batch /
        forget_batch, so that a step's pull back on D_R keeps pace with a grown forget batch (README, "The remember
        batch")."""
        if not self.remember_with_batch:
            return self.remember_batch
        return round(self.remember_batch * max(1.0, self.forget_batch_for(k) / self.forget_batch))

    def lr_for(self, k: int) -> float:
        """The learning rate of a run with k forget images (the linear scaling rule when lr_with_batch)."""
        if not self.lr_with_batch:
            return self.lr
        return self.lr * max(1.0, self.forget_batch_for(k) / self.forget_batch)

    def pull_for(self, k: int, iteration: int) -> float:
        """Weight of the shortfall pull in a run with k forget images: forget_pull · (1 − batch / k).

        A step's sigmoid pulls only the images of its forget batch, a share batch / k of them, while the remember
        loss pulls back at every step; the pull makes up for the images a step leaves out. A request whose photos
        all fit one batch gets none: 7 AT&T photos converged without it, and with it lost specificity
        (README, "The shortfall pull"). Before forget_pull_from it is 0: on LFW the pull from the first step
        shortened every run but cost BPD(D_R), so it rescues only the runs still unconfirmed by then."""
        if not k or iteration < self.forget_pull_from:
            return 0.0
        return self.forget_pull * max(0.0, 1.0 - self.forget_batch_for(k) / k)

    @property
    def estimator(self) -> str:
        """How the confirmation measures bpd: "mean" over draws (the paper) or "discrete"."""
        return "discrete" if self.certify == "discrete" else "mean"

    def check(self) -> None:
        """Every choice knob among its allowed values and the batch bounds consistent, or ValueError."""
        choices = {"batch_policy": ("random", "lowest"), "stop_rule": ("paper", "tracked"),
                   "stats_rule": ("refresh", "rolling"),
                   "certify": ("mean", "discrete"), "remember_loss": ("paper", "anchored"),
                   "forget_loss": ("paper", "scale_free"), "share_rule": ("point", "interval")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.forget_draws < 1 or self.confirm_draws < 1:
            raise ValueError("forget_draws and confirm_draws must be at least 1")
        if not 0.0 <= self.forget_share <= 1.0 or self.forget_batch_max < self.forget_batch:
            raise ValueError("forget_share must lie in [0, 1] and forget_batch_max be at least forget_batch")

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "epsilon": self.eps}


def method_config(method: str = DEFAULT_METHOD, **overrides: Any) -> TameConfig:
    """The TameConfig of a named method (rules.method.METHODS), with any field overridden."""
    return TameConfig(**{**knobs(method), "method": method, **overrides})
