"""The project's own feature networks: identity embedder, PCA fallback, nearest identities, attribute classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from taming.attribute import train_attribute_classifier
from taming.features import (
    Embedder,
    PixelPCA,
    feature_space,
    load_embedder,
    nearest_identities,
    save_embedder,
    train_embedder,
)


def _people(n_people: int, per_person: int, seed: int, size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """Each "person" is a fixed smooth random pattern; each image adds pixel noise. -> uint8 [N, 1, S, S], [N]."""
    gen = torch.Generator().manual_seed(1234)  # the same people whatever the seed
    patterns = torch.nn.functional.interpolate(torch.rand(n_people, 1, 8, 8, generator=gen), size=(size, size))
    noise_gen = torch.Generator().manual_seed(seed)
    identity = np.repeat(np.arange(n_people), per_person)
    x = patterns[torch.from_numpy(identity)] + 0.15 * torch.randn(len(identity), 1, size, size, generator=noise_gen)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), identity


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    images, identity = _people(3, 12, seed=0)
    return train_embedder(images, identity, seed=0, steps=30)


def test_embedder_separates_identities(embedder: Embedder) -> None:
    train, train_id = _people(3, 12, seed=0)
    test, test_id = _people(3, 8, seed=1)
    feats = embedder.embed(test)
    assert feats.shape == (24, 64)
    assert torch.allclose(feats.norm(dim=1), torch.ones(24), atol=1e-5)
    ref = embedder.embed(train)
    means = torch.stack([ref[torch.from_numpy(train_id == i)].mean(0) for i in range(3)])
    predicted = (feats @ means.T).argmax(1).numpy()
    assert (predicted == test_id).mean() >= 0.9  # chance is 1/3


def test_nearest_identities_ranks_the_same_person_first(embedder: Embedder) -> None:
    remember, remember_id = _people(3, 12, seed=0)
    forget, _ = _people(3, 4, seed=2)
    nearest = nearest_identities(embedder, forget[8:], remember, remember_id, k=2)
    assert nearest[0] == 2 and len(nearest) == 2
    assert 2 not in nearest_identities(embedder, forget[8:], remember, remember_id, k=5, exclude=[2])


def test_pca_fallback_without_identities() -> None:
    images, _ = _people(3, 10, seed=0, size=16)
    space = feature_space(images, np.full(len(images), -1), seed=0)
    assert isinstance(space, PixelPCA) and space.name == "pixel-pca-64"
    assert space.embed(images).shape == (30, 30)  # at most N components


def test_feature_space_picks_the_cnn_with_identities() -> None:
    images, identity = _people(2, 6, seed=0)
    identity[:3] = -1  # unknown images are left out of training, not fatal
    space = feature_space(images, identity, seed=0, steps=5)
    assert isinstance(space, Embedder) and space.name == "identity-cnn-64"


def test_save_and_load_round_trip(embedder: Embedder, tmp_path: Path) -> None:
    images, _ = _people(3, 2, seed=3)
    save_embedder(embedder, tmp_path / "e.safetensors")
    loaded = load_embedder(tmp_path / "e.safetensors")
    assert loaded.name == embedder.name
    assert torch.allclose(loaded.embed(images), embedder.embed(images), atol=1e-6)
    pca = PixelPCA.fit(images)
    save_embedder(pca, tmp_path / "p.safetensors")
    loaded_pca = load_embedder(tmp_path / "p.safetensors")
    assert isinstance(loaded_pca, PixelPCA) and torch.allclose(loaded_pca.embed(images), pca.embed(images))


def _with_band(images: torch.Tensor) -> torch.Tensor:
    """A synthetic attribute: a dark horizontal band across the eyes, like glasses."""
    out = images.clone()
    out[:, :, 10:14, 4:28] = 20
    return out


def test_attribute_classifier_measures_share() -> None:
    base, _ = _people(6, 6, seed=0)
    positive, negative = _with_band(base[:12]), base[12:]  # unbalanced on purpose: 12 vs 24
    clf = train_attribute_classifier(positive, negative, seed=0, steps=80, pool="avg")
    test, _ = _people(6, 4, seed=5)
    assert clf.share(_with_band(test)) >= 0.9
    assert clf.share(test) <= 0.1
    mixed = torch.cat([_with_band(test[:6]), test[6:]])  # a quarter carries it
    model_space = mixed.float() / 255 - 0.5  # what Glow.sample returns
    assert clf.share(model_space) == pytest.approx(clf.share(mixed), abs=0.05)
    assert 0.15 <= clf.share(mixed) <= 0.35
