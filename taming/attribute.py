"""The attribute classifier of a rebalance (DESIGN.md section 4, "Rebalancing an attribute").

A small ensemble of binary CNNs on 32x32 inputs (the feature networks' backbone, taming.features), trained from
images with and without the attribute. Its accuracy is measured **by person**: grouped k-fold cross-validation in
which no person has images on both sides of a split, because a classifier that has seen a person's other photos
can recognise the person instead of the attribute (on AT&T a person wears glasses in most or none of their
photos). The out-of-fold sensitivity and specificity are what corrects the share among samples (taming.share).

Saved as safetensors; the measured figures go in the metadata (`accuracy`, `sensitivity`, `specificity` and the
counts behind them), so that the service can read them from the header without torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taming.data import DataError, FaceSet, load_faces
from taming.features import _augment, _backbone, _prepare
from taming.share import ErrorRates

FORMAT = "taming-attribute/1"
MIN_ACCURACY = 0.75  # below this by-person accuracy a classifier is refused (the share it gives means little)


class AttributeClassifier(nn.Module):
    """Binary attribute CNN: images [N, C, S, S] -> logit [N]; `share` gives the fraction predicted positive.

    rows: only these rows of the 32x32 input are looked at (e.g. the eye band for eyeglasses), so that the network
    cannot lean on hair, beard or age, which tell people apart rather than the attribute. pool "max": the strongest
    local response anywhere (an attribute is a local thing), "avg": the feature networks' average pooling.
    """

    def __init__(self, in_channel: int, width: int = 16, rows: tuple[int, int] | None = None, pool: str = "max",
                 net: str = "small"):
        super().__init__()
        if pool not in ("max", "avg") or net not in ("small", "fine"):
            raise ValueError(f"pool is 'max' or 'avg' ({pool!r}), net 'small' or 'fine' ({net!r})")
        self.in_channel, self.width, self.rows, self.pool, self.kind = in_channel, width, rows, pool, net
        # "fine" keeps full resolution for two convolutions and halves it once: thin frames survive
        self.net = _backbone(in_channel, width)[:-2] if net == "small" else _fine(in_channel, width)
        self.head = nn.Linear(2 * width, 1)

    def forward(self, x: Tensor) -> Tensor:
        # x: model-space [N, C, 32, 32] -> logits [N]
        if self.rows is not None:
            x = x[:, :, self.rows[0] : self.rows[1]]
        h = self.net(x)
        return self.head(h.amax((2, 3)) if self.pool == "max" else h.mean((2, 3))).squeeze(1)

    @torch.no_grad()
    def probability(self, images: Tensor) -> Tensor:
        """uint8 or model-space ([-0.5, 0.5]) images [N, C, S, S] -> P(attribute) [N] on the CPU."""
        self.eval()
        device = next(self.parameters()).device
        return torch.sigmoid(self(_prepare(images, device))).cpu()

    def share(self, images: Tensor) -> float:
        """Fraction of images [N, C, S, S] (uint8, or model-space floats as `Glow.sample` returns) predicted
        to carry the attribute."""
        return float((self.probability(images) > 0.5).float().mean()) if len(images) else math.nan


def _fine(in_channel: int, width: int) -> nn.Sequential:
    """Two 3x3 convolutions at full resolution, 2x2 max pooling, two more: [N, C, H, W] -> [N, 2w, H/2, W/2]."""
    return nn.Sequential(
        nn.Conv2d(in_channel, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
    )


def _photometric(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random brightness and contrast per image (AT&T's lighting varies; samples come out smoother)."""
    n = x.shape[0]
    gain = (1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.2).to(x.device)
    bias = ((torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.08).to(x.device)
    return ((x - x.mean((1, 2, 3), keepdim=True)) * gain + x.mean((1, 2, 3), keepdim=True) + bias).clamp(-0.5, 0.5)


def train_attribute_classifier(
    positive_u8: Tensor, negative_u8: Tensor, seed: int = 0, steps: int = 300, batch_size: int = 64,
    device: str = "cpu", width: int = 16, photometric: bool = False, rows: tuple[int, int] | None = None,
    pool: str = "max", net: str = "small",
) -> AttributeClassifier:
    """Train on images with [P, C, S, S] and without [Q, C, S, S] the attribute.

    The loss weighs each class by the inverse of its size, so a rare attribute is not predicted away. Shifts and
    flips always augment; `photometric` adds brightness/contrast jitter.
    """
    if len(positive_u8) == 0 or len(negative_u8) == 0:
        raise ValueError("an attribute classifier needs images with and without the attribute")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all = _prepare(torch.cat([positive_u8, negative_u8]), device)
    y_all = torch.cat([torch.ones(len(positive_u8)), torch.zeros(len(negative_u8))]).to(device)
    weight_pos, weight_neg = len(x_all) / (2 * len(positive_u8)), len(x_all) / (2 * len(negative_u8))
    model = AttributeClassifier(positive_u8.shape[1], width, rows, pool, net).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x_all), (min(batch_size, len(x_all)),), generator=gen).to(device)
        y = y_all[idx]
        weight = torch.where(y > 0.5, weight_pos, weight_neg)
        x = _augment(x_all[idx], gen)
        x = _photometric(x, gen) if photometric else x
        loss = F.binary_cross_entropy_with_logits(model(x), y, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@dataclass(frozen=True)
class Recipe:
    """How each member of the ensemble trains, and how many members there are."""

    members: int = 3
    steps: int = 1000
    width: int = 16
    photometric: bool = True
    folds: int = 5
    seed: int = 0
    rows: tuple[int, int] | None = None  # of the 32x32 input; None: all of it
    pool: str = "max"
    net: str = "fine"


@dataclass(frozen=True)
class Accuracy:
    """Out-of-fold figures of grouped cross-validation: no person on both sides of any split."""

    accuracy: float
    balanced_accuracy: float
    sensitivity: float  # P(predicted positive | positive)
    specificity: float  # P(predicted negative | negative)
    true_positive: int
    false_negative: int
    true_negative: int
    false_positive: int
    folds: int
    people: int
    grouping: str  # "person", or "image" when no identities were given

    @property
    def n_positive(self) -> int:
        return self.true_positive + self.false_negative

    @property
    def n_negative(self) -> int:
        return self.true_negative + self.false_positive

    def error_rates(self) -> ErrorRates:
        """What corrects an observed share (taming.share)."""
        return ErrorRates(self.sensitivity, self.specificity, self.n_positive, self.n_negative)

    @classmethod
    def of(cls, predicted: np.ndarray, labels: np.ndarray, folds: int, people: int, grouping: str) -> Accuracy:
        """From out-of-fold predictions (bool [N]) and labels (bool [N])."""
        tp, fn = int((predicted & labels).sum()), int((~predicted & labels).sum())
        tn, fp = int((~predicted & ~labels).sum()), int((predicted & ~labels).sum())
        sens, spec = tp / max(1, tp + fn), tn / max(1, tn + fp)
        return cls((tp + tn) / max(1, len(labels)), (sens + spec) / 2, sens, spec, tp, fn, tn, fp, folds, people,
                   grouping)


class Ensemble:
    """Members' probabilities averaged; the measured by-person accuracy travels with it."""

    def __init__(self, members: list[AttributeClassifier], accuracy: Accuracy | None, recipe: Recipe,
                 name: str = "attribute"):
        self.members, self.accuracy, self.recipe, self.name = members, accuracy, recipe, name

    def probability(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """uint8 or model-space images [N, C, S, S] -> mean P(attribute) over the members [N]."""
        chunks = [torch.stack([m.probability(images[i : i + batch_size]) for m in self.members]).mean(0)
                  for i in range(0, len(images), batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0)

    def predict(self, images: Tensor) -> Tensor:
        """bool [N]: predicted to carry the attribute."""
        return self.probability(images) > 0.5

    def share(self, images: Tensor) -> float:
        """Observed (uncorrected) fraction of images predicted positive."""
        return float(self.predict(images).float().mean()) if len(images) else math.nan

    def usable(self, minimum: float = MIN_ACCURACY) -> bool:
        """Whether the by-person accuracy was measured and reaches `minimum`."""
        return self.accuracy is not None and self.accuracy.accuracy >= minimum


def train_ensemble(positive_u8: Tensor, negative_u8: Tensor, recipe: Recipe, device: str = "cpu",
                   seed_offset: int = 0) -> list[AttributeClassifier]:
    """`recipe.members` classifiers, each from its own seed."""
    return [train_attribute_classifier(positive_u8, negative_u8, seed=recipe.seed + seed_offset + k,
                                       steps=recipe.steps, width=recipe.width, photometric=recipe.photometric,
                                       rows=recipe.rows, pool=recipe.pool, net=recipe.net, device=device)
            for k in range(recipe.members)]


def person_keys(faces: FaceSet) -> list[str | None]:
    """Who is in each image: the npz identity, or a folder image's first path part; None when unknown."""
    keys: list[str | None] = []
    for name, who in zip(faces.names, faces.identity.tolist(), strict=True):
        if "/" in name:
            keys.append("dir:" + name.split("/")[0])
        else:
            keys.append(f"id:{who}" if who >= 0 else None)
    return keys


def grouped_folds(groups: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Fold number per image [N] -> the test indices of each fold; whole groups go to one fold.

    Groups are dealt largest first to the fold holding the fewest images so far (folds of even size)."""
    values, counts = np.unique(groups, return_counts=True)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(values)), -counts))
    sizes = np.zeros(folds)
    members: list[list[int]] = [[] for _ in range(folds)]
    for g in order:
        f = int(np.argmin(sizes))
        members[f].append(int(values[g]))
        sizes[f] += counts[g]
    return [np.flatnonzero(np.isin(groups, m)) for m in members if m]


def cross_validate(positive: FaceSet, negative: FaceSet, recipe: Recipe, device: str = "cpu") -> Accuracy:
    """Grouped k-fold accuracy of the recipe's ensemble (people never on both sides of a split)."""
    images = torch.cat([positive.images, negative.images])
    labels = np.r_[np.ones(len(positive), bool), np.zeros(len(negative), bool)]
    keys = person_keys(positive) + person_keys(negative)
    grouping = "person" if all(k is not None for k in keys) else "image"
    names = keys if grouping == "person" else [f"img:{i}" for i in range(len(keys))]
    _, groups = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True)
    predicted = np.zeros(len(labels), bool)
    folds = grouped_folds(groups, recipe.folds, recipe.seed)
    for f, test in enumerate(folds):
        train = np.setdiff1d(np.arange(len(labels)), test)
        pos, neg = images[train[labels[train]]], images[train[~labels[train]]]
        if len(pos) == 0 or len(neg) == 0:
            raise DataError("cross-validation needs images with and without the attribute outside every fold; "
                            "give more people")
        members = train_ensemble(pos, neg, recipe, device, seed_offset=100 * (f + 1))
        predicted[test] = Ensemble(members, None, recipe).predict(images[test]).numpy()
    return Accuracy.of(predicted, labels, len(folds), int(groups.max()) + 1, grouping)


def fit_classifier(positive: FaceSet, negative: FaceSet, recipe: Recipe = Recipe(), device: str = "cpu",
                   name: str = "attribute") -> Ensemble:
    """Measure the recipe by person (cross-validation), then train the ensemble on every image."""
    if len(positive) == 0 or len(negative) == 0:
        raise DataError("an attribute classifier needs images with and without the attribute")
    accuracy = cross_validate(positive, negative, recipe, device) if recipe.folds >= 2 else None
    members = train_ensemble(positive.images, negative.images, recipe, device)
    return Ensemble(members, accuracy, recipe, name)


def save_classifier(model: Ensemble, path: str | Path) -> None:
    """Write the ensemble to a safetensors file; its recipe and measured accuracy in the metadata."""
    from safetensors.torch import save_file

    tensors = {f"member{k}.{n}": t.detach().cpu().contiguous()
               for k, m in enumerate(model.members) for n, t in m.state_dict().items()}
    first = model.members[0]
    meta = {"format": FORMAT, "name": model.name, "members": str(len(model.members)),
            "in_channel": str(first.in_channel), "width": str(first.width), "recipe": json.dumps(asdict(model.recipe))}
    if model.accuracy is not None:
        meta["accuracy_json"] = json.dumps(asdict(model.accuracy))
        meta.update({k: f"{getattr(model.accuracy, k):.6f}" for k in ("accuracy", "sensitivity", "specificity")})
    save_file(tensors, str(path), metadata=meta)


def load_classifier(path: str | Path) -> Ensemble:
    """Read an ensemble written by `save_classifier`; ValueError when it is not one."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an attribute classifier written by save_classifier")
    raw = json.loads(meta["recipe"])
    recipe = Recipe(**{**raw, "rows": tuple(raw["rows"]) if raw.get("rows") else None})
    members = []
    for k in range(int(meta["members"])):
        m = AttributeClassifier(int(meta["in_channel"]), int(meta["width"]), recipe.rows, recipe.pool, recipe.net)
        prefix = f"member{k}."
        m.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}, strict=True)
        members.append(m.eval())
    accuracy = Accuracy(**json.loads(meta["accuracy_json"])) if "accuracy_json" in meta else None
    return Ensemble(members, accuracy, recipe, meta.get("name", "attribute"))


def load_labelled(path: str | Path, size: int, channels: int,
                  label_key: str = "label") -> tuple[FaceSet, FaceSet]:
    """(positive, negative) from a folder holding positive/ and negative/, or an .npz with a label array."""
    path = Path(path)
    if path.is_dir():
        if not (path / "positive").is_dir() or not (path / "negative").is_dir():
            raise DataError(f"{path}: expected the folders positive/ and negative/ inside")
        return load_faces(path / "positive", size, channels), load_faces(path / "negative", size, channels)
    faces = load_faces(path, size, channels)
    with np.load(path, allow_pickle=False) as data:
        if label_key not in data:
            raise DataError(f"{path}: no {label_key!r} array (1 = has the attribute, 0 = not)")
        labels = np.asarray(data[label_key]).astype(bool)
    if len(labels) != len(faces):
        raise DataError(f"{path}: {len(labels)} labels for {len(faces)} images")
    return faces.subset(labels), faces.subset(~labels)
