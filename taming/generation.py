"""Generation evidence: how often a model's samples show a person, before and after taming.

Likelihood quantiles say how unusual the person's photos are to the model; a GDPR officer asks whether the model
still *produces* the person. This module draws N samples from fixed seeded latents at a temperature, from the base
and the tamed model, and counts the samples the project's face embedding (taming.features.Embedder) assigns to
the person: the nearest identity centroid (cosine) among the person and every remembered identity is the person's,
and the similarity to it is at least a threshold. The threshold is calibrated on photos: it best separates the
person's held-out photos (or, without them, the forgotten photos) from other people's photos, and the rule's true-
and false-positive rates on those photos are reported with it. A rate is "measurable" when its 95% interval lies
above that false-positive rate: below it, a generator of other faces would score as much.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from taming.data import to_uint8
from taming.features import Embedder
from taming.glow import Glow

Z95 = 1.959963984540054


@dataclass
class Rate:
    """count of n samples with a Wilson 95% interval."""

    count: int
    n: int
    rate: float
    low: float
    high: float

    @classmethod
    def of(cls, count: int, n: int) -> Rate:
        low, high = wilson(count, n)
        return cls(int(count), int(n), count / n if n else math.nan, low, high)


@dataclass
class Rule:
    """The calibrated assignment rule: nearest centroid is the person's and similarity ≥ threshold."""

    threshold: float
    calibrated_on: str  # which photos gave the positives
    positives: int
    negatives: int
    true_positive_rate: float
    false_positive_rate: float


