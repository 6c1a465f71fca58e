"""Generation evidence: the Wilson interval, the calibrated rule and the rates, on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from taming.generation import Gallery, calibrate, evidence, wilson


def test_wilson_interval_matches_its_closed_form_and_covers() -> None:
    low, high = wilson(0, 1000)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.00383, abs=1e-5)
    low, high = wilson(50, 1000)
    assert low < 0.05 < high
    # the score interval is the set of p whose two-sided z-test does not reject at 5%
    for p in (low, high):
        assert abs(50 / 1000 - p) / np.sqrt(p * (1 - p) / 1000) == pytest.approx(stats.norm.ppf(0.975), rel=1e-6)


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_rule_is_calibrated_on_the_persons_photos_and_reports_its_false_positives() -> None:
    gallery = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])  # two other people, then the person (row 2)
    positives = _unit([0.1, 0, 1], [0, 0.2, 1], [0.3, 0.3, 1])
    negatives = _unit([1, 0, 0.1], [0, 1, 0.2], [0.2, 0.1, 1])  # the last one looks like the person
    rule = calibrate(positives, negatives, gallery, person=2, calibrated_on="held-out")
    assert rule.true_positive_rate == 1.0
    assert rule.false_positive_rate == pytest.approx(1 / 3)  # the look-alike cannot be told apart
    assert rule.positives == 3 and rule.negatives == 3


def test_evidence_counts_the_person_and_the_largest_change_of_anyone_else() -> None:
    gallery = Gallery(_unit([1, 0, 0], [0, 1, 0], [0, 0, 1]), np.array([7, 9, -2]), person=2)
    rule = calibrate(_unit([0, 0.2, 1]), _unit([1, 0, 0]), gallery.centroids, 2, "held-out")
    person, other7, other9 = [0.0, 0.1, 1.0], [1.0, 0.1, 0.0], [0.1, 1.0, 0.0]
    before = _unit(*([person] * 100 + [other7] * 100 + [other9] * 800))
    after = _unit(*([person] * 5 + [other7] * 195 + [other9] * 800))  # the person's samples became identity 7
    ev = evidence(before, after, gallery, rule, temperature=0.7, seed=0, feature_space="test")
    assert (ev.before.count, ev.after.count) == (100, 5)
    assert ev.measurable and ev.removed == pytest.approx(0.95)
    assert ev.others_max_change == pytest.approx(0.095) and ev.others_max_change_identity == 7
    assert "95% of the base rate removed" in ev.verdict
    assert ev.nearest_before[0] < 100 and len(ev.nearest_before) == 8


def test_a_base_rate_not_above_the_false_positive_rate_claims_no_drop() -> None:
    gallery = Gallery(_unit([1, 0], [0, 1]), np.array([3, -2]), person=1)
    rule = calibrate(_unit([0, 1]), _unit([1, 0]), gallery.centroids, 1, "held-out")
    none = _unit(*([[1.0, 0.0]] * 1000))
    ev = evidence(none, none, gallery, rule, temperature=0.7, seed=0, feature_space="test")
    assert not ev.measurable and ev.removed is None and "no drop can be claimed" in ev.verdict
