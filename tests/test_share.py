"""The corrected share of an attribute among samples (Rogan–Gladen) and its interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taming.glow import Glow, GlowConfig
from taming.share import ErrorRates, ShareMeter, corrected_share, rogan_gladen, samples_of


def test_rogan_gladen_inverts_a_misclassifying_counter() -> None:
    rates = ErrorRates(0.8, 0.9, 100, 200)
    p = 0.3
    observed = rates.sensitivity * p + (1 - rates.specificity) * (1 - p)
    assert rogan_gladen(observed, rates) == pytest.approx(p)
    assert rogan_gladen(0.01, rates) == 0.0  # below the false-positive floor: clipped
    assert rogan_gladen(0.95, rates) == 1.0
    with pytest.raises(ValueError, match="chance"):
        rogan_gladen(0.5, ErrorRates(0.5, 0.5, 10, 10))


def test_interval_covers_the_truth_about_95_percent() -> None:
    """Simulate the whole measurement (classifier's test counts and the samples) and count coverage."""
    rng = np.random.default_rng(0)
    true_p, se, sp, n_pos, n_neg, n = 0.3, 0.85, 0.9, 120, 280, 1000
    hits = 0
    for _ in range(2000):
        se_hat = rng.binomial(n_pos, se) / n_pos
        sp_hat = rng.binomial(n_neg, sp) / n_neg
        observed = rng.binomial(n, se * true_p + (1 - sp) * (1 - true_p)) / n
        est = corrected_share(observed, n, ErrorRates(se_hat, sp_hat, n_pos, n_neg))
        hits += est.contains(true_p)
    assert 0.92 <= hits / 2000 <= 0.98


def test_interval_narrows_with_more_samples_and_a_better_classifier() -> None:
    rough = corrected_share(0.3, 100, ErrorRates(0.8, 0.8, 50, 50))
    fine = corrected_share(0.3, 1000, ErrorRates(0.8, 0.8, 50, 50))
    sharp = corrected_share(0.3, 1000, ErrorRates(0.95, 0.95, 500, 500))
    assert rough.high - rough.low > fine.high - fine.low > sharp.high - sharp.low
    assert 0 <= rough.low <= rough.share <= rough.high <= 1


def test_meter_uses_the_same_latents_every_time() -> None:
    torch.manual_seed(0)
    model = Glow(GlowConfig(1, 8, 2, 2, 16, False, True, 5)).eval()
    with torch.no_grad():
        model(torch.rand(16, 1, 8, 8) - 0.5)  # data-dependent init
    meter = ShareMeter.for_model(model, lambda x: x.mean((1, 2, 3)) > 0, ErrorRates(0.9, 0.9, 50, 50),
                                 samples=64)
    first, second = meter(model), meter(model)
    assert first == second and first.samples == 64 and first.temperature == 0.7
    images = samples_of(model, meter.latents, batch=10)
    assert images.shape == (64, 1, 8, 8)
    assert torch.allclose(images, model.sample(64, z=meter.latents), atol=1e-4)
