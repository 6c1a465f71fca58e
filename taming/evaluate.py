"""Evaluation of a taming run: bpd over several dequantization draws, likelihood quantiles, quantile drops,
normality of the remember set's NLLs and the Fréchet distance (DESIGN.md section 4, "Evaluation"; the
paper's section 5.1 and Table 1).

Quantiles are computed from NLL in bits per dimension rather than in nats. For a fixed model size
M = C*H*W, bpd = (nll_nats + M ln 2^n_bits) / (M ln 2) is a monotone increasing affine map of the NLL, and
the standardised score (v - mu) / sigma is invariant under such a map, so every quantile is identical.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from taming.data import to_uint8
from taming.glow import INFERENCE_BATCH
from taming.likelihood import bpd_draws, image_keys, importance_weighted_bpd, mean_bpd

if TYPE_CHECKING:
    from taming.features import FeatureSpace

# Every set an evaluation knows about. The first five get quantile drops (DESIGN.md section 8); the last one
# only serves as the reference of held-out sets and for its bpd shift.
QD_SETS = ("forget", "forget_holdout", "remember", "remember_unseen", "remember_nearest")
ALL_SETS = (*QD_SETS, "remember_holdout")
# Sets whose images the base model never trained on: against training images a small, overfit base model
# finds every unseen image an outlier, so their quantiles are measured against other unseen images.
HELD_OUT_SETS = ("forget_holdout", "remember_unseen", "remember_holdout")
# Sets of other people, which the next version's jobs measure again: the tamed model's figures of them are kept
# for that version (never the forgotten person's).
CARRIED_SETS = ("remember", "remember_unseen", "remember_holdout", "remember_nearest")
# Images per set and draws per image. DESIGN.md asks for up to 10,000 remember images and 5 draws; on a CPU that
# is minutes per report (10,000 x 5 x 2 models at ~3 ms), and 2,048 images give σ within 1.6% (its standard
# error), so sets are capped there, and sets larger than LARGE_SET get 2 draws (the noise is paired between the
# two models, image by image, so the differences the report gives hardly move).
MAX_REFERENCE = 2_048
LARGE_SET = 256
LARGE_SET_DRAWS = 2
# The discrete-likelihood check: dequantization draws per image, and images per set.
DISCRETE_DRAWS = 64
DISCRETE_IMAGES = 64


def quantiles(values: Tensor, mu: float, sigma: float) -> Tensor:
    """Likelihood quantile q = 1 - Phi((v - mu) / sigma) of NLLs `values` [N] -> [N] (float64).

    A small q means an unusually unlikely image. erfc keeps precision in the far tail (q ~ 1e-5 and below),
    where 1 - Phi would cancel to 0.
    """
    z = (values.double() - mu) / sigma
    return 0.5 * torch.special.erfc(z / math.sqrt(2.0))


def subset_by_content(keys: Tensor, limit: int, seed: int) -> Tensor:
    """Indices of at most `limit` of the images with content keys `keys` [N] -> [n] (sorted): all when there are
    no more, else those whose keys rank first once mixed with the seed.

    A choice by content rather than by position: removing one person's images from a set leaves the rest of
    its subset as it was, so every job on a version measures mostly the same images and the base model's
    figures come from BaseCache instead of being measured again."""
    if keys.shape[0] <= limit:
        return torch.arange(keys.shape[0])
    rank = [hashlib.sha256(f"{seed}-{k}".encode()).digest()[:8] for k in keys.tolist()]
    return torch.tensor(sorted(sorted(range(len(rank)), key=rank.__getitem__)[:limit]), dtype=torch.long)


class BaseCache:
    """The base model's mean bpd of each image (by content key and draws) for every job on one version.

    Every report of a version compares against the same base model, on mostly the same images (the reference
    sets minus whoever is being forgotten): measured once, kept in a file beside the feature network. The noise
    is each image's own (`image_keys`), so a cached value is exactly what a fresh measurement would give.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.values: dict[tuple[int, int], float] = {}
        if path is not None and path.exists():
            data = np.load(path)
            self.values = {(int(d), int(k)): float(v) for d, k, v in zip(data["draws"], data["keys"], data["bpd"],
                                                                        strict=True)}
        self.dirty = False

    def mean_bpd(self, model: nn.Module, images_q: Tensor, keys: Tensor, n_bits: int, draws: int, seed: int,
                 batch_size: int = INFERENCE_BATCH) -> Tensor:
        """`mean_bpd` of images [N, ...] with per-image keys [N], computing only the images not seen before."""
        missing = [i for i, k in enumerate(keys.tolist()) if (draws, k) not in self.values]
        if missing:
            idx = torch.tensor(missing, dtype=torch.long)
            fresh = mean_bpd(model, images_q[idx], n_bits, draws, seed, keys=keys[idx], batch_size=batch_size)
            self.values.update({(draws, int(keys[i])): float(v) for i, v in zip(missing, fresh.tolist(), strict=True)})
            self.dirty = True
        return torch.tensor([self.values[draws, k] for k in keys.tolist()], dtype=torch.float64)

    def record(self, keys: Tensor, draws: int, values: Tensor) -> None:
        """Keep values [N] measured elsewhere for images with keys [N]: a tamed model's figures become the base
        figures of the version it is saved as."""
        self.values.update({(draws, int(k)): float(v) for k, v in zip(keys.tolist(), values.tolist(), strict=True)})
        self.dirty = True

    def drop(self, keys: Tensor) -> None:
        """Forget every value of the images with these keys [N] (a forgotten person's leave the cache too)."""
        gone = set(keys.tolist())
        kept = {dk: v for dk, v in self.values.items() if dk[1] not in gone}
        self.dirty = self.dirty or len(kept) < len(self.values)
        self.values = kept

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draws, keys = zip(*self.values, strict=True) if self.values else ((), ())
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, draws=np.array(draws, dtype=np.int64), keys=np.array(keys, dtype=np.int64),
                 bpd=np.array(list(self.values.values()), dtype=np.float64))
        tmp.replace(self.path)
        self.dirty = False


