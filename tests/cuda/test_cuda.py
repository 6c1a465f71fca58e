"""The library on a GPU: skipped where there is no CUDA device (CI, this project's CPU machines).

bench/gpu_check.sh runs these on a lent GPU. They check what only a GPU can show: every tensor follows the model to
the device (a whole run of the pipeline on CUDA), a Glow pass never waits for the device, a taming step waits for it
at most twice (the stop check before the step, the losses and gradient norm after it), CUDA agrees with the CPU,
and the precision policy's numbers there.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from taming.data import FaceSet, quantize
from taming.glow import Glow, GlowConfig
from taming.precision import Precision
from taming.tame import StepInfo, TameConfig, tame

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIG = GlowConfig(in_channel=1, img_size=16, n_flow=2, n_block=2, hidden=16, n_bits=5)


@pytest.fixture
def trained(two_people: FaceSet) -> Glow:
    """A tiny Glow fitted for a few steps to the two synthetic people (on the CPU, seeded)."""
    from taming.train import TrainConfig, train

    torch.manual_seed(0)
    model = Glow(CONFIG)
    train(model, quantize(two_people.images, 5), TrainConfig(steps=40, warmup=10, batch_size=16))
    return model.eval()


def _x(n: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.floor(torch.rand(n, 1, 16, 16, generator=gen) * 32) / 32 - 0.5 + torch.rand(n, 1, 16, 16,
                                                                                              generator=gen) / 32


def test_cuda_matches_the_cpu(trained: Glow) -> None:
    Precision("fp32").configure()
    x = _x()
    with torch.no_grad():
        on_cpu = trained.bpd(x)
        gpu = copy.deepcopy(trained).cuda()
        on_gpu = gpu.bpd(x.cuda())
        z = gpu(x.cuda())[2]
        back = gpu.reverse(z, reconstruct=True)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-5)
    torch.testing.assert_close(back.cpu(), x, rtol=0, atol=1e-4)


def test_a_glow_pass_never_waits_for_the_device(trained: Glow) -> None:
    gpu = copy.deepcopy(trained).cuda()
    x = _x().cuda()
    gpu.bpd(x).mean().backward()  # once before: library handles and kernels load on first use
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu.bpd(x).mean().backward()
        with torch.no_grad():
            gpu.bpd(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_taming_step_waits_for_the_device_at_most_twice(trained: Glow, two_people: FaceSet) -> None:
    base, tamed = copy.deepcopy(trained).cuda(), copy.deepcopy(trained).cuda()
    forget, remember = quantize(two_people.images[:4], 5), quantize(two_people.images[20:], 5)
    counts: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def on_step(info: StepInfo) -> None:
            counts.append(sum("synchroniz" in str(w.message) for w in caught))

        torch.cuda.set_sync_debug_mode("warn")
        try:
            tame(tamed, base, forget, remember, TameConfig(delta=1e6, max_iterations=6, stats_every=1000),
                 on_step=on_step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    per_step = [b - a for a, b in itertools.pairwise(counts)]
    assert per_step and max(per_step) <= 2, per_step


def test_a_run_saved_on_cuda_resumes_on_cuda(trained: Glow, two_people: FaceSet, tmp_path: Path) -> None:
    forget, remember = quantize(two_people.images[:4], 5), quantize(two_people.images[20:], 5)
    config = TameConfig(delta=1e6, max_iterations=6)
    states: list[dict[str, object]] = []

    def keep(info: StepInfo) -> None:
        if info.iteration == 3:
            states.append(info.state())

    base = copy.deepcopy(trained).cuda()
    tame(copy.deepcopy(trained).cuda(), base, forget, remember, config, on_step=keep)
    torch.save(states[0], tmp_path / "state.pt")  # as the worker saves it, and loads it back on the CPU first
    state = torch.load(tmp_path / "state.pt", weights_only=True, map_location="cpu")
    result = tame(copy.deepcopy(trained).cuda(), base, forget, remember, config, resume=state)
    assert result.iterations == 6 and torch.isfinite(result.d).all()
    assert next(result.model.parameters()).is_cuda


@pytest.mark.parametrize("mode", ["tf32", "bf16"])
def test_the_precision_policy_on_cuda(trained: Glow, mode: str) -> None:
    x = _x().cuda()
    Precision("fp32").configure()
    exact_model = copy.deepcopy(trained).cuda()
    with torch.no_grad():
        exact = exact_model.bpd(x)
    policy = Precision(mode, channels_last=True)
    policy.configure()
    fast = policy.prepare(copy.deepcopy(trained).cuda())
    try:
        with torch.no_grad():
            measured = fast.bpd(x)
        step = fast.bpd(x)
        step.mean().backward()
    finally:
        Precision("tf32").configure()
    assert float((measured - exact).abs().max()) < 1e-3
    assert float((step.detach() - exact).abs().max()) < 3e-3
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


def test_the_whole_pipeline_runs_on_cuda(trained: Glow, two_people: FaceSet, tmp_path: Path) -> None:
    from taming.checkpoint import save_checkpoint
    from taming.pipeline import Request, run_requests

    save_checkpoint(trained, tmp_path / "base.safetensors", data_hash=two_people.data_hash())
    person0 = two_people.subset(np.flatnonzero(two_people.identity == 0))
    request = Request("r", person0.subset(np.arange(4)), holdout=person0.subset(np.arange(15, 17)))
    result = run_requests(tmp_path / "base.safetensors", two_people, [request], TameConfig(max_iterations=3),
                          tmp_path / "tamed.safetensors", device="cuda", precision=Precision("tf32"),
                          cache_dir=tmp_path / "cache")
    report = result.reports["r"].as_json()
    assert report["timing"]["device"] == "cuda" and report["timing"]["precision"] == "tf32"
    assert report["stopping"]["iterations"] == 3
    assert np.isfinite(report["metrics"]["bpd_remember"]["after"])