@dataclass
class GenerationEvidence:
    """`metrics.generation` of the report."""

    samples: int
    temperature: float
    seed: int
    feature_space: str
    rule: Rule
    before: Rate
    after: Rate
    measurable: bool  # the base rate's interval lies above the rule's false-positive rate
    removed: float | None  # share of the base rate removed (when measurable)
    others_max_change: float  # largest |rate after − rate before| of any other remembered identity
    others_max_change_identity: int | None
    verdict: str
    nearest_before: list[int] = field(default_factory=list)  # sample indices most like the person, base model
    nearest_after: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson(count: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion count/n."""
    if n == 0:
        return 0.0, 1.0
    p = count / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def centroids(embeddings: Tensor, identity: np.ndarray) -> tuple[Tensor, np.ndarray]:
    """Unit mean embedding of each identity (>= 0) -> ([I, D], identity labels [I])."""
    labels = np.unique(identity[identity >= 0])
    index = torch.from_numpy(np.searchsorted(labels, identity[identity >= 0]))
    known = embeddings[torch.from_numpy(identity >= 0)]
    sums = torch.zeros(len(labels), embeddings.shape[1]).index_add_(0, index, known)
    return F.normalize(sums, dim=1), labels


def assign(embeddings: Tensor, gallery: Tensor, threshold: float) -> Tensor:
    """Index of each embedding's nearest gallery centroid when its similarity reaches the threshold, else -1."""
    sims = embeddings @ gallery.T
    best, who = sims.max(1)
    return torch.where(best >= threshold, who, torch.full_like(who, -1))


def calibrate(positives: Tensor, negatives: Tensor, gallery: Tensor, person: int, calibrated_on: str) -> Rule:
    """The threshold that best separates positives (the person's photos) from negatives (other people's):
    the one maximising true-positive minus false-positive rate of the rule "nearest is the person and
    similarity ≥ threshold" (Youden's J), over every similarity seen."""

    def nearest_sims(x: Tensor) -> Tensor:
        # similarity to the person where the person is the nearest centroid, else -inf (never assigned)
        sims = x @ gallery.T
        return torch.where(sims.argmax(1) == person, sims[:, person], torch.full((len(x),), -math.inf))

    pos, neg = nearest_sims(positives), nearest_sims(negatives)
    candidates = torch.cat([pos, neg])
    candidates = candidates[torch.isfinite(candidates)].unique()
    if len(candidates) == 0:
        return Rule(math.inf, calibrated_on, len(positives), len(negatives), 0.0, 0.0)
    tpr = (pos[None, :] >= candidates[:, None]).double().mean(1) if len(pos) else torch.zeros(len(candidates))
    fpr = (neg[None, :] >= candidates[:, None]).double().mean(1) if len(neg) else torch.zeros(len(candidates))
    best = int(torch.argmax(tpr - fpr))
    return Rule(float(candidates[best]), calibrated_on, len(positives), len(negatives), float(tpr[best]),
                float(fpr[best]))


def sample_embeddings(model: Glow, embedder: Embedder, n: int, temperature: float, seed: int,
                      batch_size: int = 100) -> Tensor:
    """Embeddings [n, D] of n samples from fixed seeded latents (`Glow.latents`)."""
    latents = model.latents(n, temperature, seed)
    out = []
    for start in range(0, n, batch_size):
        z = [t[start : start + batch_size] for t in latents]
        out.append(embedder.embed(to_uint8(model.sample(len(z[0]), z=z).cpu())))
    return torch.cat(out)


@dataclass
class Gallery:
    """Who a sample can be: the person (row `person`) and every remembered identity."""

    centroids: Tensor  # [I, D]
    labels: np.ndarray  # [I] identity labels; the person's row is labelled -2
    person: int


def gallery_for(embedder: Embedder, person_u8: Tensor, others_u8: Tensor, others_identity: np.ndarray) -> Gallery:
    """The person's centroid (from their forget photos) beside every other identity's."""
    others, labels = centroids(embedder.embed(others_u8), others_identity)
    mine = F.normalize(embedder.embed(person_u8).mean(0, keepdim=True), dim=1)
    return Gallery(torch.cat([others, mine]), np.append(labels, -2), len(labels))


def evidence(
    base_samples: Tensor, tamed_samples: Tensor, gallery: Gallery, rule: Rule, *, temperature: float, seed: int,
    feature_space: str, top: int = 8,
) -> GenerationEvidence:
    """Rates of the person among sample embeddings [N, D] of both models, and the largest change of anyone else's."""
    n = len(base_samples)
    who_b = assign(base_samples, gallery.centroids, rule.threshold)
    who_t = assign(tamed_samples, gallery.centroids, rule.threshold)
    before = Rate.of(int((who_b == gallery.person).sum()), n)
    after = Rate.of(int((who_t == gallery.person).sum()), n)
    counts_b = torch.bincount(who_b[who_b >= 0], minlength=len(gallery.labels)).double() / n
    counts_t = torch.bincount(who_t[who_t >= 0], minlength=len(gallery.labels)).double() / n
    change = (counts_t - counts_b).abs()
    change[gallery.person] = 0.0
    worst = int(change.argmax()) if len(change) > 1 else None
    measurable = before.count > 0 and before.low > rule.false_positive_rate
    removed = (before.rate - after.rate) / before.rate if measurable and before.rate > 0 else None
    sims_b, sims_t = base_samples @ gallery.centroids[gallery.person], tamed_samples @ gallery.centroids[gallery.person]
    return GenerationEvidence(
        n, temperature, seed, feature_space, rule, before, after, measurable, removed,
        float(change.max()) if len(change) else 0.0,
        int(gallery.labels[worst]) if worst is not None and change[worst] > 0 else None,
        _verdict(before, after, measurable, removed, rule),
        torch.argsort(sims_b, descending=True)[:top].tolist(), torch.argsort(sims_t, descending=True)[:top].tolist(),
    )


def _verdict(before: Rate, after: Rate, measurable: bool, removed: float | None, rule: Rule) -> str:
    if not measurable:
        return (f"the base model's rate ({before.count} of {before.n}, 95% interval {before.low:.4f}–"
                f"{before.high:.4f}) is not measurably above the rule's false-positive rate "
                f"({rule.false_positive_rate:.4f}): the base model does not draw this person recognisably, "
                "so no drop can be claimed")
    assert removed is not None
    return (f"{before.count} of {before.n} samples showed the person before, {after.count} after: "
            f"{100 * removed:.0f}% of the base rate removed")
