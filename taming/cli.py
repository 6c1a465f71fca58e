"""Library commands of `taming`: train, tame, evaluate, sample, import-rosinality, verify.

Heavy imports (torch, the library) happen inside each command so that the `taming` entry point
stays light for the service commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


def fail(message: str) -> None:
    """Exit non-zero with a one-line reason (bad input is the user's to fix, not a traceback)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def parse_range(text: str | None) -> list[int] | None:
    """'0-34' or '1,3,5-7' -> [0, ..., 34]; None stays None."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def load_set(path: str, size: int, channels: int, identities: str | None = None, images: str | None = None) -> Any:
    """Load DATA, optionally keeping some identities and each identity's images (1-based positions)."""
    from taming.data import DataError, load_faces

    try:
        faces = load_faces(path, size, channels)
    except DataError as exc:
        fail(str(exc))
    positions = parse_range(images)
    keep = faces.select(parse_range(identities), None if positions is None else slice(min(positions) - 1, max(positions)))
    if len(keep) == 0:
        fail(f"{path}: no images left after selecting identities {identities} and images {images}")
    return keep


@click.command("train")
@click.argument("data")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="checkpoint to write (.safetensors)")
@click.option("--image-size", default=32, show_default=True)
@click.option("--channels", default=1, show_default=True, type=click.Choice(["1", "3"]))
@click.option("--n-flow", default=8, show_default=True)
@click.option("--n-block", default=3, show_default=True)
@click.option("--hidden", default=128, show_default=True)
@click.option("--affine", is_flag=True, help="affine instead of additive coupling")
@click.option("--no-lu", is_flag=True, help="plain 1x1 convolutions instead of LU")
@click.option("--n-bits", default=5, show_default=True)
@click.option("--steps", default=4000, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--identities", help="keep only these identities, e.g. 0-34")
@click.option("--images", help="keep only these images of each identity (1-based), e.g. 1-7")
@click.option("--checkpoint-every", default=500, show_default=True)
@click.option("--resume", is_flag=True, help="continue from OUT.state.pt")
def train_command(data: str, out: str, image_size: int, channels: str, n_flow: int, n_block: int, hidden: int,
                  affine: bool, no_lu: bool, n_bits: int, steps: int, batch_size: int, lr: float, seed: int,
                  identities: str | None, images: str | None, checkpoint_every: int, resume: bool) -> None:
    """Train a base Glow on DATA (a folder or .npz) by maximum likelihood."""
    import torch
    from tqdm import tqdm

    from taming.checkpoint import save_checkpoint
    from taming.data import quantize
    from taming.glow import Glow, GlowConfig
    from taming.train import TrainConfig, train

    if image_size % 2 ** n_block:
        fail(f"--image-size {image_size} must be divisible by 2^n_block = {2 ** n_block}")
    faces = load_set(data, image_size, int(channels), identities, images)
    torch.manual_seed(seed)
    config = GlowConfig(int(channels), image_size, n_flow, n_block, hidden, affine, not no_lu, n_bits)
    model = Glow(config)
    state_path = Path(out + ".state.pt")
    state = torch.load(state_path, weights_only=True) if resume and state_path.exists() else None
    bar = tqdm(total=steps, initial=state["step"] if state else 0, desc="train", unit="step")
    meta = {"data_hash": faces.data_hash(), "parent": "", "trained_steps": str(steps)}

    def on_step(step: Any, state_fn: Any) -> None:
        bar.update(1)
        bar.set_postfix(bpd=f"{step.bpd:.3f}")
        if step.step % checkpoint_every == 0 or step.step == steps:
            torch.save(state_fn(), state_path)
            save_checkpoint(model, out, **meta)

    train(model, quantize(faces.images, n_bits), TrainConfig(steps, batch_size, lr, seed=seed), on_step, state)
    bar.close()
    sha = save_checkpoint(model, out, **meta)
    click.echo(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters, sha256 {sha})")


library_commands: list[click.Command] = [train_command]
