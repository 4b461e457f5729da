"""Tests of :mod:`art_fisher.detection`: clean-only calibration at a target false-positive rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from art_fisher.detection._calibration import QuantileOutlierDetector


@parametrize_with_checks([QuantileOutlierDetector(target_fpr=0.2, polarity="two-sided", combine="mean")])
def test_sklearn_outlier_conventions(estimator, check):
    check(estimator)


def _correlated_lognormal(n: int, seed: int, d: int = 3) -> np.ndarray:
    """Positive, heavy-tailed, strongly correlated columns: the shape of Fisher metrics of clean inputs."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(n, 1))
    return np.exp(2.0 * common + 0.3 * rng.normal(size=(n, d)) + np.arange(d))


@pytest.mark.parametrize("combine", ["max", "mean"])
@pytest.mark.parametrize("target", [0.05, 0.2])
def test_fresh_clean_data_is_flagged_at_the_target_rate(combine, target):
    det = QuantileOutlierDetector(target_fpr=target, combine=combine, log=True).fit(_correlated_lognormal(2000, 0))
    fresh = det.predict(_correlated_lognormal(40_000, 1)) == -1
    # The conformal quantile: expected FPR in [target - 1/(n+1), target]; sampling noise of 40k draws ~0.002.
    assert target - 1 / 2001 - 0.006 <= fresh.mean() <= target + 0.006
    # In-sample: exactly n - ceil((1 - target)(n + 1)) samples lie above the threshold (no ties here).
    assert det.train_fpr_ * 2000 == pytest.approx(2000 - math.ceil((1 - target) * 2001))


def test_one_column_is_a_plain_clean_quantile_threshold():
    """With one column every transform is monotone: the rule is 'value above the k-th smallest clean value'."""
    clean = _correlated_lognormal(199, 2, d=1)
    det = QuantileOutlierDetector(target_fpr=0.1, log=True).fit(clean)
    k = math.ceil(0.9 * 200)
    threshold = np.sort(clean[:, 0])[k - 1]
    probe = np.geomspace(clean.min() / 10, clean.max() * 10, 500)[:, None]
    np.testing.assert_array_equal(det.predict(probe) == -1, probe[:, 0] > threshold)
    # decision_function = score_samples - offset_ and is negative exactly where flagged
    np.testing.assert_allclose(det.decision_function(probe), det.score_samples(probe) - det.offset_)


def test_standardisation_is_median_and_mad_of_the_log():
    clean = _correlated_lognormal(501, 3, d=2)
    det = QuantileOutlierDetector(log=True).fit(clean)
    logs = np.log(clean)
    np.testing.assert_allclose(det.center_, np.median(logs, axis=0))
    np.testing.assert_allclose(det.scale_, 1.4826 * np.median(np.abs(logs - np.median(logs, axis=0)), axis=0))
    z = (np.log(clean[:5]) - det.center_) / det.scale_
    np.testing.assert_allclose(-det.score_samples(clean[:5]), z.max(axis=1))


def test_polarities():
    rng = np.random.default_rng(4)
    clean = rng.normal(size=(1000, 1))
    low, high = np.array([[-4.0]]), np.array([[4.0]])
    assert QuantileOutlierDetector(polarity="higher").fit(clean).predict(np.r_[low, high]).tolist() == [1, -1]
    assert QuantileOutlierDetector(polarity="lower").fit(clean).predict(np.r_[low, high]).tolist() == [-1, 1]
    assert QuantileOutlierDetector(polarity="two-sided").fit(clean).predict(np.r_[low, high]).tolist() == [-1, -1]
    both = QuantileOutlierDetector(polarity=["lower", "higher"]).fit(np.c_[clean, clean])
    assert both.predict([[-4.0, 0.0], [0.0, 4.0], [4.0, -4.0]]).tolist() == [-1, -1, 1]
    one = QuantileOutlierDetector(polarity=["none", "higher"]).fit(np.c_[clean, clean])
    assert one.predict([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]]).tolist() == [1, 1, -1]


def test_max_keeps_a_shift_in_one_column_that_the_mean_dilutes():
    """Four quiet columns and one that reacts: the max flags the reacting inputs, the mean much less."""
    rng = np.random.default_rng(5)
    clean = rng.normal(size=(2000, 5))
    shifted = rng.normal(size=(2000, 5))
    shifted[:, 2] += 3.0
    tpr = {
        c: np.mean(QuantileOutlierDetector(target_fpr=0.05, combine=c).fit(clean).predict(shifted) == -1)
        for c in ("max", "mean")
    }
    assert tpr["max"] > 0.5 and tpr["max"] > tpr["mean"] + 0.2, tpr


def test_zeros_under_log_and_too_few_samples():
    clean = np.abs(np.random.default_rng(6).normal(size=(100, 2)))
    clean[:3, 0] = 0.0  # an exactly zero metric (a fully confident float32 prediction)
    det = QuantileOutlierDetector(log=True).fit(clean)
    assert np.all(np.isfinite(det.score_samples(np.zeros((2, 2)))))
    with pytest.raises(ValueError, match="non-negative"):
        det.predict([[-1.0, 1.0]])
    with pytest.warns(UserWarning, match="too few for target_fpr=0.05"):
        small = QuantileOutlierDetector(target_fpr=0.05).fit(clean[:10])
    assert small.train_fpr_ == 0.0  # the largest clean score: nothing in the sample is flagged


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"target_fpr": 0.0}, ValueError, r"target_fpr must be a finite number in \(0, 1\); got 0.0"),
        ({"target_fpr": 1.0}, ValueError, r"target_fpr must be a finite number in \(0, 1\); got 1.0"),
        ({"target_fpr": True}, TypeError, "target_fpr must be a finite number in .*; got True"),
        ({"combine": "sum"}, ValueError, "combine must be one of"),
        ({"polarity": "up"}, ValueError, "polarity must be one of"),
        ({"polarity": ["higher"]}, ValueError, "one per column"),
        ({"polarity": "none"}, ValueError, "at least one column"),
        ({"log": 1}, ValueError, "log must be True or False"),
    ],
)
def test_bad_parameters_raise_in_fit(params, error, match):
    with pytest.raises(error, match=match):
        QuantileOutlierDetector(**params).fit(np.ones((30, 2)) + np.arange(30)[:, None])
