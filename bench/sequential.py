"""Erasure after erasure: does a forgotten person stay forgotten while later people are forgotten?

On the shipped model, forgets four trained AT&T people one after another, each run starting from the last
version, in two arms of the same run:

- revisions: each run's remember set is the revision of the version it starts from, which leaves out everyone
  forgotten before (what the service does: worker/remember_sets.py applies `taming.pipeline.forgotten_rows`,
  the same rule as here);
- fixed: the remember set never changes (the model's reference set minus that run's person only: the service
  before remember-set revisions).

The first erasure is the same in both arms and runs once. After each step every person forgotten so far is
measured on the new version with their 7 forgotten photos: d and quantile on fresh statistics (μ_R, σ_R over
the training set without all four people, importance-weighted bpd over --draws draws, the same yardstick for
every cell), and their generation rate (taming.measure: --samples samples at temperature 0.7, the person's
3 held-out photos calibrating the rule) against the base model's. Prints a table person × version per arm.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sequential.py [--people 13,21,7,29] [--max-iterations 800]
        [--method paper] [--draws 16] [--samples 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from att_sets import MODEL, TRAINED, UNSEEN

from taming.checkpoint import file_sha256, load_checkpoint
from taming.data import FaceSet, load_faces, quantize
from taming.features import Embedder
from taming.glow import Glow
from taming.measure import generation, negatives_for, probe_samples
from taming.pipeline import Request, features_for, run_requests, without_forgotten_people
from taming.tame import TameConfig, bpd_of, method_config, remember_stats

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "models" / "att32" / "remember.npz"  # the shipped model's training data: its reference set


@dataclass
class Cell:
    """One person measured under one version."""

    d_min: float  # the photo farthest below the threshold
    quantile_max: float
    rate_after: float  # share of samples showing the person
    rate_before: float  # the same under the base model
    removed: float | None  # share of the base rate removed (None when the base rate is not measurable)


@dataclass
class Step:
    version: int
    person: int
    iterations: int
    criterion_met: bool
    wall_seconds: float
    remember_images: int  # D_R of the run
    sigma_r: float  # σ_R of the yardstick under the new version
    cells: dict[int, Cell]


class Yardstick:
    """What every cell is measured against: the same images, embedder and draws for every version and arm."""

    def __init__(self, faces: FaceSet, people: list[int], base: Glow, config: TameConfig, args: argparse.Namespace,
                 cache: Path) -> None:
        trained = faces.select(TRAINED, slice(0, 7))
        others = [p for p in TRAINED if p not in people]
        self.remember = faces.select(others, slice(0, 7))
        self.negatives = negatives_for(faces.select(others, slice(7, 10)), faces.select(UNSEEN), self.remember)
        self.faces, self.base, self.config, self.args, self.cache = faces, base, config, args, cache
        space = features_for(trained, cache)  # the base model's data, as the service's first run trains it
        assert isinstance(space, Embedder), "the AT&T identities give the face embedding, not pixel PCA"
        self.space = space
        self.base_key = f"sequential-{file_sha256(MODEL)[:16]}-{trained.data_hash()[:8]}"  # base samples, once

    def measure(self, model: Glow, people: list[int]) -> tuple[float, dict[int, Cell]]:
        """σ_R and one cell per person under `model`."""
        n_bits = model.config.n_bits
        gen = torch.Generator().manual_seed(0)
        mu, sigma = remember_stats(model, quantize(self.remember.images, n_bits), gen, 1024, self.args.draws,
                                   "discrete")
        probe = probe_samples(self.base, model, self.space, self.base_key, self.cache, samples=self.args.samples)
        cells = {}
        for person in people:
            photos = self.faces.select([person], slice(0, 7))
            bpd = bpd_of(model, quantize(photos.images, n_bits), gen, self.args.draws, "discrete")
            d = (bpd - (mu + self.config.delta * sigma)) / sigma
            quantile = 0.5 * math.erfc(float(((bpd - mu) / sigma).min()) / math.sqrt(2.0))
            evidence = generation(probe, self.space, photos, self.faces.select([person], slice(7, 10)),
                                  self.remember, self.negatives)
            cells[person] = Cell(float(d.min()), quantile, evidence.after.rate, evidence.before.rate,
                                 evidence.removed)
        return sigma, cells


def erase(checkpoint: Path, remember: FaceSet, person: int, faces: FaceSet, config: TameConfig, out: Path,
          cache: Path) -> tuple[dict, float]:
    """One erasure as the worker runs it (the library drops the person from `remember` itself)."""
    request = _req(faces, person)
    started = time.perf_counter()
    result = run_requests(checkpoint, remember, [request], config, out, cache_dir=cache)
    return result.reports[request.key].as_json(), time.perf_counter() - started


def arm(name: str, people: list[int], start: tuple[Path, FaceSet, Step], ruler: Yardstick, work: Path) -> list[Step]:
    """Steps 2.. of one arm, from the shared first erasure."""
    checkpoint, revision, first = start
    reference = load_faces(REFERENCE, 32, 1)
    steps = [first]
    for k, person in enumerate(people[1:], start=2):
        remember = revision if name == "revisions" else reference
        out = work / f"{name}-v{k + 1}.safetensors"
        report, wall = erase(checkpoint, remember, person, ruler.faces, ruler.config, out, ruler.cache)
        model = load_checkpoint(out)[0].eval()
        sigma, cells = ruler.measure(model, people[:k])
        steps.append(Step(k + 1, person, report["stopping"]["iterations"], report["stopping"]["criterion_met"],
                          wall, len(without_forgotten_people(remember, [_req(ruler.faces, person)])), sigma, cells))
        print(f"{name}: v{k + 1} (person {person}) done in {wall:.0f} s", file=sys.stderr, flush=True)
        checkpoint = out
        revision = without_forgotten_people(revision, [_req(ruler.faces, person)])
    return steps


def _req(faces: FaceSet, person: int) -> Request:
    return Request(f"p{person}", faces.select([person], slice(0, 7)), faces.select([person], slice(7, 10)))


def table(name: str, people: list[int], steps: list[Step], eps: float) -> str:
    lines = [f"\n{name}: d (worst photo) · quantile (worst) · generation rate (base → now, removed)",
             "| person | " + " | ".join(f"v{s.version} (−{s.person})" for s in steps) + " |",
             "|---" * (len(steps) + 1) + "|"]
    for person in people:
        cells = []
        for s in steps:
            c = s.cells.get(person)
            if c is None:
                cells.append("")
                continue
            removed = "n/m" if c.removed is None else f"{100 * c.removed:.0f}%"
            flag = "" if c.d_min >= -eps else " ✗"
            cells.append(f"{c.d_min:+.2f}{flag} · {c.quantile_max:.1e} · {c.rate_before:.3f}→{c.rate_after:.3f} "
                         f"({removed})")
        lines.append(f"| {person} | " + " | ".join(cells) + " |")
    lines.append("| run | " + " | ".join(f"{s.iterations} it, {'met' if s.criterion_met else 'NOT met'}, "
                                         f"{s.wall_seconds:.0f} s, D_R {s.remember_images}, σ_R {s.sigma_r:.3f}"
                                         for s in steps) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", default="13,21,7,29")
    parser.add_argument("--max-iterations", type=int, default=800)
    parser.add_argument("--method", default=None, help="a taming method by name (default: the service's)")
    parser.add_argument("--draws", type=int, default=16, help="dequantization draws of the measured bpd")
    parser.add_argument("--samples", type=int, default=1000, help="samples behind each generation rate")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    from rules.method import DEFAULT_METHOD

    people = [int(p) for p in args.people.split(",")]
    config = method_config(args.method or DEFAULT_METHOD, max_iterations=args.max_iterations)
    cache = Path(tempfile.gettempdir()) / "taming-bench-cache"
    faces = load_faces(ROOT / "data" / "att_faces.npz", 32, 1)
    base = load_checkpoint(MODEL)[0].eval()
    ruler = Yardstick(faces, people, base, config, args, cache)
    reference = load_faces(REFERENCE, 32, 1)
    with tempfile.TemporaryDirectory(prefix="bench-sequential-") as tmp:
        work = Path(tmp)
        out = work / "v2.safetensors"
        report, wall = erase(MODEL, reference, people[0], faces, config, out, cache)
        sigma, cells = ruler.measure(load_checkpoint(out)[0].eval(), people[:1])
        first = Step(2, people[0], report["stopping"]["iterations"], report["stopping"]["criterion_met"], wall,
                     len(without_forgotten_people(reference, [_req(faces, people[0])])), sigma, cells)
        print(f"both: v2 (person {people[0]}) done in {wall:.0f} s", file=sys.stderr, flush=True)
        start = (out, without_forgotten_people(reference, [_req(faces, people[0])]), first)
        results = {name: arm(name, people, start, ruler, work) for name in ("revisions", "fixed")}
    print(f"method {config.method}, δ {config.delta}, ε {config.eps:.2f}, at most {config.max_iterations} iterations; "
          f"bpd importance-weighted over {args.draws} draws; generation over {args.samples} samples")
    for name, steps in results.items():
        print(table(name, people, steps, config.eps))
    if args.json:
        args.json.write_text(json.dumps({n: [asdict(s) for s in steps] for n, steps in results.items()}, indent=2))


if __name__ == "__main__":
    main()
