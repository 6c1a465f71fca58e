"""The progress a running job shows: phases and their seconds, ETAs that say what they are, a finished job done."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.progress import BASIS_PREVIOUS, Goal, PhaseClock, Trend, finished, previous_phase_seconds, taming_eta


def _trend(values: list[float], seconds_per_iteration: float = 0.5) -> Trend:
    trend = Trend()
    for i, value in enumerate(values, start=1):
        trend.add(i, value, i * seconds_per_iteration)
    return trend


def test_taming_eta_follows_the_trend_of_max_abs_d_and_bounds_it_by_the_cap() -> None:
    trend = _trend([5.0 - 0.1 * i for i in range(1, 41)])  # falls 0.1 per iteration, 1.0 at iteration 40
    eta = taming_eta(trend, Goal("max_abs_d", 0.6), iteration=40, max_iterations=800)
    assert eta["eta_seconds"] == pytest.approx(4 * 0.5)  # 4 more iterations to reach 0.6, 0.5 s each
    assert eta["eta_cap_seconds"] == pytest.approx(760 * 0.5)
    assert "max_abs_d" in eta["eta_basis"] and "30 iterations" in eta["eta_basis"]


def test_no_estimate_while_the_run_is_not_heading_for_its_goal() -> None:
    rising = taming_eta(_trend([1.0 + 0.01 * i for i in range(40)]), Goal("max_abs_d", 0.6), 40, 100)
    assert rising["eta_seconds"] is None and rising["eta_basis"] is None
    assert rising["eta_cap_seconds"] == pytest.approx(60 * 0.5)
    early = taming_eta(_trend([3.0, 2.9]), Goal("max_abs_d", 0.6), 2, 100)  # too few points for a trend
    assert early["eta_seconds"] is None


def test_a_rebalance_follows_the_share_towards_its_target() -> None:
    eta = taming_eta(_trend([0.5 - 0.005 * i for i in range(40)]), Goal("share", 0.3), 40, 800)
    assert eta["eta_seconds"] == pytest.approx((0.5 - 0.005 * 39 - 0.3) / 0.005 * 0.5)


def test_phase_clock_counts_each_phase_and_estimates_others_from_the_previous_run() -> None:
    now = [0.0]
    clock = PhaseClock(previous={"evaluating": 30.0}, clock=lambda: now[0])
    now[0] = 2.0
    clock.enter("features")
    now[0] = 5.0
    clock.enter("taming")
    clock.enter("taming")  # a repeated phase does not restart it
    now[0] = 50.0
    clock.enter("evaluating")
    now[0] = 60.0
    snap = clock.snapshot()
    assert snap["phase"] == "evaluating" and snap["done"] is False
    assert snap["phase_seconds"] == {"loading": 2.0, "features": 3.0, "taming": 45.0}
    assert snap["eta_seconds"] == pytest.approx(20.0) and snap["eta_basis"] == BASIS_PREVIOUS
    now[0] = 61.0
    clock.enter("reporting")
    assert clock.snapshot()["eta_seconds"] is None  # the previous run did not say


def test_a_finished_job_reads_done_at_its_final_iteration() -> None:
    started = datetime(2025, 1, 1, tzinfo=UTC)
    running = {"iteration": 70, "max_iterations": 800, "phase": "reporting", "phase_started_at": started.isoformat(),
               "phase_seconds": {"taming": 40.0}, "eta_seconds": 3.0}
    done = finished(running, started + timedelta(seconds=2.5), iterations=74)
    assert (done["iteration"], done["max_iterations"], done["iteration_cap"]) == (74, 74, 800)
    assert done["done"] is True and done["phase"] == "done" and done["last_phase"] == "reporting"
    assert done["phase_seconds"] == {"taming": 40.0, "reporting": 2.5} and done["eta_seconds"] == 0.0
    assert finished({}, started)["done"] is True  # a job that never ran


def test_previous_phase_seconds_takes_the_newest_run_that_has_them() -> None:
    assert previous_phase_seconds([None, {"iteration": 3}, {"phase_seconds": {"taming": 9}}]) == {"taming": 9.0}
    assert previous_phase_seconds([]) == {}
