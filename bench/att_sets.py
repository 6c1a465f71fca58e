"""The AT&T splits of the shipped model (README): identities 0-34 images 1-7 trained, 8-10 held out, 35-39 unseen.

Imported by the reproduction scripts in bench/ and by the shipped-model test; not part of the library.
"""

from __future__ import annotations

from pathlib import Path

from taming.data import FaceSet, load_faces

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "att_faces.npz"
MODEL = ROOT / "models" / "att32" / "base.safetensors"
TRAINED = list(range(35))
UNSEEN = list(range(35, 40))


def att_sets(person: int, size: int = 32, channels: int = 1) -> dict[str, FaceSet]:
    """D_F, D'_F, D_R, remember_holdout and D_R^id for forgetting one trained identity.

    "trained" is the model's whole training set, as the service holds it: the pipeline leaves the
    person's images out of it itself (what remains is "remember").
    """
    faces = load_faces(DATA, size, channels)
    others = [i for i in TRAINED if i != person]
    return {
        "forget": faces.select([person], slice(0, 7)),
        "holdout": faces.select([person], slice(7, 10)),
        "remember": faces.select(others, slice(0, 7)),
        "trained": faces.select(TRAINED, slice(0, 7)),
        "remember_holdout": faces.select(others, slice(7, 10)),
        "unseen": faces.select(UNSEEN),
    }
