"""The AT&T faces with their eyeglasses labels as one .npz (`images`, `identity`, `image_index`, `label`), the
`--data` of `taming classifier train` and `taming rebalance` (README, "Rebalancing an attribute").

    .venv/bin/python bench/att_eyeglasses.py --out var/att_glasses.npz
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def labelled(faces: Path, labels: Path) -> dict[str, np.ndarray]:
    """The faces' arrays with `label` (1: eyeglasses) in the same order; the CSV numbers images from 1."""
    data = dict(np.load(faces))
    with open(labels) as f:
        glasses = {(int(r["identity"]), int(r["image_index"])): r["eyeglasses"] == "1" for r in csv.DictReader(f)}
    data["label"] = np.array([glasses[(int(i), int(j))] for i, j in zip(data["identity"], data["image_index"],
                                                                        strict=True)], dtype=np.uint8)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=ROOT / "data/att_faces.npz")
    parser.add_argument("--labels", type=Path, default=ROOT / "data/att_faces_eyeglasses.csv")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = labelled(args.faces, args.labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(f"wrote {args.out}: {len(data['label'])} images, {int(data['label'].sum())} with eyeglasses")


if __name__ == "__main__":
    main()
