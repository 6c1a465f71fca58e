"""The attribute classifier: grouped (by-person) cross-validation, ensemble, safetensors with its accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from taming.attribute import (
    Recipe,
    fit_classifier,
    grouped_folds,
    load_classifier,
    load_labelled,
    person_keys,
    save_classifier,
)
from taming.data import DataError, FaceSet

TINY = Recipe(members=1, steps=120, folds=2)


def _faces(n_people: int, per: int, band: bool, seed: int, first_id: int = 0) -> FaceSet:
    """Each person a fixed smooth pattern plus noise; `band` draws a dark bar across the eyes, like glasses."""
    gen = torch.Generator().manual_seed(1234)
    patterns = torch.nn.functional.interpolate(torch.rand(40, 1, 8, 8, generator=gen), size=(32, 32))
    noise = torch.Generator().manual_seed(seed)
    identity = np.repeat(np.arange(first_id, first_id + n_people), per)
    x = patterns[torch.from_numpy(identity)] + 0.15 * torch.randn(len(identity), 1, 32, 32, generator=noise)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if band:
        images[:, :, 10:14, 4:28] = 20
    return FaceSet(images, identity, [f"x[{i}]" for i in range(len(identity))], [str(i) for i in range(len(identity))])


def test_grouped_folds_never_split_a_person() -> None:
    groups = np.repeat(np.arange(9), [1, 2, 3, 4, 5, 6, 7, 8, 9])
    folds = grouped_folds(groups, 3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    people = [set(groups[f].tolist()) for f in folds]
    assert all(not (a & b) for i, a in enumerate(people) for b in people[i + 1 :])
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 9


def test_person_keys_from_npz_identity_and_folders() -> None:
    faces = _faces(2, 2, False, 0)
    assert person_keys(faces) == ["id:0", "id:0", "id:1", "id:1"]
    faces.names = ["alice/1.png", "alice/2.png", "bob/1.png", "x.png"]
    faces.identity = np.array([0, 0, 1, -1])
    assert person_keys(faces) == ["dir:alice", "dir:alice", "dir:bob", None]


def test_learns_a_clear_attribute_by_person_and_saves_its_accuracy(tmp_path: Path) -> None:
    positive, negative = _faces(6, 4, True, 0), _faces(8, 4, False, 1, first_id=6)
    model = fit_classifier(positive, negative, TINY)
    assert model.accuracy is not None and model.accuracy.grouping == "person" and model.accuracy.people == 14
    assert model.accuracy.accuracy >= 0.75 and model.usable()  # a coin would score ~0.5
    path = tmp_path / "clf.safetensors"
    save_classifier(model, path)
    loaded = load_classifier(path)
    test = torch.cat([_faces(3, 2, True, 7).images, _faces(3, 2, False, 8).images])
    assert torch.allclose(loaded.probability(test), model.probability(test))
    assert loaded.accuracy == model.accuracy
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert float(meta["accuracy"]) == pytest.approx(model.accuracy.accuracy, abs=1e-6)
    assert json.loads(meta["accuracy_json"])["sensitivity"] == model.accuracy.sensitivity


@pytest.mark.slow
def test_random_labels_give_a_classifier_that_is_refused() -> None:
    # the same people on both sides at random: nothing to learn that holds for unseen people
    faces = _faces(12, 4, False, 3)
    labels = np.random.default_rng(0).random(len(faces)) < 0.5
    model = fit_classifier(faces.subset(labels), faces.subset(~labels), TINY)
    assert model.accuracy is not None and model.accuracy.balanced_accuracy < 0.7


def test_load_labelled_from_npz_label_array(tmp_path: Path) -> None:
    images = np.zeros((4, 40, 40), np.uint8)
    np.savez(tmp_path / "d.npz", images=images, identity=np.array([0, 0, 1, 1]), label=np.array([1, 0, 0, 1]))
    pos, neg = load_labelled(tmp_path / "d.npz", 32, 1)
    assert len(pos) == 2 and len(neg) == 2 and pos.identity.tolist() == [0, 1]
    np.savez(tmp_path / "e.npz", images=images)
    with pytest.raises(DataError, match="label"):
        load_labelled(tmp_path / "e.npz", 32, 1)
