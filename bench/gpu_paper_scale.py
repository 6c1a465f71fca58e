"""Paper-scale taming speed, for a session that is lent a GPU.

A Glow of the paper's size (n_flow 32, n_block 4, hidden 512, additive coupling, LU, 128x128x3, 5 bits;
about 61 M parameters) runs 50 taming iterations with the real losses on random but fixed data (8 forget
images, 1024 remember images, so the μ_R/σ_R refresh every 10 iterations costs what it would in a job).
Prints seconds per iteration and the projected time of 800 iterations. The paper's authors needed 4.73 s per
iteration; our goal is 800 iterations in under 2 minutes on one H200.

Convolutions may run in bf16 (--bf16); log-probabilities and log-determinants stay in fp32 whatever the
convolutions use (taming.glow accumulates in at least fp32).

    python bench/gpu_paper_scale.py [--bf16] [--iterations 50]
    python bench/gpu_paper_scale.py --tiny   # a CPU smoke run of the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch

from taming.glow import Glow, GlowConfig
from taming.tame import StepInfo, TameConfig, tame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--bf16", action="store_true", help="run convolutions under bf16 autocast")
    parser.add_argument("--tiny", action="store_true", help="a small model on the CPU, to check the script")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        config = GlowConfig(in_channel=3, img_size=16, n_flow=2, n_block=2, hidden=16, n_bits=5)
    else:
        config = GlowConfig(in_channel=3, img_size=128, n_flow=32, n_block=4, hidden=512, affine=False,
                            conv_lu=True, n_bits=5)
    torch.manual_seed(0)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gen = torch.Generator().manual_seed(0)
    shape = (config.in_channel, config.img_size, config.img_size)
    forget = torch.floor(torch.rand(8, *shape, generator=gen) * 32) / 32 - 0.5
    remember = torch.floor(torch.rand(1024, *shape, generator=gen) * 32) / 32 - 0.5
    base = Glow(config).to(device)
    with torch.no_grad():
        base(remember[:64].to(device) + 1 / 64)  # ActNorm's data-dependent init
    tamed = copy.deepcopy(base)
    params = sum(p.numel() for p in base.parameters())
    stamps: list[float] = []

    def on_step(info: StepInfo) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    precision = torch.autocast(device, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    with precision:
        tame(tamed, base, forget, remember, TameConfig(delta=1e6, max_iterations=args.iterations), on_step=on_step)
    warm = stamps[5:]  # the first iterations pay for cuDNN autotuning
    per_it = (warm[-1] - warm[0]) / (len(warm) - 1)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{name}: {params / 1e6:.1f} M parameters, {'bf16' if args.bf16 else 'fp32'} convolutions")
    print(f"{per_it:.3f} s per iteration (μ_R/σ_R refresh included); 800 iterations: {800 * per_it / 60:.1f} min "
          f"(paper: 4.73 s/it, 63 min)")
    if device == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