def warm_base_cache(base: nn.Module, sets: dict[str, Tensor], n_bits: int, cache: BaseCache, *, draws: int = 5,
                    seed: int = 0, batch_size: int = INFERENCE_BATCH) -> None:
    """Measure the base model's figures of reference sets (name -> quantized images [N, C, H, W]) into `cache`,
    as `evaluate_sets` would: the same subset by content and draws. A job's sets are these minus its person, so
    only the images that replace the person's in a subset are measured again."""
    for images in sets.values():
        chosen, keys, k = _measured_part(images, draws, seed)
        cache.mean_bpd(base, chosen, keys, n_bits, k, seed, batch_size)


def _measured_part(images: Tensor, draws: int, seed: int) -> tuple[Tensor, Tensor, int]:
    """(the images of a set [n, ...] an evaluation measures, their content keys [n], the draws per image)."""
    keys = image_keys(images)
    idx = subset_by_content(keys, MAX_REFERENCE, seed)
    return images[idx], keys[idx], draws if len(images) <= LARGE_SET else min(draws, LARGE_SET_DRAWS)


def _reference_stats(bpd: Tensor, key: str) -> dict[str, float]:
    """mu, sigma (and n) of a reference set's bpd [N]."""
    if bpd.numel() < 2:
        raise ValueError(f"reference set {key!r} needs at least 2 images to estimate mu and sigma")
    return {"mu": float(bpd.mean()), "sigma": float(bpd.std()), "n": bpd.numel()}


def _reference_for(name: str, present: list[str], reference_key: str, holdout_reference_key: str) -> str:
    """The set whose mu, sigma give `name` its quantiles (DESIGN.md section 4, "Evaluation")."""
    if name in HELD_OUT_SETS and holdout_reference_key in present:
        return holdout_reference_key
    return reference_key


def _measure(base: nn.Module, tamed: nn.Module, images: Tensor, n_bits: int, draws: int, seed: int,
             batch_size: int, base_cache: BaseCache | None,
             tamed_cache: BaseCache | None = None) -> tuple[Tensor, Tensor]:
    """(bpd under base, bpd under tamed) of one set, subsampled and with fewer draws when large; the tamed values
    go into `tamed_cache` when given."""
    images, keys, k = _measured_part(images, draws, seed)
    before = (base_cache.mean_bpd(base, images, keys, n_bits, k, seed, batch_size) if base_cache is not None
              else mean_bpd(base, images, n_bits, k, seed, keys=keys, batch_size=batch_size))
    after = mean_bpd(tamed, images, n_bits, k, seed, keys=keys, batch_size=batch_size)
    if tamed_cache is not None:
        tamed_cache.record(keys, k, after)
    return before, after


