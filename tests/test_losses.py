"""The losses of Algorithm 1 as pure functions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from taming.losses import forget_loss, remember_loss, symmetric_kl, total_loss


def test_forget_loss_is_smallest_at_the_threshold() -> None:
    at = forget_loss(torch.tensor([3.0, 3.0]), threshold=3.0)
    below = forget_loss(torch.tensor([2.5, 2.5]), threshold=3.0)
    assert at.item() == 0.5 and below.item() > at.item()
    bpd = torch.tensor([2.5], requires_grad=True)
    forget_loss(bpd, threshold=3.0).backward()
    assert bpd.grad is not None and bpd.grad.item() < 0  # descending the loss raises bpd towards t


def test_scale_free_variant_keeps_its_gradient_far_from_the_threshold() -> None:
    bpd = torch.tensor([0.0], requires_grad=True)
    forget_loss(bpd, threshold=10.0).backward()
    paper = abs(bpd.grad.item())  # type: ignore[union-attr]
    bpd.grad = None
    forget_loss(bpd, threshold=10.0, scale=10.0).backward()
    assert paper < 1e-30 < abs(bpd.grad.item())  # type: ignore[union-attr]


def test_symmetric_kl_matches_torch_distributions() -> None:
    mu_b, s_b, mu_t, s_t = torch.tensor(1.0), torch.tensor(0.5), torch.tensor(1.3), torch.tensor(0.7)
    expected = kl_divergence(Normal(mu_b, s_b), Normal(mu_t, s_t)) + kl_divergence(Normal(mu_t, s_t), Normal(mu_b, s_b))
    torch.testing.assert_close(symmetric_kl(mu_b, s_b, mu_t, s_t), expected)
    assert symmetric_kl(mu_b, s_b, mu_b, s_b).item() == 0.0


def test_remember_loss_gradient_flows_only_to_the_tamed_model() -> None:
    tamed = torch.tensor([3.0, 3.2, 2.9, 3.1], requires_grad=True)
    base = torch.tensor([3.0, 3.1, 2.8, 3.3], requires_grad=True)
    loss = remember_loss(tamed, base, gamma=0.6)
    loss.backward()
    assert tamed.grad is not None and base.grad is None
    assert math.isfinite(loss.item())
    assert total_loss(torch.tensor(1.0), torch.tensor(3.0), 0.6).item() == pytest.approx(0.6 + 0.4 * 3.0)


def test_anchor_loss_is_zero_where_the_base_is_and_grows_with_the_gap() -> None:
    import torch

    from taming.losses import anchor_loss

    base = torch.tensor([2.0, 2.5, 3.0])
    assert float(anchor_loss(base.clone(), base, 0.1)) == 0.0
    moved = torch.tensor([2.1, 2.5, 3.0], requires_grad=True)
    loss = anchor_loss(moved, base, 0.1)
    assert loss.item() == pytest.approx(1.0 / 3, rel=1e-5)  # one image one σ away: (1^2 + 0 + 0) / 3
    loss.backward()
    assert moved.grad is not None and moved.grad[0] > 0 and moved.grad[1] == 0


def test_mean_rise_pulls_every_image_equally_even_beside_the_anchor() -> None:
    from taming.losses import mean_rise

    base = torch.tensor([2.0, 2.5, 3.0])
    moved = torch.tensor([2.1, 2.6, 3.1], requires_grad=True)
    rise = mean_rise(moved, base, 0.1)
    assert rise.item() == pytest.approx(1.0, rel=1e-5)  # the batch's mean one σ up
    rise.backward()
    assert moved.grad is not None and torch.allclose(moved.grad, torch.full((3,), 1 / 0.3))
    assert mean_rise(base - 0.1, base, 0.1).item() == pytest.approx(-1.0, rel=1e-5)  # below the base: negative


def test_shortfall_pulls_only_the_images_short_of_the_threshold_at_a_constant_rate() -> None:
    from taming.losses import shortfall

    bpd = torch.tensor([1.0, 1.9, 2.5], requires_grad=True)  # 1.0 σ and 0.1 σ short of t = 2, one past it
    loss = shortfall(bpd, threshold=2.0, scale=1.0)
    assert loss.item() == pytest.approx((1.0 + 0.1) / 3, rel=1e-5)
    loss.backward()
    assert bpd.grad is not None and torch.allclose(bpd.grad, torch.tensor([-1 / 3, -1 / 3, 0.0]))
    mirrored = shortfall(torch.tensor([1.0, 3.0]), threshold=2.0, scale=0.5, upward=False)  # δ < 0: above t is short
    assert mirrored.item() == pytest.approx(1.0, rel=1e-5)
