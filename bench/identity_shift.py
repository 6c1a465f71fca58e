"""Which people lose likelihood with the forgotten one: per-identity bpd shift after one taming run.

Forgets one trained AT&T identity as bench/table1.py does, then prints for every identity the mean bpd
shift (tamed − base) of its photos the model never trained on (images 8–10 of trained identities, all
ten of the unseen identities 35–39), in units of σ, the std of the base model's bpd on its training set.
The README's "Base models we tried" quotes it (person 22: an unseen look-alike loses with the person).

    .venv/bin/python bench/identity_shift.py [--person 22] [--model PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from att_sets import MODEL, UNSEEN, att_sets
from table1 import run

from taming.checkpoint import load_checkpoint
from taming.data import quantize
from taming.tame import TameConfig, bpd_of


def shift(base: torch.nn.Module, tamed: torch.nn.Module, images_q: torch.Tensor) -> float:
    """Mean bpd shift over images [N, C, H, W], the same dequantization noise for both models."""
    before = bpd_of(base, images_q, torch.Generator().manual_seed(1), draws=3)
    after = bpd_of(tamed, images_q, torch.Generator().manual_seed(1), draws=3)
    return float((after - before).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--person", type=int, default=22)
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args()
    sets = att_sets(args.person)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tamed.safetensors"
        run(args.person, TameConfig(), Path(tempfile.gettempdir()) / "taming-bench-cache", args.model, out)
        tamed = load_checkpoint(out)[0].eval()
    base = load_checkpoint(args.model)[0].eval()
    n_bits = base.config.n_bits
    sigma = bpd_of(base, quantize(sets["trained"].images, n_bits), torch.Generator().manual_seed(0)).std().item()
    held_out = sets["remember_holdout"]
    groups = [("held-out", i, held_out.select([i])) for i in sorted(set(held_out.identity.tolist()))]
    groups += [("forgotten, held-out", args.person, sets["holdout"])]
    groups += [("unseen", i, sets["unseen"].select([i])) for i in UNSEEN]
    print(f"person {args.person}: bpd shift of photos never trained on, in σ = {sigma:.4f} bpd")
    for kind, identity, faces in groups:
        print(f"{kind:20s} {identity:3d}  {shift(base, tamed, quantize(faces.images, n_bits)) / sigma:+.2f}")


if __name__ == "__main__":
    main()
