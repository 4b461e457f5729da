"""Tests of :mod:`art_fisher.detection`: the detector's logit as a torch function and its exact input
gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier

from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.detection._logit import NotDifferentiableError
from tests.art_fisher.adaptive_cases import central_difference_check, fitted_detector, smooth_classifier


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def smooth(request):
    return smooth_classifier(request.param)


@pytest.mark.parametrize("estimator", ["threshold", "logistic", "quantile"])
def test_logit_agrees_with_detect_and_its_gradient_with_central_differences(smooth, estimator):
    clf, x = smooth
    model = clf.model
    before = [p.detach().clone() for p in model.parameters()]
    detector = fitted_detector(clf, x, estimator)
    art = detector.as_art_classifier()
    xs = np.random.default_rng(3).uniform(0.1, 0.9, size=(5, *x.shape[1:]))  # not on a calibration score
    logit = art.predict(xs)[:, 0]
    report, flagged = detector.detect(xs)
    scale = detector.estimator_._proba_scale if estimator == "threshold" else 1.0
    # detect() reads its input as float32; the logit is computed in the model's float64
    np.testing.assert_allclose(logit * scale, report["decision_scores"] - report["threshold"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(logit > 0, flagged)
    g = art.class_gradient(xs)
    assert g.shape == (5, 1, *clf.input_shape)
    central_difference_check(lambda xx: art.predict(xx)[:, 0], g[:, 0], xs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_quantile_gradient_is_that_of_the_largest_column():
    """The clean-only estimator's max passes the gradient of its active column (checked against that column alone)."""
    from art_fisher.detection._logit import estimator_logit

    clf, x = smooth_classifier("mlp")
    detector = fitted_detector(clf, x, "quantile")
    q = detector.estimator_
    f = torch.tensor([[2.0, 0.5], [0.1, 3.0]], dtype=torch.float64, requires_grad=True)
    logit = estimator_logit(q, dtype=torch.float64, device=torch.device("cpu"))
    np.testing.assert_allclose(logit(f).detach().numpy(), -q.decision_function(f.detach().numpy()), rtol=1e-12)
    (g,) = torch.autograd.grad(logit(f).sum(), f)
    z = (np.log(f.detach().numpy()) - q.center_) / q.scale_
    active = z.argmax(1)
    for i in range(2):
        expected = np.zeros(2)
        expected[active[i]] = 1 / (q.scale_[active[i]] * f[i, active[i]].item())
        np.testing.assert_allclose(g[i].numpy(), expected, rtol=1e-12)


def test_non_differentiable_choices_are_refused_by_name(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["fgsm"]
    x = np.concatenate([clean[:10], adv[:10]])
    y = np.repeat([0, 1], 10)
    forest = FisherInformationDetector(digits_cnn.classifier, estimator=RandomForestClassifier(n_estimators=3))
    forest.fit(x, y)
    with pytest.raises(NotDifferentiableError, match="estimator RandomForestClassifier has no input gradient"):
        forest.as_art_classifier()
    maps = FisherInformationDetector(digits_cnn.classifier, metrics=("trace", "sensitivity"))
    maps.fit(x, y)
    with pytest.raises(NotDifferentiableError, match=r"metrics \['sensitivity'\] have no input gradient"):
        maps.as_art_classifier()
    fd = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",), method="finite_difference")
    fd.fit(x, y)
    with pytest.raises(NotDifferentiableError, match="method='exact'"):
        fd.as_art_classifier()
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        FisherInformationDetector(digits_cnn.classifier).as_art_classifier()
