"""Bits per dimension of quantized images over dequantization draws: the one place the library measures them.

Two estimates of an image's bpd come from K uniform dequantization draws (DESIGN.md section 4):
- the mean of the K draws' bpd (the paper's and DESIGN.md's), an upper bound (Jensen) on the bits of the
  probability the model puts on the image's quantization bin, and
- the importance-weighted estimate -log2 mean_k 2^(-M·bpd_k) / M (Burda et al., 2016), which tightens towards that
  probability as K grows. It is what a sample from the model sees: how often a sample rounds to the image.
A model can raise the mean without moving probability (its density turning uneven inside the bin); it cannot
raise the importance-weighted estimate that way once K is large enough.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor, nn

from taming.data import dequantize
from taming.device import model_device, to_device
from taming.glow import INFERENCE_BATCH


def image_keys(images: Tensor) -> Tensor:
    """A 60-bit key of each image's content [N, ...] -> [N] int64: the seed of its own dequantization noise."""
    flat = images.detach().cpu().contiguous()
    return torch.tensor([int(hashlib.sha256(img.numpy().tobytes()).hexdigest()[:15], 16) for img in flat],
                        dtype=torch.int64)


def _keyed_noise(keys: Tensor, shape: tuple[int, ...], seed: int, draw: int) -> Tensor:
    """Uniform noise [len(keys), *shape] in [0, 1), each image's from its own key: the same image gets the same
    noise whatever set, subset or batch it is measured in."""
    rows = [torch.rand(shape, generator=torch.Generator().manual_seed((int(k) + seed * 7_919 + draw * 104_729) % 2**63))
            for k in keys.tolist()]
    return torch.stack(rows)


def bpd_draws(
    model: nn.Module, images_q: Tensor, n_bits: int, draws: int = 5, seed: int = 0, *,
    gen: torch.Generator | None = None, keys: Tensor | None = None, batch_size: int = INFERENCE_BATCH,
) -> Tensor:
    """bpd of quantized images [N, C, H, W] under `draws` dequantization draws -> [draws, N] (float64, CPU).

    The noise, so that two models measured alike see exactly the same dequantized images (paired comparisons):
    with `keys` ([N], e.g. `image_keys`), each image's own (its value never depends on the other images); with
    `gen`, taken from it (a run's own stream, so that resuming a run reproduces it); otherwise from a CPU
    generator seeded by (seed, draw), walked batch by batch.
    """
    if images_q.shape[0] == 0:
        return torch.zeros(draws, 0, dtype=torch.float64)
    device = model_device(model)
    rows = []
    with torch.inference_mode():
        for draw in range(draws):
            noise = gen if gen is not None else torch.Generator().manual_seed(seed * 1_000_003 + draw)
            for start in range(0, images_q.shape[0], batch_size):
                chunk = images_q[start : start + batch_size]
                if keys is None:
                    x = dequantize(chunk, n_bits, noise)
                else:
                    noise_u = _keyed_noise(keys[start : start + batch_size], tuple(chunk.shape[1:]), seed, draw)
                    x = chunk + noise_u / 2**n_bits
                rows.append(model.bpd(to_device(x, device)))  # type: ignore[operator]
    return torch.cat(rows).double().cpu().view(draws, images_q.shape[0])  # one read from the device, not one a batch


def mean_bpd(
    model: nn.Module, images_q: Tensor, n_bits: int, draws: int = 5, seed: int = 0, *,
    gen: torch.Generator | None = None, keys: Tensor | None = None, batch_size: int = INFERENCE_BATCH,
) -> Tensor:
    """bpd averaged over `draws` dequantization draws (`bpd_draws`) -> [N] (float64, CPU)."""
    return bpd_draws(model, images_q, n_bits, draws, seed, gen=gen, keys=keys, batch_size=batch_size).mean(0)


def importance_weighted_bpd(bpd: Tensor, dims: int) -> Tensor:
    """-log2 of the discrete probability of each image, estimated from K draws, per dimension.

    bpd: [K, N] under K uniform draws; dims = C*H*W -> [N] (float64; differentiable, so a loss can use it).
    2^(-dims*bpd) is the density at the draw times the volume of the image's quantization bin, so its mean
    over the draws estimates the probability the model puts on the bin. Never above the mean of bpd; equal to
    it for K = 1.
    """
    log_p = -bpd.double() * dims * math.log(2)
    return -(torch.logsumexp(log_p, 0) - math.log(bpd.shape[0])) / (dims * math.log(2))


def discrete_bpd(
    model: nn.Module, images_q: Tensor, n_bits: int, draws: int, seed: int = 0, *,
    gen: torch.Generator | None = None, batch_size: int = INFERENCE_BATCH,
) -> Tensor:
    """The importance-weighted bpd of quantized images [N, C, H, W] over `draws` draws -> [N] (float64, CPU)."""
    dims = images_q[0].numel() if images_q.shape[0] else 1
    return importance_weighted_bpd(bpd_draws(model, images_q, n_bits, draws, seed, gen=gen,
                                             batch_size=batch_size), dims)


def estimate(
    model: nn.Module, images_q: Tensor, n_bits: int, draws: int, estimator: str, seed: int = 0, *,
    gen: torch.Generator | None = None,
) -> Tensor:
    """bpd of images [N, ...] by the named estimator: "mean" (the paper's) or "discrete" -> [N] (float64)."""
    if estimator == "mean":
        return mean_bpd(model, images_q, n_bits, draws, seed, gen=gen)
    if estimator == "discrete":
        return discrete_bpd(model, images_q, n_bits, draws, seed, gen=gen)
    raise ValueError(f"estimator must be 'mean' or 'discrete', not {estimator!r}")
