"""Base-model training by maximum likelihood (the model that taming later edits).

Adam on bits per dimension of dequantized n-bit images, data-dependent ActNorm initialisation on the
first batch, a linear warm-up (then a constant or cosine-decayed learning rate), horizontal flips and
optionally small translations as augmentation, and a resumable state (model, optimizer, step, RNG).

Translations stop a small model memorising its faces (on AT&T, bpd on training images, held-out images and
unseen people then agree within 0.1, against 1.89 / 2.33 / 2.54 without), but they are off by default:
such a model carries the forgetting of one person over to look-alikes among people it never saw
(README, "Base models we tried").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from taming.data import dequantize
from taming.glow import Glow


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200  # linear warm-up steps: Glow diverges with a full lr on its first steps
    init_batch: int = 256  # images for ActNorm's data-dependent initialisation
    grad_clip: float = 50.0
    flip: bool = True
    shift: int = 0  # random translation by up to this many pixels, edges replicated; 0 turns it off
    cosine: bool = False  # decay the learning rate to 0 along a cosine after the warm-up
    seed: int = 0


@dataclass
class TrainStep:
    """What `on_step` sees after each training step; `state()` gives the resumable state (as tame's StepInfo)."""

    step: int
    bpd: float
    lr: float
    state: Callable[[], dict[str, Any]]


def train_state(model: Glow, optimizer: torch.optim.Optimizer, step: int, gen: torch.Generator) -> dict[str, Any]:
    """Everything needed to resume: loadable with torch.load(weights_only=True)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "rng": gen.get_state()}


def train(
    model: Glow,
    images_q: Tensor,
    config: TrainConfig,
    on_step: Callable[[TrainStep], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> Glow:
    """Fit `model` to quantized images [N, C, H, W]; `on_step(step)` after every step."""
    device = next(model.parameters()).device
    n_bits = model.config.n_bits
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        gen.set_state(resume["rng"])
        start = int(resume["step"])
    else:
        init = images_q[torch.randperm(len(images_q), generator=gen)[: config.init_batch]]
        with torch.no_grad():
            model(dequantize(init, n_bits, gen).to(device))
    model.train()
    for step in range(start + 1, config.steps + 1):
        lr = _learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = _augment(images_q[torch.randint(len(images_q), (config.batch_size,), generator=gen)], config, gen)
        loss = model.bpd(dequantize(batch, n_bits, gen).to(device)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training diverged at step {step} (bpd {loss.item()})")
        if on_step is not None:
            on_step(TrainStep(step, loss.item(), lr, partial(train_state, model, optimizer, step, gen)))
    return model.eval()


def _learning_rate(config: TrainConfig, step: int) -> float:
    if step <= config.warmup or not config.cosine:
        return config.lr * min(1.0, step / max(1, config.warmup))
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _augment(batch: Tensor, config: TrainConfig, gen: torch.Generator) -> Tensor:
    """Random horizontal flips and translations of quantized images [B, C, H, W]."""
    if config.flip:
        flip = torch.rand(len(batch), generator=gen) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    if config.shift <= 0:
        return batch
    b, c, h, w = batch.shape
    s = config.shift
    padded = torch.nn.functional.pad(batch, (s, s, s, s), mode="replicate")
    dy, dx = torch.randint(0, 2 * s + 1, (2, b), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # [B, 1, 1, W]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
