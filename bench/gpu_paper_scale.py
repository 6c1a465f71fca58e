"""Paper-scale taming speed, for a session that is lent a GPU.

A Glow of the paper's size (n_flow 32, n_block 4, hidden 512, additive coupling, LU, 128x128x3, 5 bits; about 61 M
parameters) runs taming iterations with the real losses on random but fixed data (8 forget images, 1024 remember
images, so that the μ_R/σ_R statistics cost what they would in a job), once per variant of the precision policy
(taming/precision.py). Per variant: seconds per iteration over whole statistics periods, the projected time of 800
iterations, the time to the first iteration (compilation, cuDNN autotuning) and the peak GPU memory. On CUDA also
the host syncs per iteration (torch's sync debug mode) and how far each mode's bpd moves from strict fp32 on the
shipped model's real faces. The paper's authors needed 4.73 s per iteration; our goal is 800 iterations in under
2 minutes on one H200.

    python bench/gpu_paper_scale.py [--variants tf32,bf16,bf16+cl] [--iterations 30] [--out figures.json]
    python bench/gpu_paper_scale.py --tiny   # a small model on the CPU, to check the script itself
    python bench/gpu_paper_scale.py --arch att32 --device cpu --variants fp32,bf16,fp32+cl   # CPU figures

A variant is a mode (fp32, tf32, bf16) with optional "+cl" (channels-last) and "+compile" (torch.compile).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from taming.glow import Glow, GlowConfig
from taming.precision import Precision
from taming.tame import StepInfo, TameConfig, tame

ARCHS = {
    "paper": GlowConfig(in_channel=3, img_size=128, n_flow=32, n_block=4, hidden=512, affine=False, conv_lu=True),
    "att32": GlowConfig(),  # the shipped model's architecture (668,736 parameters)
    "tiny": GlowConfig(in_channel=3, img_size=16, n_flow=2, n_block=2, hidden=16),
}
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "att32"


def parse_variant(text: str) -> Precision:
    """"bf16+cl+compile" -> Precision("bf16", channels_last=True, compile=True)."""
    mode, *flags = text.split("+")
    unknown = set(flags) - {"cl", "compile"}
    if unknown:
        raise SystemExit(f"unknown variant flag(s) {sorted(unknown)} in {text!r}: use +cl and +compile")
    return Precision(mode, channels_last="cl" in flags, compile="compile" in flags)


def random_sets(config: GlowConfig, n_remember: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """8 forget and n_remember remember images, quantized, random but fixed."""
    gen = torch.Generator().manual_seed(0)
    shape = (config.in_channel, config.img_size, config.img_size)
    bins = 2**config.n_bits

    def draw(n: int) -> torch.Tensor:
        return torch.floor(torch.rand(n, *shape, generator=gen) * bins) / bins - 0.5

    return draw(8), draw(n_remember)


def fresh_base(config: GlowConfig, remember: torch.Tensor, device: str) -> Glow:
    torch.manual_seed(0)
    base = Glow(config).to(device)
    with torch.no_grad():
        base(remember[:16].to(device) + 1 / 64)  # ActNorm's data-dependent init
    return base


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variant(base0: Glow, forget: torch.Tensor, remember: torch.Tensor, precision: Precision,
                 iterations: int, device: str) -> dict[str, Any]:
    """One taming run of `iterations` under `precision`; the figures of its steady state."""
    precision.configure()
    base = precision.prepare(copy.deepcopy(base0))
    tamed = precision.prepare(copy.deepcopy(base0))
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []

    def on_step(info: StepInfo) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    _sync(device)
    began = time.perf_counter()
    tame(tamed, base, forget, remember, TameConfig(delta=1e6, max_iterations=iterations), on_step=on_step)
    # stamps[k] follows iteration k + 1; the statistics are refreshed at the top of every 10th iteration, so the
    # window from iteration 10 to the last multiple of 10 holds exactly one refresh per 10 iterations
    end = (len(stamps) // 10) * 10
    per_it = (stamps[end - 1] - stamps[9]) / (end - 10)
    figures: dict[str, Any] = {"variant": precision.describe(), "s_per_iteration": per_it,
                               "projected_800_s": 800 * per_it, "first_iteration_s": stamps[0] - began,
                               "pass_ms": pass_ms(tamed, torch.cat([forget, remember[:8]]), device)}
    if device.startswith("cuda"):
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return figures


def pass_ms(model: Glow, images: torch.Tensor, device: str, reps: int = 10) -> float:
    """The fastest of `reps` forward and backward passes on these 16 images, in ms (the least disturbed by
    whatever else the machine runs)."""
    x = images.to(device) + 1 / 64
    best = float("inf")
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        model.bpd(x).mean().backward()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def syncs_per_iteration(base0: Glow, forget: torch.Tensor, remember: torch.Tensor, iterations: int = 8) -> float:
    """Host syncs per taming iteration between statistics refreshes (CUDA's sync debug mode counts them)."""
    base, tamed = copy.deepcopy(base0), copy.deepcopy(base0)
    config = TameConfig(delta=1e6, max_iterations=iterations, stats_every=10_000)  # no refresh inside the window
    counts: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def on_step(info: StepInfo) -> None:
            counts.append(sum("synchroniz" in str(w.message) for w in caught))

        torch.cuda.set_sync_debug_mode("warn")
        try:
            tame(tamed, base, forget, remember, config, on_step=on_step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return (counts[-1] - counts[1]) / (len(counts) - 2)  # from after the first step to the last


def bpd_accuracy(device: str) -> dict[str, Any]:
    """How far each mode's bpd moves from strict fp32 on the shipped model and 128 of its training faces:
    measured bpd (no gradient) under tf32, and the gradient pass's bpd under bf16."""
    from taming.checkpoint import load_checkpoint
    from taming.data import dequantize, load_faces, quantize

    model, _ = load_checkpoint(SHIPPED / "base.safetensors")
    model.to(device)
    faces = load_faces(SHIPPED / "remember.npz", model.config.img_size, model.config.in_channel)
    x = dequantize(quantize(faces.images[:128], model.config.n_bits), model.config.n_bits,
                   torch.Generator().manual_seed(0)).to(device)
    Precision("fp32").configure()
    with torch.no_grad():
        exact = model.bpd(x)
    out: dict[str, Any] = {}
    for mode in ("tf32", "bf16"):
        policy = Precision(mode)
        policy.configure()
        fast = policy.prepare(copy.deepcopy(model))
        with torch.no_grad():
            measured = fast.bpd(x)
        step = fast.bpd(x).detach()  # with gradient: bf16 couplings under "bf16"
        for name, value in (("measured", measured), ("gradient_pass", step)):
            diff = (value - exact).double()
            out[f"{mode}_{name}"] = {"max_abs": float(diff.abs().max()), "mean": float(diff.mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=sorted(ARCHS), default="paper")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default="tf32,bf16", help="comma-separated, e.g. fp32,tf32,bf16+cl")
    parser.add_argument("--iterations", type=int, default=30, help="at least 20 (two statistics periods)")
    parser.add_argument("--remember", type=int, default=1024, help="remember images (the statistics pass)")
    parser.add_argument("--tiny", action="store_true", help="--arch tiny --device cpu --remember 64")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    if args.tiny:
        args.arch, args.device, args.remember = "tiny", "cpu", 64
    if args.iterations < 20:
        parser.error("--iterations must be at least 20")
    config = ARCHS[args.arch]
    forget, remember = random_sets(config, args.remember)
    base0 = fresh_base(config, remember, args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    params = sum(p.numel() for p in base0.parameters())
    figures: dict[str, Any] = {"device": name, "torch": torch.__version__, "arch": args.arch, "parameters": params,
                               "remember_images": args.remember, "iterations": args.iterations, "variants": []}
    print(f"{name}; torch {torch.__version__}; {args.arch}: {params:,} parameters; "
          f"{args.iterations} iterations per variant, statistics over {args.remember} images every 10", flush=True)
    for text in args.variants.split(","):
        row = time_variant(base0, forget, remember, parse_variant(text), args.iterations, args.device)
        figures["variants"].append(row)
        memory = f"   peak {row['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in row else ""
        print(f"{row['variant']:<24} {row['s_per_iteration']:.3f} s/it   800 iterations {row['projected_800_s']:.0f} s"
              f"   first iteration {row['first_iteration_s']:.1f} s   fwd+bwd of 16 {row['pass_ms']:.1f} ms{memory}",
              flush=True)
    if args.device.startswith("cuda"):
        Precision("tf32").configure()
        figures["syncs_per_iteration"] = syncs_per_iteration(base0, forget, remember)
        figures["bpd_vs_fp32_shipped_model"] = bpd_accuracy(args.device)
        print(f"host syncs per iteration (tf32, between refreshes): {figures['syncs_per_iteration']:.1f}")
        print("bpd minus strict fp32 (shipped model, 128 faces):",
              json.dumps(figures["bpd_vs_fp32_shipped_model"]))
    print("paper's authors: 4.73 s per iteration (800 iterations: 63 min); goal: 800 iterations < 120 s on an H200")
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
