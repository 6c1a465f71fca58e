"""What one taming run is asked to do: erasure requests, an attribute to rebalance, and each request's place in D_F.

Shared by taming/pipeline.py (which runs them) and taming/run_report.py (which reports on them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taming.data import DataError, FaceSet, screen


@dataclass
class Request:
    """One erasure request inside a run: its forget images, optional held-out images, report metadata."""

    key: str  # the job id; keys the per-request reports
    forget: FaceSet
    holdout: FaceSet | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the report's "job" section


class RequestProblem(DataError):
    """One request of a run cannot be served (its images, not the run's): it fails alone, the others go on."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def request_problem(request: Request) -> str | None:
    """Why this request cannot join a run (none of its forget images carries an identity), or None."""
    if len(request.forget) == 0:
        return "no forget images"
    reasons = screen(request.forget.images)
    if all(r is not None for r in reasons):
        first = next(r for r in reasons if r is not None)
        return (f"none of its {len(reasons)} forget image(s) carries an identity (e.g. {request.forget.names[0]}: "
                f"{first}); upload photos in which the person can be seen")
    return None


@dataclass
class Rebalance:
    """An attribute to rebalance: images with it (positive) and without (negative)."""

    positive: FaceSet
    negative: FaceSet
    target_share: float
    direction: str = "decrease"  # or "increase"
    strategy: str = "push_negatives"  # how an increase works (taming.rebalance)
    classifier_path: Path | None = None  # a stored classifier (taming.attribute); None: one is trained in the run
    samples: int = 1000  # behind the share before and after, and every share_every iterations
    temperature: float = 0.7


@dataclass
class Planned:
    """A request's forget images after screening, and where they sit in the run's D_F."""

    request: Request
    reasons: list[str | None]
    rows: slice  # this request's included images within D_F


    def included(self) -> FaceSet:
        """The request's forget images that went into D_F (the screened-out ones left out)."""
        return self.request.forget.subset(np.array([r is None for r in self.reasons], dtype=bool))
