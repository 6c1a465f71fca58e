"""A user's own dataset under mixed lighting: train and tame through the command line, every setting default.

The AT&T faces are relit from 33 directions (azimuth 0 to ±120°, elevation −20° to +35°) over a crude
ellipsoid face shape, six random directions per photo, and each person gets one ambient-only shot (the
light off, as in the Yale B faces): 2,440 full-size PGM files of 40 people with the mixed lighting, dark
photos and nearly black shots that DESIGN.md section 4, step 9 is about. Images 1-8 go to `train/<person>/`,
images 9-10 to `holdout/<person>/`, the forgotten person's images also to `forget/` and `forget_holdout/`.
Then, as a user would run them:

    taming train train/ --out base.safetensors
    taming tame --model base.safetensors --forget forget/ --holdout forget_holdout/ --remember train/ \
        --remember-holdout holdout/ --out tamed.safetensors --report report.json

and prints the figures of the report. The lighting is synthetic: a stand-in for a second face dataset.

    .venv/bin/python bench/mixed_lighting.py [--people 5 22] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "data" / "att_faces.npz"
TAMING = [sys.executable, "-m", "console"]
AMBIENT_ONLY = 0.04  # what is left of a photo with the light off
LIGHTS = [(a, e) for a in (0, 20, -20, 45, -45, 70, -70, 95, -95, 120, -120) for e in (0, 35, -20)]


def _normals(h: int, w: int) -> np.ndarray:
    """Unit normals [3, H, W] of an ellipsoid filling the face; the background faces the camera."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    nx, ny = (xx - w / 2) / (0.46 * w), (yy - 0.52 * h) / (0.5 * h)
    inside = nx**2 + ny**2 < 1
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, None))
    return np.stack([np.where(inside, nx, 0), np.where(inside, ny, 0), np.where(inside, nz, 1)])


def relight(image: np.ndarray, normals: np.ndarray, azimuth: float, elevation: float, ambient: float) -> np.ndarray:
    """uint8 [H, W] lit by a distant light (degrees) plus `ambient` -> uint8 [H, W]."""
    a, e = np.radians(azimuth), np.radians(elevation)
    light = np.array([np.sin(a) * np.cos(e), -np.sin(e), np.cos(a) * np.cos(e)])
    shade = ambient + (1 - ambient) * np.clip(np.tensordot(light, normals, axes=1), 0, None)
    return np.clip(image * shade * 1.15, 0, 255).astype(np.uint8)


def write_folders(root: Path, people: list[int], per_photo: int = 6, seed: int = 0) -> None:
    """The relit AT&T faces as train/, holdout/ and, for each forgotten person p, p/forget{,_holdout}/."""
    data = np.load(FACES)
    normals = _normals(*data["images"].shape[1:])
    rng = np.random.default_rng(seed)
    for image, who, k in zip(data["images"], data["identity"], data["image_index"], strict=True):
        split = "train" if k <= 8 else "holdout"
        folders = [root / split / f"s{who:02d}"]
        if who in people:
            folders.append(root / f"person{who}" / ("forget" if split == "train" else "forget_holdout"))
        shots = {}
        for i in rng.choice(len(LIGHTS), per_photo, replace=False):
            azimuth, elevation = LIGHTS[i]
            lit = relight(image.astype(np.float64), normals, azimuth, elevation, ambient=0.12)
            shots[f"s{who:02d}_{k:02d}_A{azimuth:+04d}E{elevation:+03d}.pgm"] = lit
        if k == 1:  # the ambient-only shot: the light off, a nearly black photo
            shots[f"s{who:02d}_{k:02d}_A+000E+00_ambient.pgm"] = (image * AMBIENT_ONLY).astype(np.uint8)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            for name, lit in shots.items():
                Image.fromarray(lit).save(folder / name)


def _run(args: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> float:
    """Seconds the `taming` command took; its output goes to `log`."""
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run([*TAMING, *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code not in ok:
        sys.exit(f"taming {args[0]} failed with exit status {code}; see {log}")
    return time.perf_counter() - started


def summarise(report: dict, seconds: float) -> str:
    """The report's figures a user checks, as a few lines."""
    forget = report["inputs"]["forget"]
    kept = [f for f in forget if not f["excluded"]]
    d = [f["d"] for f in kept]
    m, stop = report["metrics"], report["stopping"]
    shift, q = m["bpd_shift_sigma"], m["mean_quantile"]
    lines = [
        f"  met and confirmed {stop['criterion_met']} after {stop['iterations']} iterations ({seconds:.0f} s): "
        f"{stop['reason']}",
        f"  D_F: {len(kept)} of {len(forget)} images kept; d on fresh statistics {min(d):+.2f} to {max(d):+.2f}; "
        f"q(D_F) {q['forget']['before']:.2f} -> {q['forget']['after']:.1e}",
    ]
    lines += [f"  left out: {f['name']}: {f['reason']}" for f in forget if f["excluded"]]
    lines += [
        f"  held-out photos: the person's {shift['forget_holdout']:+.2f} sigma_R, other people's "
        f"{shift['remember_holdout']:+.2f}",
        f"  QD(D_R) {m['quantile_drop']['remember']:+.4f}, QD(D_R^NN) {m['quantile_drop']['remember_nearest']:+.4f}, "
        f"BPD(D_R) {m['bpd_remember']['before']:.4f} -> {m['bpd_remember']['after']:.4f}",
    ]
    for key, label in (("forget", "D_F"), ("forget_holdout", "D'_F")):
        check = m["discrete_likelihood"][key]
        lines.append(f"  {label} in discrete bpd ({m['discrete_likelihood']['draws']} draws): "
                     f"{check['before']:.3f} -> {check['after']:.3f} ({check['shift_sigma']:+.2f} sigma_R, "
                     f"{check['share_of_rise']:.0%} of the mean bpd's rise)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, nargs="+", default=[5])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the folders, models and reports here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        write_folders(work, args.people)
        n = sum(1 for _ in (work / "train").rglob("*.pgm")) + sum(1 for _ in (work / "holdout").rglob("*.pgm"))
        print(f"{n} images of 40 people in {work}")
        base = work / "base.safetensors"
        seconds = _run(["train", str(work / "train"), "--out", str(base)], work / "train.log")
        print(f"taming train, defaults: {seconds:.0f} s")
        for person in args.people:
            p = work / f"person{person}"
            seconds = _run(["tame", "--model", str(base), "--forget", str(p / "forget"),
                            "--holdout", str(p / "forget_holdout"), "--remember", str(work / "train"),
                            "--remember-holdout", str(work / "holdout"), "--out", str(p / "tamed.safetensors"),
                            "--report", str(p / "report.json")], p / "tame.log", ok=(0, 1))  # 1: criterion not met
            print(f"person {person}:")
            print(summarise(json.loads((p / "report.json").read_text()), seconds))


if __name__ == "__main__":
    main()
