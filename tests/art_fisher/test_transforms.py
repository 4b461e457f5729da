"""LogTransformer: scikit-learn conventions, the values, the floor and the refusal of negative input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from art_fisher.detection._estimators import LogTransformer


@parametrize_with_checks([LogTransformer()])
def test_sklearn_conventions(estimator, check):
    check(estimator)


def test_values_and_floor():
    X = np.array([[1e-12, 0.0, 3.0], [2.0, 0.0, 0.0], [5.0, 0.0, 7.0]])
    t = LogTransformer().fit(X)
    np.testing.assert_array_equal(t.floor_, [0.5e-12, np.finfo(np.float64).tiny, 1.5])
    out = t.transform(np.array([[0.0, 0.0, 2.0], [4.0, 1.0, 0.0]]))
    expected = np.log([[0.5e-12, np.finfo(np.float64).tiny, 2.0], [4.0, 1.0, 1.5]])
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    assert np.all(np.isfinite(out))


def test_negative_input_is_refused_naming_the_values():
    t = LogTransformer().fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"non-negative.*1 negative values \(smallest -2\)"):
        t.transform(np.array([[1.0, -2.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        LogTransformer().fit(np.array([[-1.0], [1.0]]))
