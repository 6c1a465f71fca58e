"""The LFW splits of the many-identity reproduction (README, "Forgetting at scale: LFW").

LFW (../shared/data/lfwa_all_64.npz: 13,233 photos of 5,749 people, 64x64 grey) is read by path and never
copied into the repository. The split is fixed by a seed:

- unseen (D_R^id): 600 people with fewer than 10 photos, drawn at random, all their photos; never trained on;
- every other person is trained on; of each trained person with n >= 2 photos, the last min(10, max(1, n // 5))
  are held out (D'_F for the person being forgotten, "remember_holdout" for everyone else), the rest trained.

    python bench/lfw_sets.py --out var/lfw                      # train.npz, holdout.npz, unseen.npz
    python bench/lfw_sets.py --out var/lfw --person George_W_Bush   # + var/lfw/people/George_W_Bush/{forget,holdout}/

The person folders hold PNGs of the person's trained and held-out photos, as a user would upload them; the
pipeline takes the person out of train.npz and holdout.npz itself, by image match.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfwa_all_64.npz"
UNSEEN_PEOPLE = 600
SEED = 0


@dataclass
class Split:
    images: np.ndarray  # [N, 64, 64] uint8
    identity: np.ndarray  # [N]
    image_index: np.ndarray  # [N], 1-based within the person, as in LFW's file names
    names: dict[int, str]
    train: np.ndarray  # boolean masks over N
    holdout: np.ndarray
    unseen: np.ndarray


def load_split(path: Path = LFW, unseen_people: int = UNSEEN_PEOPLE, seed: int = SEED) -> Split:
    data = np.load(path)
    images, identity = data["images"], data["identity"].astype(np.int64)
    index, count = data["image_index"].astype(np.int64), data["identity_count"].astype(np.int64)
    names_csv = path.with_name(path.stem + "_names.csv")
    with names_csv.open() as f:
        names = {int(row["identity"]): row["name"] for row in csv.DictReader(f)}
    rng = np.random.default_rng(seed)
    few = np.unique(identity[count < 10])
    unseen_ids = rng.choice(few, size=min(unseen_people, len(few)), replace=False)
    unseen = np.isin(identity, unseen_ids)
    # position of each photo within its person, in LFW order, and how many are held out
    order = np.zeros(len(identity), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, who in enumerate(identity.tolist()):
        order[i] = seen.get(who, 0)
        seen[who] = order[i] + 1
    held = np.where(count >= 2, np.minimum(10, np.maximum(1, count // 5)), 0)
    holdout = ~unseen & (order >= count - held)
    return Split(images, identity, index, names, ~unseen & ~holdout, holdout, unseen)


def person_id(split: Split, name: str) -> int:
    matches = [i for i, n in split.names.items() if n == name]
    if not matches:
        raise SystemExit(f"no LFW person named {name!r} (names as in lfwa_all_64_names.csv, e.g. George_W_Bush)")
    return matches[0]


def save_npz(path: Path, split: Split, mask: np.ndarray) -> None:
    np.savez(path, images=split.images[mask], identity=split.identity[mask], image_index=split.image_index[mask])


def save_pngs(folder: Path, split: Split, mask: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for img, who, idx in zip(split.images[mask], split.identity[mask], split.image_index[mask], strict=True):
        Image.fromarray(img).save(folder / f"{split.names[int(who)]}_{int(idx):04d}.png")


def write_sets(split: Split, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, mask in (("train", split.train), ("holdout", split.holdout), ("unseen", split.unseen)):
        save_npz(out / f"{name}.npz", split, mask)
    trained_people = len(np.unique(split.identity[split.train]))
    print(f"wrote {out}: train {int(split.train.sum())} photos of {trained_people} people, "
          f"holdout {int(split.holdout.sum())}, unseen {int(split.unseen.sum())} photos of "
          f"{len(np.unique(split.identity[split.unseen]))} people")


def write_person(split: Split, out: Path, name: str) -> Path:
    who = person_id(split, name)
    if split.unseen[split.identity == who].any():
        raise SystemExit(f"{name} is in the unseen group: the base model never trained on them")
    folder = out / "people" / name
    save_pngs(folder / "forget", split, split.train & (split.identity == who))
    save_pngs(folder / "holdout", split, split.holdout & (split.identity == who))
    n_f, n_h = int((split.train & (split.identity == who)).sum()), int((split.holdout & (split.identity == who)).sum())
    print(f"wrote {folder}: forget {n_f} photos, holdout {n_h}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "lfw")
    parser.add_argument("--person", action="append", default=[], help="also write this person's folders")
    args = parser.parse_args()
    split = load_split(args.lfw)
    if not (args.out / "train.npz").exists():
        write_sets(split, args.out)
    for name in args.person:
        write_person(split, args.out, name)


if __name__ == "__main__":
    main()
