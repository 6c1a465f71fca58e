"""Base training: the augmentation keeps images intact up to a shift, and a resumed run matches a straight one."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from taming.glow import Glow, GlowConfig
from taming.train import TrainConfig, TrainStep, _augment, _learning_rate, train


def test_augmentation_translates_by_at_most_shift_pixels() -> None:
    images = torch.arange(4 * 1 * 8 * 8, dtype=torch.float32).view(4, 1, 8, 8)
    out = _augment(images, TrainConfig(flip=False, shift=2), torch.Generator().manual_seed(0))
    for img, moved in zip(images, out, strict=True):
        # the centre 4x4 of the shifted image is a 4x4 window of the original, offset by at most 2 pixels
        windows = [img[:, 2 + dy : 6 + dy, 2 + dx : 6 + dx] for dy in range(-2, 3) for dx in range(-2, 3)]
        assert any(torch.equal(moved[:, 2:6, 2:6], w) for w in windows)
    assert torch.equal(_augment(images, TrainConfig(flip=False, shift=0), torch.Generator()), images)


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    config = TrainConfig(steps=100, warmup=10, lr=1e-3, cosine=True)
    assert _learning_rate(config, 5) == 5e-4
    assert _learning_rate(config, 10) == 1e-3
    assert _learning_rate(config, 100) < 1e-12
    assert _learning_rate(TrainConfig(steps=100, warmup=10, cosine=False), 100) == 1e-3


def test_resumed_training_matches_a_straight_run() -> None:
    torch.manual_seed(0)
    images = (torch.rand(16, 1, 8, 8) * 32).floor() / 32 - 0.5
    config = TrainConfig(steps=6, warmup=2, batch_size=4, init_batch=16)
    torch.manual_seed(1)
    fresh = Glow(GlowConfig(img_size=8, n_flow=2, n_block=2, hidden=8))
    straight = train(copy.deepcopy(fresh), images, config)
    saved: dict[str, Any] = {}

    def crash_after_step_3(step: TrainStep) -> None:
        if step.step == 3:
            saved.update(copy.deepcopy(step.state()))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(copy.deepcopy(fresh), images, config, crash_after_step_3)
    resumed = train(copy.deepcopy(fresh), images, config, resume=saved)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float())
