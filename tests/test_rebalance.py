"""Taming for a share: the sides, the stop rule on the interval, and the command line end to end."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rules.report_schema import SCHEMA
from taming.data import FaceSet
from taming.rebalance import share_reached, sides
from taming.rebalance_cli import classifier_group, rebalance_command
from taming.share import ShareEstimate


def _faces(n_people: int, per: int, band: bool, first_id: int, size: int = 16) -> FaceSet:
    """People as smooth patterns plus noise; `band` draws a dark bar across the eyes, like glasses."""
    gen = torch.Generator().manual_seed(7)
    patterns = torch.nn.functional.interpolate(torch.rand(20, 1, 4, 4, generator=gen), size=(size, size),
                                               mode="bilinear") * 0.6 + 0.3
    identity = np.repeat(np.arange(first_id, first_id + n_people), per)
    noise = torch.Generator().manual_seed(first_id)
    x = patterns[torch.from_numpy(identity)] + 0.05 * torch.randn(len(identity), 1, size, size, generator=noise)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if band:
        images[:, :, 5:8, 2:14] = 15
    return FaceSet(images, identity, [f"x[{i}]" for i in range(len(identity))],
                   [f"{first_id}-{i}" for i in range(len(identity))])


def _estimate(share: float, low: float, high: float) -> ShareEstimate:
    return ShareEstimate(share, low, high, share, 1000, 0.7, 0)


def test_interval_stop_rule_is_the_target_inside_the_interval_or_passed() -> None:
    assert share_reached(_estimate(0.2, 0.14, 0.26), 0.15, "decrease", "interval")
    assert not share_reached(_estimate(0.25, 0.2, 0.3), 0.15, "decrease", "interval")
    assert share_reached(_estimate(0.05, 0.02, 0.08), 0.15, "decrease", "interval")  # the whole interval is past
    assert share_reached(_estimate(0.5, 0.47, 0.53), 0.45, "increase", "interval")
    assert not share_reached(_estimate(0.3, 0.25, 0.35), 0.45, "increase", "interval")
    assert not share_reached(_estimate(0.05, 0.02, 0.08), 0.45, "increase", "interval")


def test_point_stop_rule_waits_for_the_share_itself() -> None:
    assert not share_reached(_estimate(0.2, 0.14, 0.26), 0.15, "decrease")  # the interval holds 0.15, the share not
    assert share_reached(_estimate(0.15, 0.09, 0.21), 0.15, "decrease")
    assert share_reached(_estimate(0.46, 0.40, 0.52), 0.45, "increase")
    assert not share_reached(_estimate(0.44, 0.38, 0.50), 0.45, "increase")
    with pytest.raises(ValueError, match="share_rule"):
        share_reached(_estimate(0.2, 0.1, 0.3), 0.15, "decrease", "vibes")


def test_sides_of_each_direction() -> None:
    pos, neg = _faces(2, 3, True, 0), _faces(2, 3, False, 2)
    others = FaceSet(torch.cat([pos.images[:1], neg.images[:2]]), np.array([0, 2, 2]), ["a", "b", "c"],
                     ["a", "b", "c"])
    dec = sides(pos, neg, "decrease", others=others)
    assert dec.forget is pos and dec.delta_sign == 1 and dec.strategy == "push_positives"
    assert len(dec.remember) == len(neg) + 2  # the positive image among the others stays out of D_R
    push = sides(pos, neg, "increase", "push_negatives")
    assert push.forget is neg and push.remember is pos and push.delta_sign == 1
    pull = sides(pos, neg, "increase", "pull_positives")
    assert pull.forget is pos and pull.delta_sign == -1
    with pytest.raises(ValueError):
        sides(pos, neg, "sideways")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from taming.checkpoint import save_checkpoint
    from taming.data import quantize
    from taming.glow import Glow, GlowConfig
    from taming.train import TrainConfig, train

    root = tmp_path_factory.mktemp("rebalance")
    pos, neg = _faces(4, 6, True, 0), _faces(8, 6, False, 4)
    for name, faces in (("positive", pos), ("negative", neg)):
        np.savez(root / f"{name}.npz", images=faces.images[:, 0].numpy(), identity=faces.identity)
    torch.manual_seed(0)
    model = Glow(GlowConfig(in_channel=1, img_size=16, n_flow=2, n_block=2, hidden=16, n_bits=5))
    train(model, quantize(torch.cat([pos.images, neg.images]), 5), TrainConfig(steps=150, warmup=20, batch_size=16))
    save_checkpoint(model, root / "base.safetensors", data_hash="")
    return root


@pytest.mark.slow
def test_classifier_train_then_rebalance(workspace: Path) -> None:
    w = workspace
    common = ["--positive", str(w / "positive.npz"), "--negative", str(w / "negative.npz")]
    trained = CliRunner().invoke(classifier_group, ["train", *common, "--model", str(w / "base.safetensors"),
                                                    "--out", str(w / "clf.safetensors"), "--members", "1",
                                                    "--steps", "120", "--folds", "3"])
    assert trained.exit_code == 0, trained.output
    assert "by-person accuracy" in trained.output
    out, report = w / "tamed.safetensors", w / "report.json"
    result = CliRunner().invoke(rebalance_command, [
        "--model", str(w / "base.safetensors"), "--classifier", str(w / "clf.safetensors"), *common,
        "--direction", "decrease", "--target-share", "0.1", "--max-iterations", "20", "--samples", "64",
        "--method", "paper", "--out", str(out), "--report", str(report)])
    assert result.exit_code in (0, 1), result.output
    data = json.loads(report.read_text())
    jsonschema.validate(data, SCHEMA)
    assert (result.exit_code == 0) == data["stopping"]["criterion_met"]
    share = data["metrics"]["attribute_share"]
    assert share["samples"] == 64 and share["target"] == 0.1
    assert share["before_interval"][0] <= share["before"] <= share["before_interval"][1]
    its = [t["iteration"] for t in share["trace"]]
    assert its == list(range(0, 10 * len(its), 10)) and its[-1] <= data["stopping"]["iterations"]
    assert data["stopping"]["iterations"] == 20 or data["stopping"]["criterion_met"]
    assert {"before", "after", "change"} <= set(data["metrics"]["bpd_remember"])
    assert 0 <= data["metrics"]["identity_kept"] <= 1
    assert "data:image/png;base64" in report.with_suffix(".html").read_text()
    assert out.exists()


@pytest.mark.slow
def test_random_labels_are_refused_with_exit_2(workspace: Path, tmp_path: Path) -> None:
    faces = _faces(12, 6, False, 0)
    labels = np.random.default_rng(1).random(len(faces)) < 0.5
    np.savez(tmp_path / "random.npz", images=faces.images[:, 0].numpy(), identity=faces.identity, label=labels)
    result = CliRunner().invoke(classifier_group, ["train", "--data", str(tmp_path / "random.npz"), "--model",
                                                   str(workspace / "base.safetensors"), "--out",
                                                   str(tmp_path / "c.safetensors"), "--members", "1", "--steps",
                                                   "120", "--folds", "3"])
    assert result.exit_code == 2, result.output
    assert "below the 75%" in result.output and not (tmp_path / "c.safetensors").exists()
