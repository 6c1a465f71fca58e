"""The project's own small feature networks (no pretrained ImageNet network can be downloaded here).

- `Embedder`: a small CNN trained as an identity classifier on the base model's training identities; its
  L2-normalised 64-d embedding is the face-embedding space (nearest identities, D_R^NN) and the feature
  space of the Fréchet distance. Without identities, `PixelPCA` (64 principal components of pixels) takes
  its place. Both expose `.name` (written in the report) and `.embed(images_u8) -> [N, D]`.

The attribute classifier of a rebalance shares the backbone and lives in taming/attribute.py.

Every network works on 32x32 inputs (images are resized first): identity and attributes survive at that
size, and it keeps training under seconds on a laptop CPU whatever the model's image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT_SIZE = 32
EMBED_DIM = 64


class FeatureSpace(Protocol):
    """A named map from uint8 images [N, C, S, S] to features [N, D]."""

    name: str

    def embed(self, images_u8: Tensor) -> Tensor: ...


def _prepare(images: Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 [N, C, S, S] or model-space float in [-0.5, 0.5] -> float [N, C, 32, 32] in [-0.5, 0.5]."""
    x = images.to(device)
    x = x.float() / 255.0 - 0.5 if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != INPUT_SIZE or x.shape[-2] != INPUT_SIZE:
        mode = "area" if x.shape[-1] > INPUT_SIZE else "bilinear"
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode=mode)
    return x


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random shifts of up to 2 pixels and horizontal flips, one affine resampling for the whole batch."""
    n = x.shape[0]
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2.0 * 2 / x.shape[-1])  # grid units: 2 px
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = flip, 1.0, shift
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _backbone(in_channel: int, width: int) -> nn.Sequential:
    """Conv stages 32 -> 16 -> 8 -> 4 pixels and global average pooling: [N, C, 32, 32] -> [N, 2w].

    Strided convolutions after the first stage keep the cost near 0.6 M multiply-adds per image at w = 16,
    which is what lets training finish in seconds on two CPU cores.
    """
    return nn.Sequential(
        nn.Conv2d(in_channel, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class Embedder(nn.Module):
    """Identity CNN: images [N, C, S, S] -> L2-normalised embeddings [N, 64]."""

    name = "identity-cnn-64"

    def __init__(self, in_channel: int, width: int = 32, name: str | None = None):
        super().__init__()
        self.in_channel, self.width = in_channel, width
        if name is not None:
            self.name = name
        self.net = _backbone(in_channel, width)
        self.proj = nn.Linear(2 * width, EMBED_DIM)

    def forward(self, x: Tensor) -> Tensor:
        # x: model-space [N, C, 32, 32] -> [N, 64], unit norm
        return F.normalize(self.proj(self.net(x)), dim=1)

    @torch.no_grad()
    def embed(self, images_u8: Tensor, batch_size: int = 512) -> Tensor:
        """uint8 (or model-space) images [N, C, S, S] -> [N, 64] on the CPU."""
        self.eval()
        device = next(self.parameters()).device
        out = [
            self(_prepare(images_u8[i : i + batch_size], device)).cpu() for i in range(0, len(images_u8), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, EMBED_DIM)


def _known_identities(identity: np.ndarray, min_images: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(indices of images of identities known and with at least `min_images` images, labels remapped to 0..K-1)."""
    identity = np.asarray(identity)
    values, counts = np.unique(identity[identity >= 0], return_counts=True)
    keep = np.flatnonzero(np.isin(identity, values[counts >= min_images]))
    _, labels = np.unique(identity[keep], return_inverse=True)
    return keep, labels


