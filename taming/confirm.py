"""How a taming run measures a stop candidate on fresh statistics (DESIGN.md section 4, the confirmation).

A candidate comes from cheap per-step estimates; the verdict and the certificate come from here: μ_R, σ_R of
`certify_images` remember images and every forget image's bpd, both over `confirm_draws` draws by the certifying
estimator. On LFW most of a run's candidates were refused (3 of 4 for 61 photos: 108 s of the run), and the
remember side is nine tenths of each measurement (512 × 16 passes against 61 × 16). So after a first
confirmation a candidate is screened: the forget images first, against the last confirmation's μ_R, σ_R
carried forward by how far the loop's own estimates have moved since. A candidate they refuse is refused there;
one they pass is measured in full, so no verdict rests on old statistics. Every SCREEN_FOR iterations the
measurement is a full one whatever the screen says, so a screen gone stale cannot hold a run back for long.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from taming.config import TameConfig
from taming.glow import Glow
from taming.loop_state import Loop
from taming.threshold import bpd_of, confirmed, distances, remember_stats

SCREEN_FOR = 100  # iterations after a full measurement during which candidates are screened


@dataclass
class Final:
    """One measurement of a stop: d [K] and bpd [K] of every forget image, and the μ_R, σ_R behind d."""

    d: Tensor
    bpd: Tensor
    mu: float
    sigma: float


def measure_stop(tamed: Glow, forget_q: Tensor, remember_q: Tensor, gen: torch.Generator, config: TameConfig,
                 loop: Loop, screen: bool) -> tuple[Final, bool]:
    """(the measurement, whether it was refused by the screen alone); `loop.certified` keeps the fresh μ_R, σ_R.

    Without a screen the remember side is measured first, as it always was, so a run whose first candidate is
    confirmed draws the same random numbers as before the screen existed."""
    c = config
    carried = _carried(loop) if screen else None
    if carried is None:
        mu, sigma = _remember(tamed, remember_q, gen, c, loop)
        bpd = bpd_of(tamed, forget_q, gen, c.confirm_draws, c.estimator)
        return Final(distances(bpd, mu, sigma, c), bpd, mu, sigma), False
    bpd = bpd_of(tamed, forget_q, gen, c.confirm_draws, c.estimator)
    d = distances(bpd, *carried, c)
    if not confirmed(d, c):
        return Final(d, bpd, *carried), True
    mu, sigma = _remember(tamed, remember_q, gen, c, loop)
    return Final(distances(bpd, mu, sigma, c), bpd, mu, sigma), False


def _carried(loop: Loop) -> tuple[float, float] | None:
    """The last confirmation's μ_R, σ_R moved as the loop's estimates have moved since; None when there is none
    or it is SCREEN_FOR iterations old."""
    if loop.certified is None:
        return None
    mu, sigma, loop_mu, loop_sigma, at = loop.certified
    if loop.iteration - at >= SCREEN_FOR:
        return None
    return mu + (loop.mu - loop_mu), sigma * loop.sigma / loop_sigma


def _remember(tamed: Glow, remember_q: Tensor, gen: torch.Generator, c: TameConfig, loop: Loop) -> tuple[float, float]:
    draws = c.confirm_draws if c.estimator == "discrete" else 1
    mu, sigma = remember_stats(tamed, remember_q, gen, c.certify_images, draws, c.estimator)
    loop.certified = (mu, sigma, loop.mu, loop.sigma, loop.iteration)
    return mu, sigma
