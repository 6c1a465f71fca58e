"""What a running job's progress says: its phase, how long each phase took, and honest ETAs.

The phases are the library's (taming.pipeline.run_requests `on_phase`): loading, features, taming,
confirming, evaluating, reporting; a job that ended reads phase `done` with `done: true`. ETAs:

- taming: `eta_seconds` is an *estimate*, the time until the stop rule's quantity (max |d| for an erasure,
  the attribute's share for a rebalance) reaches its target at its linear trend over the last iterations,
  at the recent pace; null while it is not heading there. `eta_cap_seconds` is the *upper bound*: the time
  to the iteration cap at that pace (the run cannot iterate longer; a confirmation may add a little).
- the other phases: `eta_seconds` is what the same phase took in the newest finished run on the same model
  (the remember set is the model's, so it costs about the same), minus the time spent in it so far.

`eta_basis` names which of these an `eta_seconds` is. Torch-free: plain numbers and dicts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rules.jobs import DONE, PHASES, finished  # noqa: F401  (re-exported: one definition, torch-free)

TREND_WINDOW = 30  # iterations the taming trend is fitted over
TREND_MIN_POINTS = 10  # fewer say nothing about where max |d| is heading
BASIS_TREND = "trend of {quantity} over the last {n} iterations"
BASIS_PREVIOUS = "the same phase of the previous run on this model"


@dataclass(frozen=True)
class Goal:
    """Where the taming phase is heading: `quantity` (a StepInfo field) reaching `target`."""

    quantity: str  # "max_abs_d" (below ε) or "share" (to the target share)
    target: float


class Trend:
    """A least-squares line through the recent (iteration, value, elapsed) points of the taming loop."""

    def __init__(self, window: int = TREND_WINDOW) -> None:
        self.points: deque[tuple[float, float, float]] = deque(maxlen=window)

    def add(self, iteration: int, value: float | None, elapsed: float) -> None:
        if value is not None:
            self.points.append((float(iteration), float(value), float(elapsed)))

    def seconds_per_iteration(self) -> float | None:
        if len(self.points) < 2 or self.points[-1][0] <= self.points[0][0]:
            return None
        (i0, _, t0), (i1, _, t1) = self.points[0], self.points[-1]
        return (t1 - t0) / (i1 - i0)

    def iterations_to(self, target: float) -> float | None:
        """Iterations from the last point until the fitted line meets `target`; None when it moves away."""
        if len(self.points) < TREND_MIN_POINTS:
            return None
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var == 0:
            return None
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        now = my + slope * (xs[-1] - mx)
        gap = target - now
        if gap == 0:
            return 0.0
        if slope == 0 or (gap > 0) != (slope > 0):
            return None
        return gap / slope


@dataclass
class PhaseClock:
    """The current phase, when it started, and the seconds each phase took so far in this attempt."""

    previous: dict[str, float] = field(default_factory=dict)  # phase seconds of the previous run on the model
    clock: Callable[[], float] = time.monotonic
    phase: str = "loading"
    seconds: dict[str, float] = field(default_factory=dict)
    entered: float = 0.0
    entered_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.entered = self.clock()

    def enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + self.in_phase()
        self.phase, self.entered, self.entered_at = phase, self.clock(), datetime.now(UTC)

    def in_phase(self) -> float:
        return self.clock() - self.entered

    def snapshot(self) -> dict[str, Any]:
        """The phase fields of the progress, ETA from the previous run for a phase other than taming."""
        out: dict[str, Any] = {"phase": self.phase, "phase_started_at": self.entered_at.isoformat(),
                               "phase_seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "done": False}
        if self.phase != "taming":
            before = self.previous.get(self.phase)
            out.update(eta_seconds=max(0.0, before - self.in_phase()) if before is not None else None,
                       eta_basis=BASIS_PREVIOUS if before is not None else None, eta_cap_seconds=None)
        return out


def taming_eta(trend: Trend, goal: Goal | None, iteration: int, max_iterations: int) -> dict[str, Any]:
    """`eta_seconds` (estimate, by the trend), `eta_cap_seconds` (bound, to the cap) and `eta_basis`."""
    pace = trend.seconds_per_iteration()
    if pace is None:
        return {"eta_seconds": None, "eta_cap_seconds": None, "eta_basis": None}
    cap = max(0, max_iterations - iteration) * pace
    left = trend.iterations_to(goal.target) if goal is not None else None
    if left is None:
        return {"eta_seconds": None, "eta_cap_seconds": cap, "eta_basis": None}
    basis = BASIS_TREND.format(quantity=goal.quantity if goal else "", n=len(trend.points))
    return {"eta_seconds": min(cap, left * pace), "eta_cap_seconds": cap, "eta_basis": basis}


def previous_phase_seconds(progresses: list[dict[str, Any] | None]) -> dict[str, float]:
    """The phase seconds of the first finished run among these progresses (newest first) that has them."""
    for progress in progresses:
        seconds = (progress or {}).get("phase_seconds")
        if isinstance(seconds, dict) and seconds:
            return {str(k): float(v) for k, v in seconds.items() if isinstance(v, int | float)}
    return {}
