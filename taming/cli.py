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

from taming.cli_common import fail, load_set


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
@click.option("--steps", default=1500, show_default=True, help="about 10 minutes at 32x32 on 2 cores")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--lr-schedule", default="constant", show_default=True, type=click.Choice(["cosine", "constant"]),
              help="after the warm-up")
@click.option("--shift", default=0, show_default=True, help="augment with random translations up to this many pixels")
@click.option("--seed", default=0, show_default=True)
@click.option("--identities", help="keep only these identities, e.g. 0-34")
@click.option("--images", help="keep only these images of each identity (1-based), e.g. 1-7")
@click.option("--checkpoint-every", default=500, show_default=True)
@click.option("--resume", is_flag=True, help="continue from OUT.state.pt")
def train_command(data: str, out: str, image_size: int, channels: str, n_flow: int, n_block: int, hidden: int,
                  affine: bool, no_lu: bool, n_bits: int, steps: int, batch_size: int, lr: float, lr_schedule: str,
                  shift: int, seed: int, identities: str | None, images: str | None, checkpoint_every: int,
                  resume: bool) -> None:
    """Train a base Glow on DATA (a folder or .npz) by maximum likelihood."""
    import torch
    from tqdm import tqdm

    from taming.checkpoint import save_checkpoint
    from taming.data import quantize
    from taming.glow import Glow, GlowConfig
    from taming.train import TrainConfig, TrainStep, train

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

    def on_step(step: TrainStep) -> None:
        bar.update(1)
        bar.set_postfix(bpd=f"{step.bpd:.3f}")
        if step.step % checkpoint_every == 0 or step.step == steps:
            torch.save(step.state(), state_path)
            save_checkpoint(model, out, **meta)

    recipe = TrainConfig(steps, batch_size, lr, shift=shift, cosine=lr_schedule == "cosine", seed=seed)
    train(model, quantize(faces.images, n_bits), recipe, on_step, state)
    bar.close()
    sha = save_checkpoint(model, out, **meta)
    click.echo(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters, sha256 {sha})")


def _tame_config(method: str, delta: float, epsilon: float | None, alpha: float, gamma: float, lr: float,
                 max_iterations: int, seed: int, forget_loss: str) -> Any:
    from taming.tame import method_config

    return method_config(method, delta=delta, epsilon=epsilon, alpha=alpha, gamma=gamma, lr=lr,
                         max_iterations=max_iterations, seed=seed, forget_loss=forget_loss)


def _load_model(path: str) -> Any:
    from taming.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path)[0]
    except CheckpointError as exc:
        fail(str(exc))


@click.command("tame")
@click.option("--model", "model_path", required=True, help="base checkpoint (.safetensors)")
@click.option("--forget", required=True, help="images to forget (folder or .npz)")
@click.option("--remember", required=True,
              help="images to remember (folder or .npz); the forgotten person leaves it by image match")
