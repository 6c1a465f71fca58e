"""Every invertible layer and the whole Glow: exact inverse and log-determinant against brute force."""

from __future__ import annotations

import pytest
import torch

from taming.glow import ActNorm, AffineCoupling, Flow, Glow, GlowConfig, InvConv2d, InvConv2dLU, bpd_from_log_prob


def _layers():
    return {
        "actnorm": lambda: ActNorm(4),
        "invconv": lambda: InvConv2d(4),
        "invconv_lu": lambda: InvConv2dLU(4),
        "coupling_additive": lambda: AffineCoupling(4, hidden=8, affine=False),
        "coupling_affine": lambda: AffineCoupling(4, hidden=8, affine=True),
        "flow": lambda: Flow(4, hidden=8, affine=True, conv_lu=True),
    }


def _perturb(layer: torch.nn.Module) -> None:
    # zero-initialised convs would make couplings the identity and hide mistakes
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("name", list(_layers()))
def test_layer_round_trip_and_logdet(name: str) -> None:
    torch.manual_seed(0)
    layer = _layers()[name]()
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    layer = layer.double()
    layer(x)  # data-dependent init, where the layer has one
    _perturb(layer)
    y, logdet = layer(x)
    assert logdet.shape == (3,)
    torch.testing.assert_close(layer.reverse(y), x, rtol=1e-9, atol=1e-9)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, 4, 2, 2))[0].flatten(), x[i].flatten())
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("affine,conv_lu", [(False, True), (True, False)])
def test_glow_round_trip_and_logdet(affine: bool, conv_lu: bool) -> None:
    torch.manual_seed(0)
    model = Glow(GlowConfig(in_channel=1, img_size=8, n_flow=2, n_block=2, hidden=8, affine=affine, conv_lu=conv_lu))
    model = model.double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) - 0.5
    model(x)
    _perturb(model)
    _, logdet, zs = model(x)
    torch.testing.assert_close(model.reverse(zs, reconstruct=True), x, rtol=1e-8, atol=1e-8)

    def flat_z(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten() for z in model(v.view(1, 1, 8, 8))[2]])

    for i in range(2):
        jac = torch.autograd.functional.jacobian(flat_z, x[i].flatten())
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=1e-6, atol=1e-6)


def test_sample_is_reproducible_by_seed(tiny_glow: Glow) -> None:
    a = tiny_glow.sample(4, temperature=0.5, seed=3)
    b = tiny_glow.sample(4, temperature=0.5, seed=3)
    c = tiny_glow.sample(4, temperature=0.5, seed=4)
    assert a.shape == (4, 1, 8, 8)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    z = tiny_glow.latents(4, 0.5, seed=3)
    torch.testing.assert_close(tiny_glow.sample(4, z=z), a)


def test_bpd_formula(tiny_config: GlowConfig) -> None:
    # a log-density of 0 nats per image is exactly n_bits bits per dimension
    assert bpd_from_log_prob(torch.zeros(1), tiny_config).item() == pytest.approx(tiny_config.n_bits)


def test_rosinality_parameter_names_and_shapes() -> None:
    model = Glow(GlowConfig(in_channel=3, img_size=16, n_flow=2, n_block=3, hidden=16, conv_lu=False))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["blocks.0.flows.0.actnorm.loc"] == (1, 12, 1, 1)
    assert shapes["blocks.0.flows.0.actnorm.initialized"] == ()
    assert model.state_dict()["blocks.0.flows.0.actnorm.initialized"].dtype == torch.uint8
    assert shapes["blocks.0.flows.0.invconv.weight"] == (12, 12, 1, 1)
    assert shapes["blocks.2.flows.0.invconv.w_l"] == (48, 48)  # the last block always uses LU
    assert shapes["blocks.2.flows.0.invconv.w_s"] == (48,)
    for buffer in ("w_p", "u_mask", "l_mask", "s_sign", "l_eye"):
        assert f"blocks.2.flows.1.invconv.{buffer}" in shapes
    assert shapes["blocks.0.flows.0.coupling.net.0.weight"] == (16, 6, 3, 3)
    assert shapes["blocks.0.flows.0.coupling.net.2.weight"] == (16, 16, 1, 1)
    assert shapes["blocks.0.flows.0.coupling.net.4.conv.weight"] == (6, 16, 3, 3)
    assert shapes["blocks.0.flows.0.coupling.net.4.scale"] == (1, 6, 1, 1)
    assert shapes["blocks.0.prior.conv.weight"] == (12, 6, 3, 3)  # [4c, 2c, 3, 3] with c = 3
    assert shapes["blocks.2.prior.conv.weight"] == (96, 48, 3, 3)  # [8c, 4c, 3, 3] with c = 12
