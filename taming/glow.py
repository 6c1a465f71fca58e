"""Glow (Kingma & Dhariwal, 2018) with rosinality's module tree and parameter names.

The names match https://github.com/rosinality/glow-pytorch so that the base models of "Taming
Normalizing Flows" (Malnick et al., WACV 2024) load with strict key checking (DESIGN.md section 5).
Unlike rosinality's code, every log-determinant here is per sample, shape (B,), and log-probabilities
are always accumulated in fp32.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)
# Images per forward pass when only likelihoods are needed. Measured on a 2-core CPU with the shipped 32x32
# model: 2.9 ms per image at 32-56, 5.8 ms at 224-256 (the activations of a big batch fall out of cache).
INFERENCE_BATCH = 32


@dataclass(frozen=True)
class GlowConfig:
    """Architecture and quantization of a Glow; stored in every checkpoint's metadata."""

    in_channel: int = 1
    img_size: int = 32
    n_flow: int = 8
    n_block: int = 3
    hidden: int = 128
    affine: bool = False
    conv_lu: bool = True
    n_bits: int = 5

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)

    @property
    def n_dims(self) -> int:
        """M = C*H*W, the number of dimensions one image has."""
        return self.in_channel * self.img_size * self.img_size


def _exact(x: Tensor) -> AbstractContextManager[object]:
    """fp32 for what follows even inside an autocast region: the 1x1 convolutions' weights and the priors, whose
    rounding would change the density while its log-determinant and log-probability assume the exact values."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()


class ActNorm(nn.Module):
    """Per-channel affine map, initialised from the first batch it sees (unless loaded).

    `initialized` is the checkpoint's 0-dim uint8 buffer (rosinality's format, DESIGN.md section 5); `ready`
    mirrors it on the host, set when the buffer is loaded or the map initialised, so that a forward pass never
    reads the device (on a GPU each read would wait for all queued work, 24 times per pass of the shipped model).
    """

    initialized: Tensor

    def __init__(self, in_channel: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, in_channel, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, in_channel, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self.ready = False
        self.register_load_state_dict_post_hook(ActNorm._after_load)

    @staticmethod
    def _after_load(module: nn.Module, incompatible: object) -> None:
        assert isinstance(module, ActNorm)
        module.ready = bool(module.initialized.item())  # once per load

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.loc.copy_(-flat.mean(1).view(1, -1, 1, 1))
        self.scale.copy_(1 / (flat.std(1).view(1, -1, 1, 1) + 1e-6))
        self.initialized.fill_(1)
        self.ready = True

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, C, H, W] -> (y [B, C, H, W], logdet [B])
        if not self.ready:
            self.initialize(x)
        logdet = x.shape[2] * x.shape[3] * torch.log(torch.abs(self.scale)).sum()
        return self.scale * (x + self.loc), logdet.expand(x.shape[0])

    def reverse(self, y: Tensor) -> Tensor:
        return y / self.scale - self.loc


class InvConv2d(nn.Module):
    """Invertible 1x1 convolution with a full weight (rosinality's `no_lu`)."""

    def __init__(self, in_channel: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(in_channel, in_channel))
        self.weight = nn.Parameter(q.unsqueeze(2).unsqueeze(3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with _exact(x):
            logdet = x.shape[2] * x.shape[3] * torch.linalg.slogdet(self.weight.squeeze().double())[1]
            logdet = logdet.to(_accumulation_dtype(x))
            return F.conv2d(x, self.weight), logdet.expand(x.shape[0])

    def reverse(self, y: Tensor) -> Tensor:
        inverse = torch.linalg.inv(self.weight.squeeze().double()).to(y.dtype)
        return F.conv2d(y, inverse.unsqueeze(2).unsqueeze(3))


class InvConv2dLU(nn.Module):
    """Invertible 1x1 convolution parameterised by W = P L (U + diag(sign(s) exp(w_s)))."""

    w_p: Tensor
    u_mask: Tensor
    l_mask: Tensor
    s_sign: Tensor
    l_eye: Tensor

    def __init__(self, in_channel: int):
        super().__init__()
        q = torch.linalg.qr(torch.randn(in_channel, in_channel))[0].numpy()  # torch's RNG: seeded models
        w_p, w_l, w_u = scipy.linalg.lu(q.astype(np.float32))
        w_s = np.diag(w_u)
        u_mask = np.triu(np.ones_like(w_u), 1)
        self.register_buffer("w_p", torch.from_numpy(w_p.copy()).float())
        self.register_buffer("u_mask", torch.from_numpy(u_mask.copy()).float())
        self.register_buffer("l_mask", torch.from_numpy(u_mask.T.copy()).float())
        self.register_buffer("s_sign", torch.sign(torch.from_numpy(w_s.copy())).float())
        self.register_buffer("l_eye", torch.eye(in_channel))
        self.w_l = nn.Parameter(torch.from_numpy(w_l.copy()).float())
        self.w_s = nn.Parameter(torch.log(torch.abs(torch.from_numpy(w_s.copy()))).float())
        self.w_u = nn.Parameter(torch.from_numpy(np.triu(w_u, 1).copy()).float())

    def calc_weight(self) -> Tensor:
        lower = self.w_l * self.l_mask + self.l_eye
        upper = self.w_u * self.u_mask + torch.diag(self.s_sign * torch.exp(self.w_s))
        return (self.w_p @ lower @ upper).unsqueeze(2).unsqueeze(3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.shape[2] * x.shape[3] * self.w_s.sum()
        with _exact(x):  # the weight built and applied in fp32: its log-determinant is exactly w_s.sum()
            return F.conv2d(x, self.calc_weight()), logdet.expand(x.shape[0])

    def reverse(self, y: Tensor) -> Tensor:
        inverse = torch.linalg.inv(self.calc_weight().squeeze().double()).to(y.dtype)
        return F.conv2d(y, inverse.unsqueeze(2).unsqueeze(3))


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised at zero, padded with ones, output scaled by exp(3 * scale)."""

    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channel, out_channel, 3, padding=0)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)  # type: ignore[arg-type]
        self.scale = nn.Parameter(torch.zeros(1, out_channel, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.pad(x, [1, 1, 1, 1], value=1))
        return out * torch.exp(self.scale * 3)


class AffineCoupling(nn.Module):
    """Coupling layer: additive (out_b = in_b + t) or affine (out_b = (in_b + t) * sigmoid(log_s + 2)).

    In passes that compute gradients the network may run in `compute_dtype` (taming.precision sets it; None: the
    input's dtype). Its output, cast back to at least fp32, is a function of the untouched half, so the layer stays
    exactly invertible and its log-determinant (the log of the very s it multiplies by) exact whatever the network
    computes in. Passes without gradient (every measurement: statistics, stop checks, evaluation) stay in fp32.
    """

    compute_dtype: torch.dtype | None = None

    def __init__(self, in_channel: int, hidden: int = 512, affine: bool = False):
        super().__init__()
        self.affine = affine
        self.net = nn.Sequential(
            nn.Conv2d(in_channel // 2, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            ZeroConv2d(hidden, in_channel if affine else in_channel // 2),
        )
        for conv in (self.net[0], self.net[2]):
            assert isinstance(conv, nn.Conv2d)
            nn.init.normal_(conv.weight, 0, 0.05)
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]

    def _net(self, x_a: Tensor) -> Tensor:
        acc = _accumulation_dtype(x_a)  # never below fp32, whatever the network computed in
        if self.compute_dtype is None or not torch.is_grad_enabled():
            return self.net(x_a).to(acc)
        with torch.autocast(x_a.device.type, dtype=self.compute_dtype):
            return self.net(x_a).to(acc)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        in_a, in_b = x.chunk(2, 1)
        if not self.affine:
            return torch.cat([in_a, in_b + self._net(in_a)], 1), x.new_zeros(x.shape[0])
        log_s, t = self._net(in_a).chunk(2, 1)
        s = torch.sigmoid(log_s + 2)
        logdet = torch.log(s).flatten(1).sum(1)
        return torch.cat([in_a, (in_b + t) * s], 1), logdet

    def reverse(self, y: Tensor) -> Tensor:
        out_a, out_b = y.chunk(2, 1)
        if not self.affine:
            return torch.cat([out_a, out_b - self._net(out_a)], 1)
        log_s, t = self._net(out_a).chunk(2, 1)
        return torch.cat([out_a, out_b / torch.sigmoid(log_s + 2) - t], 1)


class Flow(nn.Module):
    """One step of flow: ActNorm, invertible 1x1 convolution, coupling."""

    def __init__(self, in_channel: int, hidden: int, affine: bool, conv_lu: bool):
        super().__init__()
        self.actnorm = ActNorm(in_channel)
        self.invconv: InvConv2dLU | InvConv2d = InvConv2dLU(in_channel) if conv_lu else InvConv2d(in_channel)
        self.coupling = AffineCoupling(in_channel, hidden=hidden, affine=affine)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, det0 = self.actnorm(x)
        out, det1 = self.invconv(out)
        out, det2 = self.coupling(out)
        return out, det0 + det1 + det2

    def reverse(self, y: Tensor) -> Tensor:
        return self.actnorm.reverse(self.invconv.reverse(self.coupling.reverse(y)))


def _accumulation_dtype(x: Tensor) -> torch.dtype:
    # a 128x128x3 image's NLL is ~34,000 nats: bf16 would round it by hundreds, so never below fp32
    return torch.promote_types(x.dtype, torch.float32)


def gaussian_log_p(x: Tensor, mean: Tensor, log_sd: Tensor) -> Tensor:
    """Elementwise log N(x; mean, exp(log_sd)^2)."""
    return -0.5 * LOG_2PI - log_sd - 0.5 * (x - mean) ** 2 / torch.exp(2 * log_sd)


def squeeze2x2(x: Tensor) -> Tensor:
    # [B, C, H, W] -> [B, 4C, H/2, W/2], rosinality's channel order (reshape, not view: channels-last inputs)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2x2(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


class Block(nn.Module):
    """Squeeze, n_flow steps of flow, then split half the channels off under a learned prior."""

    def __init__(self, in_channel: int, n_flow: int, split: bool, hidden: int, affine: bool, conv_lu: bool):
        super().__init__()
        squeeze_dim = in_channel * 4
        self.flows = nn.ModuleList(Flow(squeeze_dim, hidden, affine, conv_lu) for _ in range(n_flow))
        self.split = split
        self.prior = ZeroConv2d(in_channel * 2, in_channel * 4) if split else ZeroConv2d(in_channel * 4, in_channel * 8)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # returns (out, logdet [B], log_p [B], z)
        out = squeeze2x2(x)
        logdet = x.new_zeros(x.shape[0])
        for flow in self.flows:
            out, det = flow(out)
            logdet = logdet + det
        with _exact(out):
            if self.split:
                out, z = out.chunk(2, 1)
                mean, log_sd = self.prior(out).chunk(2, 1)
            else:
                z = out
                mean, log_sd = self.prior(torch.zeros_like(out)).chunk(2, 1)
        acc = _accumulation_dtype(z)
        log_p = gaussian_log_p(z.to(acc), mean.to(acc), log_sd.to(acc)).flatten(1).sum(1)
        return out, logdet, log_p, z

    def reverse(self, out: Tensor | None, z: Tensor, reconstruct: bool) -> Tensor:  # out is None for the last block
        """Invert the block; with reconstruct=False, z is unit noise scaled into the prior."""
        if not reconstruct:
            prior_in = out if out is not None else torch.zeros_like(z)
            mean, log_sd = self.prior(prior_in).chunk(2, 1)
            z = mean + torch.exp(log_sd) * z
        x = torch.cat([out, z], 1) if out is not None else z
        for flow in reversed(self.flows):
            x = flow.reverse(x)  # type: ignore[operator]
        return unsqueeze2x2(x)


class Glow(nn.Module):
    """Multi-scale Glow. `forward(x)` gives (log_p [B], logdet [B], z list)."""

    def __init__(self, config: GlowConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList()
        n_channel = config.in_channel
        for _ in range(config.n_block - 1):
            self.blocks.append(Block(n_channel, config.n_flow, True, config.hidden, config.affine, config.conv_lu))
            n_channel *= 2
        # rosinality's last block always uses LU, whatever no_lu says
        self.blocks.append(Block(n_channel, config.n_flow, False, config.hidden, config.affine, True))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        acc = _accumulation_dtype(x)
        log_p_sum = x.new_zeros(x.shape[0], dtype=acc)
        logdet = x.new_zeros(x.shape[0], dtype=acc)
        zs = []
        out = x
        for block in self.blocks:
            out, det, log_p, z = block(out)
            zs.append(z)
            logdet = logdet + det.to(acc)
            log_p_sum = log_p_sum + log_p
        return log_p_sum, logdet, zs

    def reverse(self, zs: list[Tensor], reconstruct: bool = False) -> Tensor:
        """Map latents back to images. reconstruct=True inverts `forward` exactly."""
        x: Tensor | None = None
        for i, block in enumerate(reversed(self.blocks)):
            x = block.reverse(x, zs[-(i + 1)], reconstruct)  # type: ignore[operator]
        assert x is not None
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density in nats of dequantized images x [B, C, H, W] -> [B]."""
        log_p, logdet, _ = self(x)
        return log_p + logdet

    def bpd(self, x: Tensor) -> Tensor:
        """Bits per dimension of dequantized images x [B, C, H, W] -> [B] (DESIGN.md section 4)."""
        return bpd_from_log_prob(self.log_prob(x), self.config)

    def z_shapes(self) -> list[tuple[int, int, int]]:
        c, size = self.config.in_channel, self.config.img_size
        shapes = []
        for _ in range(self.config.n_block - 1):
            c, size = c * 2, size // 2
            shapes.append((c, size, size))
        shapes.append((c * 4, size // 2, size // 2))
        return shapes

    def latents(self, n: int, temperature: float = 0.7, seed: int = 0) -> list[Tensor]:
        """Unit-normal latents scaled by temperature, reproducible by seed (on the CPU)."""
        gen = torch.Generator().manual_seed(seed)
        return [temperature * torch.randn(n, *shape, generator=gen) for shape in self.z_shapes()]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 0.7, z: list[Tensor] | None = None, seed: int = 0) -> Tensor:
        """Draw n images [n, C, H, W] in [-0.5, 0.5]; pass z to reuse fixed latents."""
        device = next(self.parameters()).device
        zs = z if z is not None else self.latents(n, temperature, seed)
        return self.reverse([t.to(device) for t in zs]).clamp(-0.5, 0.5)


def bpd_from_log_prob(log_prob: Tensor, config: GlowConfig) -> Tensor:
    """bpd = (-log p(x) + M ln 2^n_bits) / (M ln 2), the discrete likelihood of n_bits images."""
    m = config.n_dims
    return (-log_prob + m * config.n_bits * math.log(2)) / (m * math.log(2))
