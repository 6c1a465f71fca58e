"""Face image sets: loading from folders or .npz, square resizing, n-bit quantization, screening.

A folder is either `DIR/<identity>/*.png|jpg|jpeg|pgm` (the sub-folder names the identity) or a flat
folder of images (identity unknown). An .npz holds `images` ([N, H, W] or [N, H, W, C], uint8) and
optionally `identity` ([N]) and `image_index` ([N]).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from rules import images as images_rule

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm"}


class DataError(ValueError):
    """Input data that cannot be used; the message is one line a person can act on."""


@dataclass
class FaceSet:
    """Images as uint8 [N, C, S, S] with per-image identity (-1 when unknown), names and SHA-256s."""

    images: Tensor
    identity: np.ndarray
    names: list[str]
    sha256: list[str]
    image_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if len(self.image_index) != len(self.names):
            self.image_index = _index_within_identity(self.identity)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, mask: np.ndarray) -> FaceSet:
        """The images where the boolean or integer index `mask` selects."""
        idx = np.flatnonzero(mask) if mask.dtype == bool else mask
        return FaceSet(
            self.images[torch.from_numpy(idx)],
            self.identity[idx],
            [self.names[i] for i in idx],
            [self.sha256[i] for i in idx],
            self.image_index[idx],
        )

    def select(self, identities: list[int] | None = None, positions: slice | None = None) -> FaceSet:
        """Images of the given identities whose position within their identity lies in `positions`.

        Positions count from 0 in load order, so `positions=slice(0, 7)` is each person's first 7 images.
        """
        mask = np.ones(len(self), dtype=bool)
        if identities is not None:
            mask &= np.isin(self.identity, identities)
        if positions is not None:
            pos = np.arange(positions.stop or 10**9)[positions]
            mask &= np.isin(self.image_index, pos)
        return self.subset(mask)

    def data_hash(self) -> str:
        return hashlib.sha256(self.images.numpy().tobytes()).hexdigest()


def _index_within_identity(identity: np.ndarray) -> np.ndarray:
    out = np.zeros(len(identity), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, who in enumerate(identity.tolist()):
        out[i] = seen.get(who, 0)
        seen[who] = out[i] + 1
    return out


def to_square(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """The image as the model sees it (rules/images.py) -> uint8 [C, S, S]."""
    try:
        arr = np.asarray(images_rule.to_square(img, size, channels), dtype=np.uint8)
    except images_rule.UnfitImage as exc:
        raise DataError(str(exc)) from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_faces(path: str | Path, size: int, channels: int) -> FaceSet:
    """Load a folder or .npz as a FaceSet at size x size with the given number of channels."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix == ".npz":
        return _load_npz(path, size, channels)
    if path.is_file():
        raise DataError(f"{path}: expected a folder of images or an .npz file")
    return _load_folder(path, size, channels)


def _load_npz(path: Path, size: int, channels: int) -> FaceSet:
    try:
        data = np.load(path, allow_pickle=False)
        raw = data["images"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a readable .npz with an 'images' array ({exc})") from None
    if raw.ndim not in (3, 4) or raw.shape[0] == 0:
        raise DataError(f"{path}: 'images' must be [N, H, W] or [N, H, W, C] with N > 0, got {raw.shape}")
    raw = raw.astype(np.uint8)
    identity = data["identity"].astype(np.int64) if "identity" in data else np.full(len(raw), -1)
    index = data["image_index"].astype(np.int64) - 1 if "image_index" in data else np.zeros(0, dtype=np.int64)
    raw = raw[..., 0] if raw.ndim == 4 and raw.shape[3] == 1 else raw  # [N, H, W, 1] is grey
    arrays = [to_square(Image.fromarray(a), size, channels) for a in raw]
    names = [f"{path.name}[{i}]" for i in range(len(raw))]
    hashes = [hashlib.sha256(a.tobytes()).hexdigest() for a in raw]
    return FaceSet(torch.from_numpy(np.stack(arrays)), identity, names, hashes, index)


def _load_folder(path: Path, size: int, channels: int) -> FaceSet:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{path}: no .png, .jpg or .pgm images found")
    groups = sorted({f.parent for f in files})
    group_id = {g: (i if g != path else -1) for i, g in enumerate(groups)}
    arrays, identity, hashes = [], [], []
    for f in files:
        blob = f.read_bytes()
        try:
            with Image.open(f) as img:
                arrays.append(to_square(img, size, channels))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{f}: unreadable image ({exc.__class__.__name__})") from None
        except DataError as exc:
            raise DataError(f"{f}: {exc}") from None
        identity.append(group_id[f.parent])
        hashes.append(hashlib.sha256(blob).hexdigest())
    names = [str(f.relative_to(path)) for f in files]
    return FaceSet(torch.from_numpy(np.stack(arrays)), np.array(identity, dtype=np.int64), names, hashes)


def quantize(images: Tensor, n_bits: int) -> Tensor:
    """uint8 [N, C, H, W] -> float in [-0.5, 0.5): floor(x / 2^(8 - n_bits)) / 2^n_bits - 0.5."""
    bins = 2**n_bits
    return torch.floor(images.float() / 2 ** (8 - n_bits)) / bins - 0.5


def dequantize(x: Tensor, n_bits: int, generator: torch.Generator | None = None) -> Tensor:
    """Add uniform noise U(0, 1/2^n_bits) to quantized images."""
    noise = torch.rand(x.shape, generator=generator, device=x.device if generator is None else "cpu")
    return x + noise.to(x.device) / 2**n_bits


def to_uint8(x: Tensor) -> Tensor:
    """Model-space images in [-0.5, 0.5] -> uint8 [N, C, H, W] for display."""
    return ((x + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def screen(images: Tensor) -> list[str | None]:
    """Why each uint8 image [N, C, H, W] carries no identity (too dark, too flat; rules/images.py), or None."""
    flat = images.float().flatten(1)
    return [images_rule.reason_from(mean, std)
            for mean, std in zip(flat.mean(1).tolist(), flat.std(1).tolist(), strict=True)]