def _per_image(bpd: tuple[Tensor, Tensor], ref: dict[str, dict[str, Any]]) -> dict[str, Tensor]:
    before, after = bpd
    return {"bpd_before": before, "bpd_after": after,
            "quantile_before": quantiles(before, ref["base"]["mu"], ref["base"]["sigma"]),
            "quantile_after": quantiles(after, ref["tamed"]["mu"], ref["tamed"]["sigma"])}


def evaluate_sets(
    base: nn.Module, tamed: nn.Module, sets: dict[str, Tensor], n_bits: int, *,
    reference_key: str = "remember", holdout_reference_key: str = "remember_holdout",
    sigma_r: float, draws: int = 5, seed: int = 0, batch_size: int = INFERENCE_BATCH,
    measured: dict[str, tuple[Tensor, Tensor]] | None = None,
    base_cache: BaseCache | None = None, tamed_cache: BaseCache | None = None,
) -> dict[str, Any]:
    """Evaluate base and tamed models on the named image sets.

    sets: name -> quantized images [N_s, C, H, W]; names among ALL_SETS are evaluated, others ignored.
        `sets[reference_key]` must be present; sets larger than MAX_REFERENCE images are subsampled
        (subset_by_content);
        sets larger than LARGE_SET get LARGE_SET_DRAWS draws instead of `draws`.
    base_cache: the base model's values of images measured before (the same version's earlier reports).
    tamed_cache: receives the tamed model's values of CARRIED_SETS (the next version's base figures).
    sigma_r: sigma_R in bpd, the unit of `bpd_shift_sigma` (the run's final estimate under the tamed model).
    measured: (bpd_base, bpd_tamed) of sets already measured by an earlier call (its "bpd" entry), so that
        several requests of one run measure the shared sets once.
    Returns {"metrics": ..., "per_image": ..., "reference": ..., "bpd": ...}:
      metrics: quantile_drop[set], mean_quantile[set] = {before, after} (QD_SETS present), bpd_shift_sigma[set]
        (all present sets), bpd_remember = {before, after}, ks_normality = {statistic, p_value} —
        the names of DESIGN.md section 8 `metrics`.
      per_image: set -> {bpd_before, bpd_after, quantile_before, quantile_after}, each a float64 Tensor [N_s].
      reference: set used as reference -> {base: {mu, sigma, n}, tamed: {mu, sigma, n}}.
      reference_of: set -> the name of the set whose mu, sigma gave it its quantiles.
    """
    known = (*ALL_SETS, reference_key, holdout_reference_key)
    names = [n for n in dict.fromkeys(known) if n in sets and sets[n].shape[0] > 0]
    if reference_key not in names:
        raise ValueError(f"the reference set {reference_key!r} is missing or empty")
    bpd: dict[str, tuple[Tensor, Tensor]] = dict(measured or {})
    for name in names:
        if name not in bpd:
            carry = tamed_cache if name in CARRIED_SETS else None
            bpd[name] = _measure(base, tamed, sets[name], n_bits, draws, seed, batch_size, base_cache, carry)
    ref_keys = {_reference_for(n, names, reference_key, holdout_reference_key) for n in names}
    reference = {
        key: {"base": _reference_stats(bpd[key][0], key), "tamed": _reference_stats(bpd[key][1], key)}
        for key in ref_keys
    }
    reference_of = {n: _reference_for(n, names, reference_key, holdout_reference_key) for n in names}
    per_image = {name: _per_image(bpd[name], reference[reference_of[name]]) for name in names}
    metrics = _summarise(per_image, sigma_r, reference_key, reference[reference_key]["tamed"])
    return {"metrics": metrics, "per_image": per_image, "reference": reference, "reference_of": reference_of,
            "bpd": bpd}


def _summarise(
    per_image: dict[str, dict[str, Tensor]], sigma_r: float, reference_key: str, tamed_ref: dict[str, float]
) -> dict[str, Any]:
    """Per-set means of the per-image values -> the `metrics` fields of DESIGN.md section 8."""
    from scipy import stats

    metrics: dict[str, Any] = {"quantile_drop": {}, "mean_quantile": {}, "bpd_shift_sigma": {}}
    for name, v in per_image.items():
        q_b, q_t = float(v["quantile_before"].mean()), float(v["quantile_after"].mean())
        if name in QD_SETS:
            metrics["quantile_drop"][name] = q_b - q_t
            metrics["mean_quantile"][name] = {"before": q_b, "after": q_t}
        metrics["bpd_shift_sigma"][name] = float((v["bpd_after"] - v["bpd_before"]).mean()) / sigma_r
    remember = per_image[reference_key]
    metrics["bpd_remember"] = {
        "before": float(remember["bpd_before"].mean()),
        "after": float(remember["bpd_after"].mean()),
    }
    # mu and sigma are estimated from the same sample, which makes the KS p-value conservative (Lilliefors);
    # it is a normality diagnostic, as in the paper, not a certified test.
    standardised = (remember["bpd_after"].numpy() - tamed_ref["mu"]) / tamed_ref["sigma"]
    ks = stats.kstest(standardised, "norm")
    metrics["ks_normality"] = {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)}
    return metrics


