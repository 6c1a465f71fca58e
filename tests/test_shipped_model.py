"""One row of the README's Table 1 on the shipped AT&T model: forget person 1, check the issue's bars."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a run of the shipped model: `make test-all` and CI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_forgetting_one_att_identity_meets_the_bars(tmp_path: Path) -> None:
    from table1 import row, run

    from taming.tame import TameConfig

    # the model's whole training set goes in as the service would send it; the person leaves D_R by image match
    line, failures = row(1, "full", run(1, TameConfig(max_iterations=300), tmp_path / "cache"))
    assert not failures, line
