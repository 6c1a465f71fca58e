"""The two losses of "Taming Normalizing Flows" (Malnick et al., WACV 2024, Algorithm 1), in BPD units.

Pure functions on tensors. Working in bits per dimension keeps the forget loss alive: in nats the
sigmoid saturates and its gradient vanishes (DESIGN.md section 4).
"""

from __future__ import annotations

from torch import Tensor, sigmoid


def forget_loss(bpd_forget: Tensor, threshold: float, scale: float = 1.0) -> Tensor:
    """mean sigmoid(((bpd - t) / scale)^2) over the forget batch [B] -> scalar.

    scale = 1 is the paper's loss; scale = |δ|·σ_R is the scale-free variant, which keeps the gradient
    alive when Δ is large in bpd (small images, mixed lighting).
    """
    delta = (bpd_forget - threshold) / scale
    return sigmoid(delta**2).mean()


def shortfall(bpd_forget: Tensor, threshold: float, scale: float, upward: bool = True) -> Tensor:
    """mean(relu(t - bpd) / scale) over the forget batch [B] -> scalar (mirrored when not `upward`).

    The paper's sigmoid((bpd - t)^2) has a gradient that falls to 0 as an image nears t, where the remember loss
    still pulls back: many images (a coalesced run, a person with a hundred photos) then settle short of the
    threshold. This linear term pulls every image still short of t at a constant rate and none past it.
    """
    gap = threshold - bpd_forget if upward else bpd_forget - threshold
    return (gap.clamp(min=0) / scale).mean()


def normal_fit(bpd: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of a batch of bpd values [B] (a normal fitted to the batch)."""
    return bpd.mean(), bpd.std()


def symmetric_kl(mu_b: Tensor, sigma_b: Tensor, mu_t: Tensor, sigma_t: Tensor) -> Tensor:
    """KL(N_B || N_T) + KL(N_T || N_B) for univariate normals, closed form.

    The log terms cancel in the sum, but they are kept as torch expressions so that each direction
    alone carries its full gradient.
    """
    var_b, var_t = sigma_b**2, sigma_t**2
    diff2 = (mu_b - mu_t) ** 2
    kl_bt = (sigma_t / sigma_b).log() + (var_b + diff2) / (2 * var_t) - 0.5
    kl_tb = (sigma_b / sigma_t).log() + (var_t + diff2) / (2 * var_b) - 0.5
    return kl_bt + kl_tb


def remember_loss(bpd_tamed: Tensor, bpd_base: Tensor, gamma: float) -> Tensor:
    """(1-γ)·mean bpd_T + γ·(KL(N_B‖N_T) + KL(N_T‖N_B)) on one remember batch [B].

    bpd_base comes from the frozen base model on the same dequantized images (no gradient).
    """
    mu_t, sigma_t = normal_fit(bpd_tamed)
    mu_b, sigma_b = normal_fit(bpd_base.detach())
    return (1 - gamma) * mu_t + gamma * symmetric_kl(mu_b, sigma_b, mu_t, sigma_t)


def symmetric_kl_loss(bpd_tamed: Tensor, bpd_base: Tensor) -> Tensor:
    """KL(N_B‖N_T) + KL(N_T‖N_B) between normals fitted to one remember batch under both models [B]."""
    mu_t, sigma_t = normal_fit(bpd_tamed)
    mu_b, sigma_b = normal_fit(bpd_base.detach())
    return symmetric_kl(mu_b, sigma_b, mu_t, sigma_t)


def anchor_loss(bpd_tamed: Tensor, bpd_base: Tensor, scale: float) -> Tensor:
    """mean(((bpd_T - bpd_B) / scale)^2) over one remember batch [B] (same dequantization for both models).

    Holds every remember image where the base model has it, in units of `scale` (σ_R of the base model),
    instead of the paper's (1-γ)·mean bpd_T, which keeps training on D_R and so drifts the model towards it,
    away from every face it never trained on.
    """
    return (((bpd_tamed - bpd_base.detach()) / scale) ** 2).mean()


def mean_rise(bpd_tamed: Tensor, bpd_base: Tensor, scale: float) -> Tensor:
    """(mean bpd_T - mean bpd_B) / scale over one remember batch [B] -> scalar.

    The anchor's gradient vanishes as each image nears its base bpd, so many small rises add up (+1% BPD(D_R)
    on LFW); this linear term keeps pulling the batch's mean back, like the paper's mean bpd_T but relative.
    """
    return (bpd_tamed.mean() - bpd_base.detach().mean()) / scale


def sample_drift(x_tamed: Tensor, x_base: Tensor, scale: float) -> Tensor:
    """mean((x_T - x_B)^2) / scale over samples [B, C, H, W] of the same latents under both models -> scalar.

    The likelihood losses say nothing of the map from latents to images: a rebalance that keeps D_R's bpd can
    still redraw every sample. With `scale` the base samples' pixel variance, 1 means samples as unlike their
    former selves as two unrelated samples.
    """
    return ((x_tamed - x_base.detach()) ** 2).mean() / scale


def total_loss(l_forget: Tensor, l_remember: Tensor, alpha: float) -> Tensor:
    """L = α·L_F + (1-α)·L_R."""
    return alpha * l_forget + (1 - alpha) * l_remember