def discrete_likelihood(
    base: nn.Module, tamed: nn.Module, sets: dict[str, Tensor], n_bits: int, *, sigma_r: float,
    draws: int = DISCRETE_DRAWS, limit: int = DISCRETE_IMAGES, seed: int = 0, batch_size: int = INFERENCE_BATCH,
) -> dict[str, Any]:
    """How much of the forget sets' bpd rise is a real fall in the probability of the quantized images.

    sets: name -> quantized images [N, C, H, W]; "forget" and "forget_holdout" are checked (at most `limit`
    images each, seeded). -> `metrics.discrete_likelihood`: {"draws", <set>: {"images", "before", "after",
    "shift_sigma", "share_of_rise"}} with before/after the importance-weighted bpd (`importance_weighted_bpd`)
    under the base and tamed models, and share_of_rise its rise over the rise of the mean bpd on the same draws.
    Taming raises the mean bpd of D_F (DESIGN.md section 4); a share well below 1 means part of that rise is
    the tamed density turning uneven inside the images' quantization bins, which a sample from the model
    does not see.
    """
    out: dict[str, Any] = {"draws": draws}
    for name in ("forget", "forget_holdout"):
        if name not in sets or sets[name].shape[0] == 0:
            continue
        images = sets[name][subset_by_content(image_keys(sets[name]), limit, seed)]
        dims = images[0].numel()
        before = bpd_draws(base, images, n_bits, draws, seed, batch_size=batch_size)
        after = bpd_draws(tamed, images, n_bits, draws, seed, batch_size=batch_size)
        iw_before, iw_after = importance_weighted_bpd(before, dims), importance_weighted_bpd(after, dims)
        rise = float((after.mean(0) - before.mean(0)).mean())
        iw_rise = float((iw_after - iw_before).mean())
        out[name] = {
            "images": int(images.shape[0]),
            "before": float(iw_before.mean()),
            "after": float(iw_after.mean()),
            "shift_sigma": iw_rise / sigma_r,
            "share_of_rise": iw_rise / rise if rise > 0 else None,
        }
    return out


def frechet_distance(feats_a: np.ndarray | Tensor, feats_b: np.ndarray | Tensor, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to features [N, D] and [M, D] (N, M >= 2).

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). With fewer samples than dimensions a covariance is
    singular and sqrtm can return non-finite values; then `eps` is added to both diagonals (as in FID code).
    """
    from scipy import linalg

    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [N>=2, D] feature arrays with the same D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(cov_a)) * eps
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    # sqrtm of a product of PSD matrices is real up to rounding; drop the imaginary dust
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def _samples_u8(model: nn.Module, latents: list[Tensor], batch_size: int) -> Tensor:
    """Samples of `model` from fixed latents (list of [n, c_b, h_b, w_b]) -> uint8 [n, C, H, W] on the CPU."""
    n = latents[0].shape[0]
    out = []
    for start in range(0, n, batch_size):
        z = [t[start : start + batch_size] for t in latents]
        out.append(to_uint8(model.sample(len(z[0]), z=z).cpu()))  # type: ignore[operator]
    return torch.cat(out)


def sample_frechet(
    base: nn.Module,
    tamed: nn.Module,
    space: FeatureSpace,
    remember_u8: Tensor,
    n: int = 256,
    temperature: float = 0.5,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Fréchet distance between n samples at `temperature` and remember images [N, C, H, W] (uint8), in the
    named feature space, for the base and the tamed model drawn from the same latents.

    -> {"feature_space", "before", "after"}: `metrics.frechet_distance` of DESIGN.md section 8.
    """
    latents = base.latents(n, temperature, seed)  # type: ignore[operator]
    reference = space.embed(remember_u8)
    return {
        "feature_space": space.name,
        "before": frechet_distance(space.embed(_samples_u8(base, latents, batch_size)), reference),
        "after": frechet_distance(space.embed(_samples_u8(tamed, latents, batch_size)), reference),
    }