@click.option("--holdout", help="more images of the forgotten person, never used for taming (D'_F)")
@click.option("--remember-holdout", help="held-out images of remembered people (the person leaves it too)")
@click.option("--unseen", help="images of people the base model never saw (D_R^id)")
@click.option("--delta", default=4.0, show_default=True)
@click.option("--epsilon", type=float, help="stop tolerance on d  [default: 0.15·|delta|]")
@click.option("--alpha", default=0.6, show_default=True)
@click.option("--gamma", default=0.6, show_default=True)
@click.option("--lr", default=5e-5, show_default=True)
@click.option("--max-iterations", default=800, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--forget-loss", default="paper", show_default=True, type=click.Choice(["paper", "scale_free"]))
@click.option("--method", default=None, help="paper, discrete, converge, specific or improved  [default: the "
              "default method, README 'The method, measured']")
@click.option("--device", default="cpu", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="where to keep the trained feature network")
@click.option("--out", required=True, help="tamed checkpoint to write")
@click.option("--report", "report_path", required=True, help="JSON report to write (the HTML goes beside it)")
def tame_command(model_path: str, forget: str, remember: str, holdout: str | None, remember_holdout: str | None,
                 unseen: str | None, delta: float, epsilon: float | None, alpha: float, gamma: float, lr: float,
                 max_iterations: int, seed: int, forget_loss: str, method: str | None, device: str,
                 cache_dir: str | None, out: str, report_path: str) -> None:
    """Tame a base model so that it forgets the FORGET images; exit 1 if the stop criterion is not met."""
    from tqdm import tqdm

    from rules.method import DEFAULT_METHOD, METHODS
    from taming.checkpoint import CheckpointError, read_metadata
    from taming.data import DataError
    from taming.pipeline import Request, run_requests
    from taming.tame import TamingError

    method = method or DEFAULT_METHOD
    if method not in METHODS:
        fail(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    try:
        config = json.loads(read_metadata(model_path)["config"])
    except (CheckpointError, KeyError) as exc:
        fail(str(exc))
    size, channels = config["img_size"], config["in_channel"]
    optional = {k: load_set(v, size, channels) if v else None
                for k, v in (("holdout", holdout), ("remember_holdout", remember_holdout), ("unseen", unseen))}
    request = Request("cli", load_set(forget, size, channels), optional["holdout"], {"kind": "forget_identity"})
    tame_config = _tame_config(method, delta, epsilon, alpha, gamma, lr, max_iterations, seed, forget_loss)
    bar = tqdm(total=max_iterations, desc="tame", unit="it")

    def on_step(info: Any) -> None:
        bar.update(info.iteration - bar.n)
        bar.set_postfix(max_abs_d=f"{info.max_abs_d:.2f}")

    try:
        result = run_requests(Path(model_path), load_set(remember, size, channels), [request], tame_config,
                              Path(out), on_step=on_step, device=device,
                              remember_holdout=optional["remember_holdout"], unseen=optional["unseen"],
                              cache_dir=Path(cache_dir) if cache_dir else None)
    except (DataError, TamingError, CheckpointError) as exc:
        bar.close()
        fail(str(exc))
    bar.close()
    report = result.reports["cli"].as_json()
    Path(report_path).write_text(json.dumps(report, indent=2))
    html_path = Path(report_path).with_suffix(".html")
    html_path.write_text(result.html["cli"])
    _summary(report, out, report_path, str(html_path))
    if not report["stopping"]["criterion_met"]:
        sys.exit(1)


def _summary(report: dict[str, Any], out: str, report_path: str, html_path: str) -> None:
    stop, metrics = report["stopping"], report["metrics"]
    click.echo(f"criterion met: {stop['criterion_met']} after {stop['iterations']} iterations ({stop['reason']})")
    for name, value in metrics["quantile_drop"].items():
        q = metrics["mean_quantile"][name]
        click.echo(f"  {name:<18} q {q['before']:.4f} -> {q['after']:.2e}   QD {value:+.4f}")
    bpd = metrics["bpd_remember"]
    click.echo(f"  bpd(D_R) {bpd['before']:.4f} -> {bpd['after']:.4f}; wall {report['timing']['wall_seconds']:.1f} s")
    check = metrics.get("discrete_likelihood", {}).get("forget")
    if check and check["share_of_rise"] is not None:
        click.echo(f"  discrete likelihood ({metrics['discrete_likelihood']['draws']} draws): "
                   f"{check['share_of_rise']:.0%} of D_F's bpd rise, {check['shift_sigma']:+.2f} sigma_R")
    click.echo(f"wrote {out}, {report_path}, {html_path}")


@click.command("sample")
@click.option("--model", "model_path", required=True)
@click.option("--n", default=64, show_default=True)
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, help="PNG grid to write")
def sample_command(model_path: str, n: int, temperature: float, seed: int, out: str) -> None:
    """Draw N samples at TEMPERATURE from fixed, seeded latents and save them as a grid."""
    import numpy as np
    from PIL import Image

    from taming.data import to_uint8

    model = _load_model(model_path)
    images = to_uint8(model.sample(n, temperature=temperature, seed=seed)).numpy()  # [n, C, H, W]
    cols = int(n**0.5 + 0.999)
    rows = (n + cols - 1) // cols
    c, h, w = images.shape[1:]
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        grid[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = img.transpose(1, 2, 0)
    Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(out)
    click.echo(f"wrote {out} ({n} samples at temperature {temperature})")


@click.command("evaluate")
@click.option("--base", "base_path", required=True, help="base checkpoint")
@click.option("--model", "model_path", required=True, help="tamed checkpoint")
@click.option("--forget", required=True)
@click.option("--remember", required=True)
@click.option("--holdout")
@click.option("--remember-holdout")
@click.option("--unseen")
@click.option("--out", help="write the metrics as JSON here (else stdout)")
def evaluate_command(base_path: str, model_path: str, forget: str, remember: str, holdout: str | None,
                     remember_holdout: str | None, unseen: str | None, out: str | None) -> None:
    """Compare a tamed model with its base on image sets: quantiles, quantile drops, bpd, KS."""
    from taming.data import quantize
    from taming.evaluate import evaluate_sets

    base, tamed = _load_model(base_path), _load_model(model_path)
    size, channels, n_bits = base.config.img_size, base.config.in_channel, base.config.n_bits
    paths = {"forget": forget, "remember": remember, "forget_holdout": holdout,
             "remember_holdout": remember_holdout, "remember_unseen": unseen}
    sets = {k: quantize(load_set(v, size, channels).images, n_bits) for k, v in paths.items() if v}
    # σ_R under the tamed model is the unit of the bpd shifts; the remember set is measured once
    first = evaluate_sets(base, tamed, {"remember": sets["remember"]}, n_bits, sigma_r=1.0)
    sigma = float(first["reference"]["remember"]["tamed"]["sigma"])
    metrics = evaluate_sets(base, tamed, sets, n_bits, sigma_r=sigma, measured=first["bpd"])["metrics"]
    text = json.dumps(metrics, indent=2)
    if out:
        Path(out).write_text(text)
    else:
        click.echo(text)


@click.command("verify")
@click.option("--model", "model_path", required=True)
@click.option("--images", required=True, help="folder (or .npz) of images to check")
@click.option("--remember", required=True, help="the model's reference remember set")
@click.option("--delta", default=4.0, show_default=True, help="threshold t = mu_R + delta * sigma_R")
@click.option("--epsilon", type=float, help="tolerance on d  [default: 0.15·|delta|]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def verify_command(model_path: str, images: str, remember: str, delta: float, epsilon: float | None,
                   as_json: bool) -> None:
    """Is this person forgotten? Each image's quantile and d, and the verdict; exit 1 when not forgotten."""
    from taming.data import screen
    from taming.verify import check_images, remember_stats

    model = _load_model(model_path)
    size, channels, n_bits = model.config.img_size, model.config.in_channel, model.config.n_bits
    stats = remember_stats(model, load_set(remember, size, channels).images, n_bits)
    faces = load_set(images, size, channels)
    counted = [reason is None for reason in screen(faces.images)]  # as the service and a taming run count
    verdict = check_images(model, faces.images, faces.names, stats, n_bits, delta=delta, epsilon=epsilon,
                           counted=counted)
    if as_json:
        click.echo(json.dumps(verdict.to_dict()))
    else:
        for item in verdict.images:
            note = "" if item.counted else " (carries no identity: not counted)"
            click.echo(f"{item.name}: bpd {item.bpd:.4f}, quantile {item.quantile:.2e}, d {item.d:+.2f}, "
                       f"{'at or past' if item.reached else 'short of'} the threshold{note}")
        click.echo(verdict.summary)
    if not verdict.reached:
        sys.exit(1)


@click.command("import-rosinality")
@click.argument("state_dict")
@click.option("--args", "args_path", required=True, help="the args.json saved beside the state_dict")
@click.option("--out", required=True, help=".safetensors checkpoint to write")
def import_command(state_dict: str, args_path: str, out: str) -> None:
    """Convert a rosinality-style Glow state_dict (+ args.json) into the project's checkpoint format."""
    from taming.checkpoint import CheckpointError, import_rosinality, save_checkpoint

    try:
        model = import_rosinality(state_dict, args_path)
    except CheckpointError as exc:
        fail(str(exc))
    sha = save_checkpoint(model, out, data_hash="", parent="", source=Path(state_dict).name)
    click.echo(f"wrote {out} (sha256 {sha})")


def _library_commands() -> list[click.Command]:
    from taming.rebalance_cli import commands  # after this module's names exist: it uses fail and load_set

    return [train_command, tame_command, evaluate_command, sample_command, verify_command, import_command, *commands]


library_commands: list[click.Command] = _library_commands()
