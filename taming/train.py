"""Base-model training by maximum likelihood (the model that taming later edits).

Adam on bits per dimension of dequantized n-bit images, data-dependent ActNorm initialisation on the
first batch, horizontal flips as augmentation, and a resumable state (model, optimizer, step, RNG).
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
    seed: int = 0


@dataclass
class TrainStep:
    step: int
    bpd: float
    lr: float


def train_state(model: Glow, optimizer: torch.optim.Optimizer, step: int, gen: torch.Generator) -> dict[str, Any]:
    """Everything needed to resume: loadable with torch.load(weights_only=True)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "rng": gen.get_state()}


def train(
    model: Glow,
    images_q: Tensor,
    config: TrainConfig,
    on_step: Callable[[TrainStep, Callable[[], dict[str, Any]]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> Glow:
    """Fit `model` to quantized images [N, C, H, W]; `on_step(step, state_fn)` after every step."""
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
        lr = config.lr * min(1.0, step / max(1, config.warmup))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = images_q[torch.randint(len(images_q), (config.batch_size,), generator=gen)]
        if config.flip:
            flip = torch.rand(len(batch), generator=gen) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        loss = model.bpd(dequantize(batch, n_bits, gen).to(device)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training diverged at step {step} (bpd {loss.item()})")
        if on_step is not None:
            on_step(TrainStep(step, loss.item(), lr), partial(train_state, model, optimizer, step, gen))
    return model.eval()