def train_embedder(
    images_u8: Tensor,
    identity: np.ndarray,
    seed: int = 0,
    steps: int = 300,
    batch_size: int = 64,
    device: str = "cpu",
    name: str = "identity-cnn-64",
    min_images: int = 1,
) -> Embedder:
    """Train an identity classifier on images [N, C, S, S] with identity [N] (-1: unknown, left out), on the
    identities with at least `min_images` images.

    The head is a cosine classifier (normalised weights, fixed scale): it makes classes separate by angle,
    which is what the cosine nearest-identity search and the normalised embedding need. ~300 steps of
    batch 64 take a few seconds on 2 CPU cores.
    """
    keep, labels = _known_identities(identity, min_images)
    if labels.max(initial=-1) < 1:
        raise ValueError("training an identity embedder needs images of at least 2 known identities")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Embedder(images_u8.shape[1], name=name).to(device)
    head = nn.Parameter(torch.randn(int(labels.max()) + 1, EMBED_DIM, device=device) * 0.1)
    opt = torch.optim.Adam([*model.parameters(), head], lr=3e-3)
    x_all = _prepare(images_u8[torch.from_numpy(keep)], device)
    y_all = torch.from_numpy(labels).to(device)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x_all), (min(batch_size, len(x_all)),), generator=gen).to(device)
        logits = 16.0 * model(_augment(x_all[idx], gen)) @ F.normalize(head, dim=1).T
        loss = F.cross_entropy(logits, y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


class PixelPCA:
    """Principal components of pixels (at 32x32): the feature space when no identities are known."""

    def __init__(self, mean: Tensor, components: Tensor, name: str = "pixel-pca-64"):
        self.mean = mean  # [P]
        self.components = components  # [D, P], orthonormal rows
        self.name = name

    @classmethod
    def fit(cls, images_u8: Tensor, n_components: int = EMBED_DIM) -> PixelPCA:
        """Fit on uint8 images [N, C, S, S] -> at most min(n_components, N) components."""
        flat = _prepare(images_u8).flatten(1).double()
        mean = flat.mean(0)
        _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        k = min(n_components, vh.shape[0])
        return cls(mean.float(), vh[:k].float().contiguous(), name=f"pixel-pca-{n_components}")

    def embed(self, images_u8: Tensor) -> Tensor:
        """uint8 (or model-space) images [N, C, S, S] -> [N, D]."""
        return (_prepare(images_u8).flatten(1) - self.mean) @ self.components.T


def feature_space(images_u8: Tensor, identity: np.ndarray, seed: int = 0, steps: int = 300,
                  epochs: int = 8, max_steps: int = 2000) -> Embedder | PixelPCA:
    """The identity CNN when at least two identities are known, otherwise PCA of pixels.

    images_u8 [N, C, S, S], identity [N] (-1 where unknown): the base model's training images. Identities with a
    single image teach no invariance, so they are left out when at least two identities have two images or more
    (LFW: 4,069 of its 5,749 people have one photo); the network trains for `epochs` passes over what is left,
    at least `steps` and at most `max_steps` steps of 64.
    """
    min_images = 2 if _known_identities(identity, 2)[1].max(initial=-1) >= 1 else 1
    keep, labels = _known_identities(identity, min_images)
    if labels.max(initial=-1) >= 1:
        n_steps = int(np.clip(epochs * len(keep) // 64, steps, max_steps))
        return train_embedder(images_u8, identity, seed=seed, steps=n_steps, min_images=min_images)
    return PixelPCA.fit(images_u8)


def save_embedder(space: Embedder | PixelPCA, path: str | Path) -> None:
    """Write a feature space to a safetensors file, its kind and name in the metadata."""
    from safetensors.torch import save_file

    if isinstance(space, Embedder):
        tensors = {k: v.detach().cpu().contiguous() for k, v in space.state_dict().items()}
        meta = {"kind": "embedder", "in_channel": str(space.in_channel), "width": str(space.width)}
    else:
        tensors = {"mean": space.mean.contiguous(), "components": space.components.contiguous()}
        meta = {"kind": "pixel-pca"}
    save_file(tensors, str(path), metadata={**meta, "name": space.name})


def load_embedder(path: str | Path) -> Embedder | PixelPCA:
    """Read a feature space written by `save_embedder`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    if meta.get("kind") == "pixel-pca":
        return PixelPCA(tensors["mean"], tensors["components"], name=meta["name"])
    if meta.get("kind") != "embedder":
        raise ValueError(f"{path}: not a feature space written by save_embedder")
    model = Embedder(int(meta["in_channel"]), int(meta["width"]), name=meta["name"])
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def nearest_identities(
    embedder: FeatureSpace,
    forget_u8: Tensor,
    remember_u8: Tensor,
    remember_identity: np.ndarray,
    k: int = 5,
    exclude: Sequence[int] = (),
) -> list[int]:
    """The k identities of the remember set whose mean embedding is nearest (cosine) to the forget images'.

    forget_u8 [K, C, S, S], remember_u8 [N, C, S, S], remember_identity [N] (-1 and `exclude` skipped).
    Returns identity labels, nearest first.
    """
    target = F.normalize(embedder.embed(forget_u8).mean(0), dim=0)
    feats = embedder.embed(remember_u8)
    identity = np.asarray(remember_identity)
    candidates = [int(i) for i in np.unique(identity) if i >= 0 and int(i) not in set(exclude)]
    sims = [float(F.normalize(feats[torch.from_numpy(identity == c)].mean(0), dim=0) @ target) for c in candidates]
    order = np.argsort(-np.asarray(sims), kind="stable")
    return [candidates[i] for i in order[:k]]
