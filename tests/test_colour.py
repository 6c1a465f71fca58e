"""Colour models end to end: training from a folder with --channels 3, then a taming run and its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from taming.cli import tame_command, train_command


def _people(n_people: int = 3, per: int = 12, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Colour "identities": a random colour pattern each, plus noise -> uint8 [N, size, size, 3], identity [N]."""
    rng = np.random.default_rng(seed)
    images, identity = [], []
    for who in range(n_people):
        pattern = rng.uniform(40, 215, size=(size, size, 3))
        for _ in range(per):
            images.append(np.clip(pattern + rng.normal(0, 12, size=pattern.shape), 0, 255).astype(np.uint8))
            identity.append(who)
    return np.stack(images), np.array(identity)


@pytest.fixture(scope="module")
def colour_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("colour")
    images, identity = _people()
    for i, (img, who) in enumerate(zip(images, identity, strict=True)):
        part = "forget" if who == 0 and i % 12 < 8 else "holdout" if who == 0 else f"train/p{who}"
        (root / part).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "RGB").save(root / part / f"{i:03d}.png")
    for i in np.flatnonzero(identity == 0)[:8]:  # the person is in the training data too
        (root / "train" / "p0").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], "RGB").save(root / "train" / "p0" / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_a_colour_model_trains_tames_and_reports(colour_folders: Path) -> None:
    torch.manual_seed(0)
    root = colour_folders
    runner = CliRunner()
    trained = runner.invoke(train_command, [str(root / "train"), "--out", str(root / "base.safetensors"),
                                            "--channels", "3", "--image-size", "16", "--n-flow", "2", "--n-block", "2",
                                            "--hidden", "16", "--steps", "150", "--batch-size", "16"])
    assert trained.exit_code == 0, trained.output
    report = root / "report.json"
    tamed = runner.invoke(tame_command, [
        "--model", str(root / "base.safetensors"), "--forget", str(root / "forget"), "--holdout", str(root / "holdout"),
        "--remember", str(root / "train"), "--method", "improved", "--lr", "2e-3", "--epsilon", "1.0",
        "--max-iterations", "200", "--out", str(root / "tamed.safetensors"), "--report", str(report)])
    assert tamed.exit_code == 0, tamed.output
    data = json.loads(report.read_text())
    assert data["stopping"]["criterion_met"] and data["parameters"]["method"] == "improved"
    assert data["metrics"]["certificate"]["estimator"] == "discrete"
    gen = data["metrics"]["generation"]
    assert gen["samples"] == 1000 and gen["rule"]["calibrated_on"].startswith("held-out")
    assert 0 <= gen["after"]["rate"] <= 1
    assert "Does the model still draw the person?" in report.with_suffix(".html").read_text()
