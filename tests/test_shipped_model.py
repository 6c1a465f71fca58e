"""One row of the README's Table 1 on the shipped AT&T model: forget person 1, check the issue's bars."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_forgetting_one_att_identity_meets_the_bars(tmp_path: Path) -> None:
    from att_sets import MODEL, att_sets
    from table1 import row

    from taming.pipeline import Request, run_requests
    from taming.tame import TameConfig

    sets = att_sets(1)
    result = run_requests(MODEL, sets["remember"], [Request("p1", sets["forget"], sets["holdout"])],
                          TameConfig(max_iterations=300), tmp_path / "tamed.safetensors",
                          remember_holdout=sets["remember_holdout"], unseen=sets["unseen"])
    line, failures = row(1, "full", result.reports["p1"])
    assert not failures, line
