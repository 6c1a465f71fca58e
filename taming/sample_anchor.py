"""Fixed latents whose samples a run holds in place (TameConfig.sample_anchor): identity on the same latents.

A rebalance changes how often the model draws a group; a user also expects a sample that did not need to change
to keep its face (issue 13: on the same latents, the after-sample's nearest before-sample is its own). The
likelihood losses do not see the latent-to-image map, so this pool adds a term that does: each step decodes a few
of its latents under the tamed model, with gradient, and compares them with the base model's samples of the same
latents. The pool's seed is not the share meter's (taming.share.DEFAULT_SEED), so the samples the report
measures identity on are never the ones trained on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from taming.glow import Glow
from taming.losses import sample_drift

POOL_SEED = 271_828


class SampleAnchor:
    """A pool of latents [pool, *z_shape] with their base samples; `loss` over a random batch of them."""

    def __init__(self, base: Glow, pool: int = 256, temperature: float = 0.7, seed: int = POOL_SEED) -> None:
        self.latents = base.latents(pool, temperature, seed)
        self.base_x = base.sample(pool, z=self.latents).cpu()  # [pool, C, H, W], no gradient
        self.scale = float(self.base_x.var())

    def loss(self, tamed: Glow, gen: torch.Generator, batch: int) -> Tensor:
        """sample_drift of `batch` pool latents (drawn with `gen`) between the tamed and the base model."""
        idx = torch.randint(len(self.base_x), (batch,), generator=gen)
        device = next(tamed.parameters()).device
        x = tamed.reverse([z[idx].to(device) for z in self.latents]).clamp(-0.5, 0.5)
        return sample_drift(x, self.base_x[idx].to(device), self.scale)
