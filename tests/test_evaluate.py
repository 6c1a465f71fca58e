"""Evaluation: quantile math, quantile drops, bpd shifts, KS and the Fréchet distance on tiny seeded models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats

from taming.data import quantize, to_uint8
from taming.evaluate import (
    discrete_likelihood,
    evaluate_sets,
    frechet_distance,
    importance_weighted_bpd,
    mean_bpd,
    quantiles,
    sample_frechet,
)
from taming.features import PixelPCA
from taming.glow import Glow, GlowConfig

N_BITS = 5


def _images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return quantize(torch.randint(0, 256, (n, 1, 16, 16), generator=gen, dtype=torch.uint8), N_BITS)


@pytest.fixture(scope="module")
def model() -> Glow:
    torch.manual_seed(0)
    glow = Glow(GlowConfig(in_channel=1, img_size=16, n_flow=2, n_block=2, hidden=16, n_bits=N_BITS))
    with torch.no_grad():
        glow(_images(16, 99) + 1 / 64)  # data-dependent ActNorm init
    return glow


def test_quantiles_match_scipy() -> None:
    values = torch.tensor([3.0, 4.0, 5.0, 7.0, 2.5])
    expected = stats.norm.sf((values.numpy() - 4.0) / 0.5)
    assert torch.allclose(quantiles(values, 4.0, 0.5), torch.from_numpy(expected), rtol=1e-10, atol=0)
    assert float(quantiles(torch.tensor([4.0]), 4.0, 1.0)) == pytest.approx(0.5)
    # far tail: delta = 4 gives 1 - Phi(4) ~ 3.2e-5, kept to full relative precision
    assert float(quantiles(torch.tensor([8.0]), 0.0, 2.0)) == pytest.approx(stats.norm.sf(4.0), rel=1e-10)


def test_mean_bpd_is_reproducible_and_averages_draws(model: Glow) -> None:
    x = _images(10, 1)
    a = mean_bpd(model, x, N_BITS, draws=3, seed=7, batch_size=4)
    b = mean_bpd(model, x, N_BITS, draws=3, seed=7, batch_size=4)
    assert a.shape == (10,) and torch.equal(a, b)
    one = mean_bpd(model, x, N_BITS, draws=1, seed=7, batch_size=4)
    assert not torch.equal(a, one)  # more draws, different average
    assert torch.isfinite(a).all()


def _sets() -> dict[str, torch.Tensor]:
    return {
        "forget": _images(4, 10),
        "forget_holdout": _images(3, 11),
        "remember": _images(24, 12),
        "remember_unseen": _images(6, 13),
        "remember_nearest": _images(6, 14),
        "remember_holdout": _images(8, 15),
    }


def test_identical_models_drop_nothing(model: Glow) -> None:
    result = evaluate_sets(model, copy.deepcopy(model), _sets(), N_BITS, sigma_r=0.1, draws=2)
    metrics = result["metrics"]
    assert set(metrics["quantile_drop"]) == {
        "forget",
        "forget_holdout",
        "remember",
        "remember_unseen",
        "remember_nearest",
    }
    assert set(metrics["bpd_shift_sigma"]) == set(_sets())
    for value in metrics["quantile_drop"].values():
        assert value == pytest.approx(0.0, abs=1e-12)
    for value in metrics["bpd_shift_sigma"].values():
        assert value == pytest.approx(0.0, abs=1e-12)
    assert metrics["bpd_remember"]["before"] == pytest.approx(metrics["bpd_remember"]["after"])
    assert 0.0 <= metrics["ks_normality"]["p_value"] <= 1.0
    assert set(metrics["mean_quantile"]["forget"]) == {"before", "after"}
    per = result["per_image"]["forget"]
    assert per["bpd_before"].shape == (4,) and per["quantile_after"].shape == (4,)
    # held-out sets measure against remember_holdout, the others against remember
    assert set(result["reference"]) == {"remember", "remember_holdout"}
    assert result["reference_of"] == {"forget": "remember", "forget_holdout": "remember_holdout",
                                      "remember": "remember", "remember_unseen": "remember_holdout",
                                      "remember_nearest": "remember", "remember_holdout": "remember_holdout"}


def test_shift_sign_and_quantile_drop_follow_a_worse_model(model: Glow) -> None:
    tamed = copy.deepcopy(model)
    with torch.no_grad():  # a wider first ActNorm spreads densities: every image gets a higher NLL
        tamed.blocks[0].flows[0].actnorm.scale.mul_(3.0)
    sets = {"forget": _images(4, 10), "remember": _images(24, 12)}
    metrics = evaluate_sets(model, tamed, sets, N_BITS, sigma_r=0.5, draws=1)["metrics"]
    assert metrics["bpd_shift_sigma"]["forget"] > 0
    assert metrics["bpd_remember"]["after"] > metrics["bpd_remember"]["before"]
    # quantiles are relative to the same model's remember set, so a uniform shift leaves them near 0.5
    assert abs(metrics["quantile_drop"]["remember"]) < 0.05


def test_held_out_sets_fall_back_to_remember_reference(model: Glow) -> None:
    sets = {"forget": _images(3, 1), "forget_holdout": _images(3, 2), "remember": _images(12, 3)}
    result = evaluate_sets(model, model, sets, N_BITS, sigma_r=1.0, draws=1)
    assert set(result["reference"]) == {"remember"}
    assert set(result["reference_of"].values()) == {"remember"}
    with pytest.raises(ValueError, match="remember"):
        evaluate_sets(model, model, {"forget": _images(3, 1)}, N_BITS, sigma_r=1.0, draws=1)


def test_importance_weighted_bpd_is_the_probability_of_the_bin() -> None:
    dims = 1
    a, b = 3.0, 5.0  # two draws: probabilities 2^-3 and 2^-5 of the bin
    iw = importance_weighted_bpd(torch.tensor([[a], [b]]), dims)
    assert float(iw) == pytest.approx(-math.log2((2**-a + 2**-b) / 2))
    draws = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.1 + 2.0
    iw = importance_weighted_bpd(draws, dims=64)
    assert (iw <= draws.mean(0)).all() and (iw >= draws.min(0).values).all()  # Jensen, and a mean of p
    assert torch.allclose(importance_weighted_bpd(draws[:1], 64), draws[0])
    assert torch.allclose(importance_weighted_bpd(torch.full((8, 3), 2.5), 64), torch.full((3,), 2.5).double())


class _UnevenInsideBins(torch.nn.Module):
    """A model that puts 95% of each bin's probability into the lower half of the first pixel's bin: the same
    probability for every quantized image, a higher mean bpd (what a tamed model can learn for D_F)."""

    def __init__(self, glow: Glow) -> None:
        super().__init__()
        self.glow = glow

    def bpd(self, x: torch.Tensor) -> torch.Tensor:
        inside = ((x[:, 0, 0, 0] + 0.5) * 2**N_BITS) % 1  # where the draw fell inside the first pixel's bin
        weight = torch.where(inside < 0.5, 1.9, 0.1)  # averages 1 over the bin: the probability is kept
        return self.glow.bpd(x) - torch.log2(weight) / x[0].numel()


def test_discrete_likelihood_tells_a_real_fall_from_an_uneven_density(model: Glow) -> None:
    sets = {"forget": _images(4, 10), "forget_holdout": _images(3, 11), "remember": _images(8, 12)}
    uneven = discrete_likelihood(model, _UnevenInsideBins(model), sets, N_BITS, sigma_r=1.0)
    worse = copy.deepcopy(model)
    with torch.no_grad():
        worse.blocks[0].flows[0].actnorm.scale.mul_(3.0)
    real = discrete_likelihood(model, worse, sets, N_BITS, sigma_r=1.0)
    assert set(uneven) == {"draws", "forget", "forget_holdout"} and uneven["forget"]["images"] == 4
    assert abs(uneven["forget"]["share_of_rise"]) < 0.5  # the mean bpd rose, the probability did not fall
    assert real["forget"]["share_of_rise"] > 0.8 and real["forget"]["shift_sigma"] > 0
    same = discrete_likelihood(model, copy.deepcopy(model), sets, N_BITS, sigma_r=1.0, draws=4)
    assert same["forget"]["share_of_rise"] is None and same["forget"]["shift_sigma"] == pytest.approx(0.0)


def test_frechet_distance_zero_for_same_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    near = frechet_distance(a, a + 0.5)
    far = frechet_distance(a, a + 2.0)
    assert near == pytest.approx(8 * 0.25, rel=1e-6)
    assert far > near > 0
    # fewer samples than dimensions: singular covariance must still give a finite number
    few = frechet_distance(rng.normal(size=(5, 64)), rng.normal(size=(6, 64)))
    assert math.isfinite(few) and few > 0


def test_sample_frechet_uses_the_same_latents_for_both_models(model: Glow) -> None:
    remember = to_uint8(_images(40, 3))
    space = PixelPCA.fit(remember, n_components=8)
    result = sample_frechet(model, copy.deepcopy(model), space, remember, n=32, seed=1, batch_size=16)
    assert result["feature_space"] == "pixel-pca-8"
    assert result["before"] == pytest.approx(result["after"]) and result["before"] > 0


def test_keyed_noise_makes_an_image_s_bpd_independent_of_its_set(model: Glow) -> None:
    from taming.likelihood import image_keys

    x = _images(12, 3)
    keys = image_keys(x)
    whole = mean_bpd(model, x, N_BITS, draws=2, seed=5, keys=keys, batch_size=5)
    part = mean_bpd(model, x[7:], N_BITS, draws=2, seed=5, keys=keys[7:], batch_size=2)
    assert torch.allclose(whole[7:], part)  # the same noise whatever subset or batch it is measured in


def test_a_large_sets_subset_keeps_its_images_when_others_leave() -> None:
    from taming.evaluate import subset_by_content
    from taming.likelihood import image_keys

    keys = image_keys(_images(40, 6))
    chosen = set(keys[subset_by_content(keys, 10, 0)].tolist())
    fewer = keys[5:]  # five images leave the set, as a forgotten person's do
    still = set(fewer[subset_by_content(fewer, 10, 0)].tolist())
    assert len(chosen) == len(still) == 10
    assert chosen - still <= set(keys[:5].tolist())  # only the images that left were replaced
    assert set(keys[subset_by_content(keys, 10, 1)].tolist()) != chosen  # another seed, another subset
    assert len(subset_by_content(keys[:7], 10, 0)) == 7


def test_base_cache_gives_what_a_fresh_measurement_gives(model: Glow, tmp_path) -> None:
    from taming.evaluate import BaseCache
    from taming.likelihood import image_keys

    x = _images(10, 4)
    keys = image_keys(x)
    fresh = mean_bpd(model, x, N_BITS, draws=2, seed=0, keys=keys)
    cache = BaseCache(tmp_path / "base.npz")
    assert torch.allclose(cache.mean_bpd(model, x[:6], keys[:6], N_BITS, 2, 0), fresh[:6])
    cache.save()
    again = BaseCache(tmp_path / "base.npz")
    assert len(again.values) == 6
    assert torch.allclose(again.mean_bpd(model, x, keys, N_BITS, 2, 0), fresh)  # 4 measured, 6 from the file
    assert again.dirty
