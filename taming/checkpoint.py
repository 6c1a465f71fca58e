"""Checkpoints: the project's safetensors format, and import of rosinality-style state_dicts.

A checkpoint is a safetensors file (never pickle) whose metadata holds the Glow architecture, n_bits,
image size, channels, the training data hash and the parent checkpoint's SHA-256 (DESIGN.md section 5).
`tensors_sha256` in the metadata lets `load_checkpoint` detect a corrupted file on its own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from taming.glow import Glow, GlowConfig

FORMAT = "taming-glow/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(model: Glow, path: str | Path, **metadata: str) -> str:
    """Write `model` with its config and `metadata` (data_hash, parent, ...); return the file's SHA-256."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict()), "tensors_sha256": tensors_sha256(state)}
    meta.update({k: str(v) for k, v in metadata.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return file_sha256(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from None


def load_checkpoint(path: str | Path, expected_sha256: str | None = None) -> tuple[Glow, dict[str, str]]:
    """Load a project checkpoint; verify the file's SHA-256 when given and the tensors' always."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise CheckpointError(f"{path}: SHA-256 differs from the expected {expected_sha256[:12]}…")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (use import-rosinality for state_dicts)")
    state = load_file(str(path))
    if tensors_sha256(state) != meta.get("tensors_sha256"):
        raise CheckpointError(f"{path}: tensors do not match their recorded SHA-256 (corrupted file)")
    model = Glow(GlowConfig(**json.loads(meta["config"])))
    _load_strict(model, state, str(path))
    return model.eval(), meta


def _load_strict(model: Glow, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: keys do not match the Glow in args: missing {_some(missing)}; unexpected {_some(unexpected)}"
        )
    wrong = [f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}" for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{source}: shapes do not match the Glow in args: {_some(wrong)}")
    model.load_state_dict(state, strict=True)


def _some(items: list[str], n: int = 5) -> str:
    if not items:
        return "none"
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def config_from_rosinality_args(args: dict[str, Any], state: dict[str, torch.Tensor]) -> GlowConfig:
    """rosinality's train.py arguments (+ what the state_dict itself tells) -> GlowConfig."""
    try:
        hidden = state["blocks.0.flows.0.coupling.net.0.weight"].shape[0]
        in_channel = state["blocks.0.flows.0.actnorm.loc"].shape[1] // 4
        return GlowConfig(
            in_channel=int(in_channel),
            img_size=int(args.get("img_size", 64)),
            n_flow=int(args.get("n_flow", 32)),
            n_block=int(args.get("n_block", 4)),
            hidden=int(hidden),
            affine=bool(args.get("affine", False)),
            conv_lu=not bool(args.get("no_lu", False)),
            n_bits=int(args.get("n_bits", 5)),
        )
    except KeyError as exc:
        raise CheckpointError(f"state_dict lacks {exc}: not a Glow state_dict") from None


def import_rosinality(state_dict_path: str | Path, args_path: str | Path) -> Glow:
    """Load a rosinality-style state_dict (optionally `module.`-prefixed) with strict key checking."""
    try:
        raw = torch.load(str(state_dict_path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or hostile file
        raise CheckpointError(f"{state_dict_path}: not a loadable state_dict ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{state_dict_path}: expected a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    try:
        args = json.loads(Path(args_path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{args_path}: not a readable args.json ({exc})") from None
    model = Glow(config_from_rosinality_args(args, state))
    _load_strict(model, state, str(state_dict_path))
    return model.eval()
