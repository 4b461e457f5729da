"""The evaluation's operating point: thresholds set on held-out clean scores, and the FPR they achieve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from art_fisher.detection._calibration import clean_threshold
from art_fisher.evaluation._protocol import OperatingPoint, split_folds


@pytest.mark.parametrize(("n", "alpha"), [(20, 0.05), (100, 0.05), (75, 0.1), (7, 0.5)])
def test_threshold_is_the_ceil_order_statistic(n, alpha):
    scores = np.random.default_rng(n).permutation(np.arange(n, dtype=float))  # 0 .. n-1, shuffled
    t = clean_threshold(scores, alpha)
    k = math.ceil((1 - alpha) * n)
    assert t == k - 1  # the k-th smallest of 0 .. n-1
    assert np.mean(scores > t) <= alpha  # at most alpha of the calibration scores are flagged


def test_threshold_checks_its_arguments():
    with pytest.raises(ValueError, match="target_fpr"):
        clean_threshold(np.ones(5), 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        clean_threshold(np.ones(0), 0.05)
    with pytest.raises(ValueError, match="NaN"):
        clean_threshold(np.array([0.0, np.nan]), 0.05)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_achieved_fpr_on_held_out_clean_data_is_near_the_target(target):
    """Thresholds set on one clean sample flag about ``target`` of another, independent clean sample."""
    rng = np.random.default_rng(0)
    n = 4000
    clean = rng.standard_normal(n) ** 3  # skewed, heavy-tailed: no Gaussian assumption
    folds = split_folds(n, rng)
    point = OperatingPoint.fit(clean, folds, target)
    # the cross-fitted estimate and a fresh held-out sample both sit at the target
    assert point.achieved_fpr == pytest.approx(target, abs=3 * math.sqrt(target / n) + 1 / n)
    fresh = rng.standard_normal(20_000) ** 3
    fresh_fpr = point.flag(fresh, rng.integers(0, 2, len(fresh))).mean()
    assert fresh_fpr == pytest.approx(target, abs=4 * math.sqrt(target / (n / 2)))


def test_each_fold_is_judged_at_the_other_folds_threshold():
    scores = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    point = OperatingPoint.fit(scores, folds, 0.25)
    assert point.thresholds.tolist() == [12.0, 2.0]  # fold 0 judged at fold 1's 3rd of 4, and back
    assert point.flag(scores, folds).tolist() == [False] * 4 + [True] * 4
    assert point.achieved_fpr == 0.5
    with pytest.raises(ValueError, match="both folds"):
        OperatingPoint.fit(scores, np.zeros(8, int), 0.05)


def test_split_folds_halves():
    folds = split_folds(11, np.random.default_rng(0))
    assert sorted(np.bincount(folds)) == [5, 6]
