"""One taming run from files to checkpoint and reports: the single entry point for the CLI and the worker.

(Signature fixed; body lands with taming/tame.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taming.data import FaceSet


@dataclass
class Request:
    """One erasure request inside a run: its forget images, optional held-out images, report metadata."""

    key: str  # the job id; keys the per-request reports
    forget: FaceSet
    holdout: FaceSet | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the report's "job" section


@dataclass
class Rebalance:
    """An attribute to rebalance: images with it (positive) and without (negative)."""

    positive: FaceSet
    negative: FaceSet
    target_share: float
    direction: str = "decrease"  # or "increase"


@dataclass
class PipelineResult:
    sha256: str  # of the tamed checkpoint written to out_checkpoint
    criterion_met: bool  # the confirmed verdict, for every request's images together
    iterations: int
    reports: dict[str, dict[str, Any]]  # request key -> JSON report (DESIGN.md section 8)
    html: dict[str, str]  # request key -> HTML report


def run_requests(
    base_checkpoint: Path,
    remember: FaceSet,
    requests: list[Request],
    config: Any,  # taming.tame.TameConfig
    out_checkpoint: Path,
    *,
    rebalance: Rebalance | None = None,
    on_step: Callable[[Any], None] | None = None,  # receives taming.tame.StepInfo
    resume_state: dict[str, Any] | None = None,
    device: str = "cpu",
    model_meta: dict[str, Any] | None = None,  # the report's "model" section (id, versions, SHA-256s)
) -> PipelineResult:
    raise NotImplementedError("lands with taming/tame.py")
