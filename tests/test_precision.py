"""The precision policy (taming/precision.py) and the host-sync-free Glow pass, on the CPU.

bf16 autocast runs on the CPU too, so the policy's numbers are checked here against fp32 on a tiny seeded Glow
whose coupling networks and priors are not at their zero initialisation (a fresh Glow's couplings output zeros,
whatever precision they compute in).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from taming.glow import ActNorm, Block, Glow, GlowConfig, InvConv2dLU
from taming.likelihood import mean_bpd
from taming.precision import Precision


def _tiny(affine: bool, seed: int = 0) -> tuple[Glow, torch.Tensor]:
    """A seeded 16x16 grey Glow with every parameter moved off its initialisation, and 16 dequantized images."""
    torch.manual_seed(seed)
    model = Glow(GlowConfig(in_channel=1, img_size=16, n_flow=2, n_block=2, hidden=16, affine=affine))
    gen = torch.Generator().manual_seed(seed)
    images_q = torch.floor(torch.rand(16, 1, 16, 16, generator=gen) * 32) / 32 - 0.5
    x = images_q + torch.rand(images_q.shape, generator=gen) / 32
    with torch.no_grad():
        model(x)  # ActNorm's data-dependent init
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model, x


@pytest.mark.parametrize("affine", [False, True])
def test_bf16_step_bpd_matches_fp32(affine: bool) -> None:
    model, x = _tiny(affine)
    fast = Precision("bf16").prepare(copy.deepcopy(model))
    exact, low = model.bpd(x), fast.bpd(x)  # gradient passes: the couplings of `fast` compute in bf16
    assert low.dtype == torch.float32
    diff = (exact - low).detach()
    assert float(diff.abs().max()) > 0  # bf16 did run
    # What the losses see; measured here 3e-5 to 3e-4 on the batch mean, 1e-4 to 5e-4 per image (1.5e-3 on the
    # shipped 32x32 model), against 1e-4 for the bar of measured values: hence bf16 in gradient passes only.
    assert abs(float(diff.mean())) < 5e-4
    assert float(diff.abs().max()) < 1e-3
    exact.mean().backward()
    low.mean().backward()
    g_exact = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    g_low = torch.cat([p.grad.flatten() for p in fast.parameters() if p.grad is not None])
    assert torch.isfinite(g_low).all()
    assert float(torch.nn.functional.cosine_similarity(g_exact, g_low, dim=0)) > 0.999


@pytest.mark.parametrize("affine", [False, True])
def test_measured_bpd_matches_fp32_under_the_bf16_policy(affine: bool) -> None:
    """Every number a run measures (statistics, stop checks, confirmation, evaluation) has no gradient: fp32."""
    model, x = _tiny(affine)
    fast = Precision("bf16").prepare(copy.deepcopy(model))
    images_q = torch.floor((x + 0.5) * 32) / 32 - 0.5
    assert torch.equal(mean_bpd(model, images_q, 5, draws=2), mean_bpd(fast, images_q, 5, draws=2))
    with torch.no_grad():
        assert torch.equal(model.bpd(x), fast.bpd(x))


def test_exact_parts_stay_fp32_inside_an_outer_autocast() -> None:
    torch.manual_seed(0)
    conv = InvConv2dLU(8)
    with torch.no_grad():
        conv.w_l.add_(0.3 * torch.randn(8, 8))
    x = torch.randn(4, 8, 4, 4)
    y, logdet = conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto, logdet_auto = conv(x)
    assert y_auto.dtype == logdet_auto.dtype == torch.float32
    assert torch.equal(y, y_auto) and torch.equal(logdet, logdet_auto)
    # a block without steps of flow is its squeeze and its prior: the prior and log p stay fp32 as well
    block = Block(1, 0, True, 16, False, True)
    with torch.no_grad():
        for p in block.prior.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(2, 1, 8, 8)
    _, _, log_p, _ = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, log_p_auto, _ = block(x)
    assert log_p_auto.dtype == torch.float32 and torch.equal(log_p, log_p_auto)


def test_the_whole_model_inside_an_outer_autocast_keeps_fp32_log_probabilities() -> None:
    model, x = _tiny(affine=True)
    with torch.no_grad():
        exact = model.bpd(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            log_p, logdet, _ = model(x)
            low = model.bpd(x)
    assert log_p.dtype == logdet.dtype == low.dtype == torch.float32
    assert float((exact - low).abs().max()) < 1e-3


def test_channels_last_gives_the_same_bpd() -> None:
    model, x = _tiny(affine=False)
    nhwc = Precision("fp32", channels_last=True).prepare(copy.deepcopy(model))
    assert nhwc.blocks[0].flows[0].coupling.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(nhwc.bpd(x), model.bpd(x), rtol=0, atol=1e-5)
        z = nhwc(x)[2]
        torch.testing.assert_close(nhwc.reverse(z, reconstruct=True), x, rtol=0, atol=1e-4)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        Precision("fp16")


class _Ops(TorchDispatchMode):
    """Records the name of every op dispatched inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_glow_pass_reads_nothing_back_from_the_device() -> None:
    model, x = _tiny(affine=True)
    with _Ops() as ops:
        model.bpd(x).mean().backward()
    # `.item()`, `float()`, `bool()` of a tensor: on a GPU each one waits for every queued kernel
    assert not [n for n in ops.names if "_local_scalar_dense" in n]


def test_actnorm_flag_follows_the_buffer_through_state_dicts() -> None:
    model, x = _tiny(affine=False)
    actnorms = [m for m in model.modules() if isinstance(m, ActNorm)]
    assert all(a.ready for a in actnorms)
    fresh = Glow(model.config)
    assert not any(m.ready for m in fresh.modules() if isinstance(m, ActNorm))
    fresh.load_state_dict(model.state_dict())  # a loaded model must not re-run the data-dependent init
    assert all(m.ready for m in fresh.modules() if isinstance(m, ActNorm))
    before = fresh.blocks[0].flows[0].actnorm.loc.clone()
    with torch.no_grad():
        fresh(x + 0.3)
    assert torch.equal(fresh.blocks[0].flows[0].actnorm.loc, before)
    fresh.load_state_dict(Glow(model.config).state_dict())  # a state whose `initialized` is 0: init on first use
    assert not any(m.ready for m in fresh.modules() if isinstance(m, ActNorm))
    with torch.no_grad():
        fresh(x)
    assert all(int(m.initialized) == 1 and m.ready for m in fresh.modules() if isinstance(m, ActNorm))
