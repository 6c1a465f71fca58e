"""Coalescing: wall time of 8 single-person forget jobs submitted together vs. one of them alone.

    python bench/coalesce.py [--people 8] [--photos 1] [--max-iterations 800]

Same model, same process, same run: a fresh embedded stack (SQLite + local folder, no broker: the
worker's runner is called directly), the shipped AT&T model with its remember set, default parameters, then
  1. one job (person 1's first --photos training photos) alone,
  2. eight such jobs (persons 2..9) queued together, which the worker runs as one taming run while the
     union fits one forget batch (8 images), and one after another beyond that.
Prints both wall times and their ratio (the goal is under 2.5x; running them one by one would be ~8x).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "data" / "att_faces.npz"
MODEL = ROOT / "models" / "att32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--photos", type=int, default=1, help="training photos per request (1-7)")
    parser.add_argument("--max-iterations", type=int, default=800)
    args = parser.parse_args()

    from app import revisions
    from app.db import session_scope
    from app.migrate import upgrade
    from app.models import Job, Model, ModelVersion, new_id
    from app.settings import Settings
    from app.storage import get_storage
    from taming.checkpoint import file_sha256
    from taming.data import load_faces
    from taming.pipeline import features_for
    from worker.runner import handle_doorbell

    work = Path(tempfile.mkdtemp(prefix="bench-coalesce-"))
    settings = Settings(var_dir=work / "var", device="cpu")
    upgrade(settings)
    storage = get_storage(settings)
    data = np.load(FACES)
    images, identity, index = data["images"], data["identity"], data["image_index"]

    base = MODEL / "base.safetensors"
    sha = file_sha256(base)
    # train the feature network once up front, as a service does on its first job for a model
    features_for(load_faces(MODEL / "remember.npz", 32, 1), settings.var_dir / "cache")
    model_id = new_id()
    storage.put_bytes(f"checkpoints/{model_id}/v1.safetensors", base.read_bytes())
    with open(MODEL / "remember.npz", "rb") as f:
        remember = revisions.put_registered(storage, model_id, revisions.REMEMBER, "remember.npz", f)
    with session_scope(settings) as s:
        s.add(Model(id=model_id, name="bench", current_version=1, remember_prefix=revisions.model_prefix(model_id),
                    image_size=32, channels=1, n_bits=5, created_by="bench"))
        s.flush()
        key = f"checkpoints/{model_id}/v1.safetensors"
        s.add(ModelVersion(model_id=model_id, version=1, parent=None, checkpoint_key=key,
                           sha256=sha, promoted=True, remember_revision=1))
        revisions.first_revision(s, model_id, [remember])

    params = {"max_iterations": args.max_iterations}

    def submit(person: int) -> str:
        job_id = new_id()
        uploads = []
        for i, image in enumerate(images[(identity == person) & (index <= args.photos)]):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            key = f"uploads/{job_id}/forget/{i:04d}.png"
            storage.put_bytes(key, buf.getvalue())
            uploads.append({"field": "forget", "key": key, "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                            "name": f"{i}.png", "excluded_reason": None})
        with session_scope(settings) as s:
            s.add(Job(id=job_id, kind="forget_identity", model_id=model_id, subject_ref=f"p{person}",
                      parameters=params, submitted_by="bench", uploads=uploads, progress={}))
        return job_id

    def run(people: list[int]) -> tuple[float, list[Job]]:
        ids = [submit(p) for p in people]
        t = time.perf_counter()
        handle_doorbell(ids[0], settings)
        wall = time.perf_counter() - t
        with session_scope(settings) as s:
            return wall, [s.get(Job, i) for i in ids]

    alone, (single,) = run([1])
    together, jobs = run(list(range(2, 2 + args.people)))
    for label, batch in (("alone", [single]), ("together", jobs)):
        states = {j.state for j in batch}
        iters = {j.progress.get("iteration") for j in batch}
        print(f"{label:>9}: states {sorted(states)}, runs {len({j.run_id for j in batch})}, iterations {sorted(iters)}")
        for j in batch:
            if j.state != "succeeded":
                print(f"           {j.id[:8]}: {j.error}")
    print(f"one job alone:             {alone:7.1f} s")
    print(f"{args.people} jobs together:          {together:7.1f} s")
    print(f"ratio:                     {together / alone:7.2f}x  (goal < 2.5x; one by one would be ~{args.people}x)")


if __name__ == "__main__":
    main()
