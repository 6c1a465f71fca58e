"""What a report measures beyond the paper's evaluation: the certificate, and how often the model draws the person.

- `certificate`: the confirmed verdict's own numbers (the estimator, draws and remember images behind μ_R and σ_R,
  the threshold, each forget image's d and quantile after taming). It is what `stopping.criterion_met` certifies.
- `SampleProbe` and `generation`: N samples of the base and the tamed model from the same seeded latents, embedded
  once per run (the base model's once per version, through the cache folder), and the person's rate among them
  (taming.generation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from taming.data import FaceSet
from taming.features import Embedder
from taming.generation import GenerationEvidence, calibrate, evidence, gallery_for, sample_embeddings
from taming.glow import Glow
from taming.tame import TameConfig, TameResult

GENERATION_SAMPLES = 1000
GENERATION_TEMPERATURE = 0.7
GENERATION_SEED = 2024


def certificate(result: TameResult, config: TameConfig, rows: slice) -> dict[str, Any]:
    """The confirmation's figures for the forget images at `rows` of the run's D_F (`metrics.certificate`)."""
    d = result.d[rows].double()
    quantile = 0.5 * torch.special.erfc((d + config.delta) / math.sqrt(2.0))  # q = 1 - Φ((bpd - μ_R) / σ_R)
    return {
        "estimator": config.estimator,
        "draws": config.confirm_draws,
        "remember_images": config.certify_images,
        "mu_r": result.mu_r,
        "sigma_r": result.sigma_r,
        "threshold": result.mu_r + config.delta * result.sigma_r,
        "epsilon": config.eps,
        "quantile_after": quantile.tolist(),
        "mean_quantile_after": float(quantile.mean()) if len(quantile) else None,
        "max_quantile_after": float(quantile.max()) if len(quantile) else None,
    }


@dataclass
class SampleProbe:
    """Sample embeddings [N, D] of both models from the same latents, shared by every request of a run."""

    base: Tensor
    tamed: Tensor
    samples: int
    temperature: float
    seed: int


def probe_samples(base: Glow, tamed: Glow, embedder: Embedder, base_key: str, cache_dir: Path | None,
                  samples: int = GENERATION_SAMPLES, temperature: float = GENERATION_TEMPERATURE,
                  seed: int = GENERATION_SEED) -> SampleProbe:
    """Embed both models' samples; the base model's come from the cache when this version was probed before."""
    path = cache_dir / f"samples-{base_key}-{samples}-{temperature}-{seed}.pt" if cache_dir else None
    if path is not None and path.exists():
        base_emb = torch.load(path, weights_only=True)
    else:
        base_emb = sample_embeddings(base, embedder, samples, temperature, seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(base_emb, path)
    return SampleProbe(base_emb, sample_embeddings(tamed, embedder, samples, temperature, seed), samples,
                       temperature, seed)


def generation(probe: SampleProbe, embedder: Embedder, person: FaceSet, holdout: FaceSet | None, others: FaceSet,
               negatives: FaceSet) -> GenerationEvidence:
    """How often each model's samples show the person (`metrics.generation`).

    person: the forgotten photos (the person's centroid); holdout: their held-out photos (the positives of the
    calibration when given); others: the remembered people (every other centroid); negatives: other people's
    photos for the rule's false-positive rate.
    """
    gallery = gallery_for(embedder, person.images, others.images, others.identity)
    has_holdout = holdout is not None and len(holdout) > 0
    positives = holdout.images if holdout is not None and has_holdout else person.images
    rule = calibrate(embedder.embed(positives), embedder.embed(negatives.images), gallery.centroids, gallery.person,
                     "held-out photos of the person" if has_holdout else "the forgotten photos (no held-out photos)")
    return evidence(probe.base, probe.tamed, gallery, rule, temperature=probe.temperature, seed=probe.seed,
                    feature_space=embedder.name)


def strip_latents(model: Glow, probe: SampleProbe, indices: list[int]) -> list[Tensor]:
    """The latents of the probe's samples at `indices` (to redraw a few of them for the report's strip)."""
    latents = model.latents(probe.samples, probe.temperature, probe.seed)
    idx = torch.tensor(indices, dtype=torch.long)
    return [t[idx] for t in latents]


def negatives_for(remember_holdout: FaceSet | None, unseen: FaceSet | None, remember: FaceSet,
                  limit: int = 2000, seed: int = 0) -> FaceSet:
    """Other people's photos the rule's false-positive rate is measured on: held-out photos first (the embedder
    never trained on them), else unseen people, else remembered photos; at most `limit`, seeded."""
    for faces in (remember_holdout, unseen, remember):
        if faces is not None and len(faces):
            if len(faces) <= limit:
                return faces
            rng = np.random.default_rng(seed)
            return faces.subset(np.sort(rng.choice(len(faces), size=limit, replace=False)))
    return remember
